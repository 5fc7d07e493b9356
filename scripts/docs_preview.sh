#!/usr/bin/env bash
# docs/preview.png, the picture on the README's first screen: `make demo`'s out/demo/preview.png,
# scaled to 960 px wide (what the README shows; it keeps the file under 300 KB) and stored with the
# same palette as the original (grey levels and the BraTS segment colours, kept exactly).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-demo" ] || make demo
.venv/bin/python - <<'PY'
from PIL import Image

from SAMBACore.brats import LABEL_SEGMENTS
from SAMBACore.plots import _to_palette

with Image.open("out/demo/preview.png") as picture:
    picture = picture.convert("RGB")
    width, height = picture.size
    picture.resize((960, round(height * 960 / width)), Image.Resampling.LANCZOS).save("docs/preview.png")
_to_palette(__import__("pathlib").Path("docs/preview.png"), [s.color for s in LABEL_SEGMENTS.values()])
PY
ls -l docs/preview.png
