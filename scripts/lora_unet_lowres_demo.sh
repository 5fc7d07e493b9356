#!/usr/bin/env bash
# The LoRATrainer quality bar for the U-Nets: does a rank-4 LoRA adapter on the phantom-r2unet
# bundle's U-Net, trained on 5 low-field-like phantom cases (a new "site"), raise its WT Dice
# (full-volume mode) on 5 other such cases? The same cases as scripts/lora_lowres_demo.sh.
# Writes everything under ${OUT:-out/lora}. Re-running resumes an interrupted training from its checkpoint.
# Measured on the 2-core CPU with nothing else running, against the current bundle (U-Net trained 2,000
# steps): 450 steps of 2 x 64^3 patches in about 9 min, each evaluation about 4 s per case. The U-Net's
# WT Dice on the 5 evaluation cases went 0.605 -> 0.610 (TC 0.441 -> 0.475, ET 0.473 -> 0.428): no real
# gain. With two thirds of the patches on tumour (the default) the adapter traded specificity for
# sensitivity and lost: 0.605 -> 0.530 (lr 1e-3, 48^3 patches, 750 steps), 0.532 (lr 3e-4, 64^3, 450).
# Against the first, weaker U-Net (400 steps) the lr 1e-3 recipe had lifted WT 0.262 -> 0.660.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/lora}
PYTHON=${PYTHON:-.venv/bin/python}
CLI=("$PYTHON" -m SAMBACore.cli)

[ -d "$OUT/train" ] || "${CLI[@]}" phantom "$OUT/train" 5 --lowres --seed 40000
[ -d "$OUT/eval" ] || "${CLI[@]}" phantom "$OUT/eval" 5 --lowres --seed 40100
[ -d "$OUT/val" ] || "${CLI[@]}" phantom "$OUT/val" 2 --lowres --seed 40200  # validation during training only

"${CLI[@]}" train lora "$OUT/train" --base phantom-r2unet --component unet --rank 4 --val "$OUT/val" \
  --epochs 6 --steps-per-epoch 75 --batch 2 --patch 64 --tumour-fraction 0.33 --lr 3e-4 --seed 0 --device cpu \
  -o "$OUT/unet-adapter-r4"

"$PYTHON" - "$OUT" <<'PY'
import json
import sys

from R2UNetSegmentLib.evaluation import evaluate
from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models, resolve_bundle

out = sys.argv[1]
bundle = resolve_bundle("phantom-r2unet")
reports = {}
for name, adapter in (("base", None), ("adapted", f"{out}/unet-adapter-r4")):
    models = load_r2unet_models(bundle, adapter=adapter)
    reports[name] = evaluate(models, f"{out}/eval", mode="full", model="unet")
    with open(f"{out}/unet-{name}.json", "w") as f:
        json.dump(reports[name], f, indent=1)
print("U-Net, full volume, 5 low-field phantoms (seeds 40100-40104):")
for region in ("WT", "TC", "ET"):
    base, adapted = (reports[w]["mean"][region]["dice"] for w in ("base", "adapted"))
    print(f"  {region} Dice: base {base:.3f}, rank-4 adapter {adapted:.3f}")
PY
