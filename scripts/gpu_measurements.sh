#!/usr/bin/env bash
# The measurements the issues ask for on a GPU, in one run: SAMBA's whole-case time with the demo
# SAM and with a randomly initialised ViT-B (target under 20 s), LoRA against full fine-tuning
# of ViT-B (peak memory ratio at most 0.5) and of the U-Net, and full / patch / cascade inference
# memory (the allocator's peak; cascade at most 0.25 of full, Dice within 0.02); then litemedsam-samba's
# presets on the real cases (REAL_DEV, default ../shared/real-dev): Dice and seconds a case for each
# prompt and preset, in OUT_DIR/presets.log (what `--preset auto` should mean on a GPU).
# Each report is one line of OUT_DIR/measurements.jsonl ({"name": ..., "report": {...}}); the
# terminal output goes to OUT_DIR/measurements.log. About 10 minutes on one H100.
# Usage: scripts/gpu_measurements.sh [OUT_DIR]
# PYTHON (default .venv/bin/python) runs `python -m SAMBACore.cli`; slicer-core is not needed.
# DEVICE (default cuda) and ONLY (a regular expression on the names below) are for trying it out.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/gpu-measurements}
python=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cuda}
only=${ONLY:-.}
mkdir -p "$out"
: > "$out/measurements.jsonl"
export YOLO_OFFLINE=true PYTHONUNBUFFERED=1
failed=0

measure() {  # name, then the bench arguments
  local name=$1 line
  shift
  [[ $name =~ $only ]] || return 0
  echo "== $name: slicer-samba bench $*" | tee -a "$out/measurements.log"
  if "$python" -m SAMBACore.cli bench "$@" --device "$device" --json > "$out/$name.txt" 2>> "$out/measurements.log"; then
    cat "$out/$name.txt" >> "$out/measurements.log"
    line=$(grep '^{' "$out/$name.txt" | tail -n 1)
    echo "{\"name\": \"$name\", \"report\": $line}" >> "$out/measurements.jsonl"
  else
    echo "!! $name failed (its output is in measurements.log)" | tee -a "$out/measurements.log"
    cat "$out/$name.txt" >> "$out/measurements.log"
    failed=1
  fi
  rm -f "$out/$name.txt"
}

"$python" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
  | tee -a "$out/measurements.log" || exit 1
measure samba-demo samba
measure samba-vit-b samba --sam vit_b
measure lora-sam-vit-b lora --model sam-vit-b --batch 2
measure lora-sam-vit-b-checkpointing lora --model sam-vit-b --batch 2 --checkpoint
measure lora-unet lora --model unet --batch 2
measure memory-64 memory --bundle phantom-r2unet
measure memory-32 memory --bundle phantom-r2unet --patch-size 32 --modes full,cascade
if [[ presets =~ $only ]]; then
  echo "== presets: scripts/time_litemedsam_presets.py" | tee -a "$out/measurements.log"
  "$python" scripts/time_litemedsam_presets.py "${REAL_DEV:-../shared/real-dev}" --device "$device" > "$out/presets.log" 2>&1 \
    || { echo "!! presets failed (see presets.log)" | tee -a "$out/measurements.log"; failed=1; }
fi
exit $failed
