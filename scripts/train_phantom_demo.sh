#!/usr/bin/env bash
# Rebuilds SAMBASegment's phantom-demo bundle from scratch on the CPU, exactly as committed:
# phantom training cases, then SAM (small, from scratch), YOLOv8n, and the voting network.
# About an hour and a half on 2 CPU cores. Usage: scripts/train_phantom_demo.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-out/phantom-demo-training}
bundle=SAMBASegment/Resources/Bundles/phantom-demo
cli=.venv/bin/slicer-samba
export YOLO_OFFLINE=true

$cli phantom "$work/cases" 16 --seed 0          # training cases: seeds 0-15
$cli phantom "$work/yolo-cases" 6 --seed 100    # the localizer's own cases: seeds 100-105
rm -rf "$bundle.new"
$cli train sam "$work/cases" -o "$bundle.new" --steps 3000 --seed 0 --device cpu
$cli train yolo "$work/yolo-cases" -o "$bundle.new" --epochs 20 --seed 0 --device cpu
$cli train voting "$work/cases" -o "$bundle.new" --steps 600 --seed 0 --device cpu
rm -rf "$bundle" && mv "$bundle.new" "$bundle"
echo "Bundle written to $bundle"
