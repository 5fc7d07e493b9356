#!/usr/bin/env bash
# The LoRATrainer quality bar for the U-Nets: does a rank-4 LoRA adapter on the phantom-r2unet
# bundle's U-Net, trained on 5 low-field-like phantom cases (a new "site"), raise its WT Dice
# (full-volume mode) on 5 other such cases? The same cases as scripts/lora_lowres_demo.sh.
# Writes everything under ${OUT:-out/lora}. Re-running resumes an interrupted training from its checkpoint.
# Measured on a 2-core CPU shared with other jobs (load 3-6): 750 steps of 2 x 48^3 patches in 57 min
# (about 0.4 s a step on an idle machine), each evaluation about 6 s per case. The U-Net's WT Dice on the
# 5 evaluation cases went 0.262 -> 0.660 (TC 0.289 -> 0.535, ET 0.331 -> 0.520); the validation Dice on the
# 2 validation cases barely moved (0.164 -> 0.201, noisy), so it is no guide to when to stop here.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/lora}
PYTHON=${PYTHON:-.venv/bin/python}
CLI=("$PYTHON" -m SAMBACore.cli)

[ -d "$OUT/train" ] || "${CLI[@]}" phantom "$OUT/train" 5 --lowres --seed 40000
[ -d "$OUT/eval" ] || "${CLI[@]}" phantom "$OUT/eval" 5 --lowres --seed 40100
[ -d "$OUT/val" ] || "${CLI[@]}" phantom "$OUT/val" 2 --lowres --seed 40200  # validation during training only

"${CLI[@]}" train lora "$OUT/train" --base phantom-r2unet --component unet --rank 4 --val "$OUT/val" \
  --epochs 10 --steps-per-epoch 75 --batch 2 --patch 48 --lr 1e-3 --seed 0 --device cpu -o "$OUT/unet-adapter-r4"

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
