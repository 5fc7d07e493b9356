#!/usr/bin/env bash
# Scores the phantom-demo bundle on held-out phantoms (seeds never used in training) and records
# the means in its manifest: N normal cases with YOLO and drawn-box (ROI) prompts in both modes
# (SAMBA: binary SAM + voting net; SAMBA-mc: SAM's three region tokens), and N/2 low-field-like
# cases in SAMBA mode. About 30 s per case and run on 2 CPU cores.
# Usage: scripts/evaluate_phantom_demo.sh [WORK_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-out/phantom-demo-evaluation}
n=${2:-10}
low=$((n / 2))
cli=.venv/bin/slicer-samba
export YOLO_OFFLINE=true

[ -d "$work/held-out" ] || $cli phantom "$work/held-out" "$n" --seed 20000
[ -d "$work/held-out-lowres-$low" ] || $cli phantom "$work/held-out-lowres-$low" "$low" --seed 20100 --lowres
run() {  # set prompt mode record-name
  $cli evaluate "$work/$1" --prompt "$2" --mode "$3" --device cpu --record "$4" --json > "$work/$4.json"
  tail -n 2 "$work/$4.json" | head -n 1
}
for prompt in yolo roi; do
  run held-out "$prompt" samba "held-out-$prompt"
  run held-out "$prompt" samba-mc "held-out-$prompt-mc"
  run "held-out-lowres-$low" "$prompt" samba "held-out-lowres-$prompt"
done
