#!/usr/bin/env bash
# Scores the phantom-demo bundle on held-out phantoms (seeds never used in training) and records
# the means in its manifest: 10 normal and 10 low-field-like cases, YOLO boxes and drawn-box (ROI)
# prompts. Usage: scripts/evaluate_phantom_demo.sh [WORK_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-out/phantom-demo-evaluation}
n=${2:-10}
cli=.venv/bin/slicer-samba
export YOLO_OFFLINE=true

[ -d "$work/held-out" ] || $cli phantom "$work/held-out" "$n" --seed 20000
[ -d "$work/held-out-lowres" ] || $cli phantom "$work/held-out-lowres" "$n" --seed 20100 --lowres
for set in held-out held-out-lowres; do
  for prompt in yolo roi; do
    $cli evaluate "$work/$set" --prompt "$prompt" --device cpu --record "$set-$prompt" --json > "$work/$set-$prompt.json"
    tail -n 2 "$work/$set-$prompt.json" | head -n 1
  done
done
