#!/usr/bin/env bash
# The LoRATrainer quality bar: does a rank-4 LoRA adapter on the demo bundle's SAM, trained on
# 5 low-field-like phantom cases (a new "site"), raise WT Dice on 5 other such cases?
# Writes everything under ${OUT:-out/lora}. Re-running resumes an interrupted training from its checkpoint.
# Measured on the 2-core CPU, unloaded, with the phantom-demo bundle as committed (SAMBA-mc decoder):
# 120 steps of batch 8 in 49 s, each evaluation 20-40 s per case; validation WT Dice (true boxes)
# 0.460 -> 0.512; WT Dice on the 5 evaluation cases 0.612 -> 0.634 (YOLO boxes), 0.678 -> 0.727 (ROI).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/lora}
CLI=(${PYTHON:-.venv/bin/python} -m SAMBACore.cli)
export YOLO_OFFLINE=true

[ -d "$OUT/train" ] || "${CLI[@]}" phantom "$OUT/train" 5 --lowres --seed 40000
[ -d "$OUT/eval" ] || "${CLI[@]}" phantom "$OUT/eval" 5 --lowres --seed 40100
[ -d "$OUT/val" ] || "${CLI[@]}" phantom "$OUT/val" 2 --lowres --seed 40200  # validation during training only

"${CLI[@]}" train lora "$OUT/train" --base phantom-demo --rank 4 --val "$OUT/val" --val-slices 150 \
  --epochs 2 --steps-per-epoch 60 --batch 8 --lr 1e-3 --seed 0 -o "$OUT/adapter-r4"

for prompt in yolo roi; do
  "${CLI[@]}" evaluate "$OUT/eval" --bundle phantom-demo --prompt "$prompt" --json | tail -1 > "$OUT/base-$prompt.json"
  "${CLI[@]}" evaluate "$OUT/eval" --bundle phantom-demo --adapter "$OUT/adapter-r4" --prompt "$prompt" --json \
    | tail -1 > "$OUT/adapted-$prompt.json"
done
${PYTHON:-.venv/bin/python} - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for prompt in ("yolo", "roi"):
    base, adapted = (json.load(open(f"{out}/{w}-{prompt}.json"))["mean"]["WT"]["dice"] for w in ("base", "adapted"))
    print(f"WT Dice, {prompt} prompts, 5 low-field phantoms: base {base:.3f}, rank-4 adapter {adapted:.3f}")
PY
