#!/usr/bin/env bash
# Rebuilds SAMBASegment's phantom-demo bundle from scratch on the CPU, exactly as committed:
# phantom training cases, then SAM (small, from scratch), YOLOv8n, the voting network, and last
# SAM's decoder again for SAMBA-mc (its three region tokens, and token 0 kept on the whole tumour
# so the voting net's inputs stay as they were). About an hour on 2 CPU cores (measured: SAM
# 15 min, YOLO 22 min, voting 14 min, SAMBA-mc decoder 8 min). Usage: scripts/train_phantom_demo.sh [WORK_DIR]
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
$cli train sam "$work/cases" -o "$bundle.new" --decoder-only --mode samba-mc --steps 1500 --seed 0 --device cpu
.venv/bin/python - "$bundle.new" <<'PY'
import sys
from SAMBACore.bundles import update_manifest
update_manifest(sys.argv[1], {
    "name": "phantom-demo",
    "description": "SAMBA on synthetic phantoms: small SAM (3M parameters) trained from scratch, YOLOv8n, voting 3D U-Net",
    "intended_use": "demonstration and tests only: trained on this project's synthetic phantoms, never on patients",
})
PY
rm -rf "$bundle" && mv "$bundle.new" "$bundle"
echo "Bundle written to $bundle"
