#!/usr/bin/env bash
# Lays out real-brats13-5: five real glioma cases from the BraTS 2013 challenge (as shipped in BraTS 2015's training
# set) with their manual expert labels, FLAIR and T1CE only. Unlike real-brats18-20 (held out, never tuned on), these
# are the project's tuning cases with expert labels: look at them, choose on them, and say so.
#
# Source: DeepMedic's example data (deepmedic/deepmedic, BSD-licensed code; these files are BraTS 2015 data under
# CC BY-NC-SA 3.0 CH, modified by K. Kamnitsas: FLAIR and T1c z-scored within the brain; cite Menze et al., IEEE TMI
# 2015) at commit e10ba7c: examples/dataForExamples/brats2015TrainingData/*/brats_2013_pat000[1-5]_1/. pat0006 is
# left out: it is Brats18_2013_20_1, one of the twenty held-out cases (identical labels). The other five are none of
# the twenty nor our four (checked: FLAIR correlation with each at most 0.54 inside the brain).
# The images are taken as they are (their background is a constant below 0, which every model moves to 0). The
# labels are BraTS 2015's (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing); 3 is written as 1, as BraTS 2017
# merged them (NCR/NET), so the cases read as BraTS 2021 labels (1, 2, 4).
# The files are not ours and are not in this repository; each source file is checked against the sha256 our numbers
# came from (scripts/brats13_cases.sha256) before anything is written.
#
# Usage: scripts/get_brats13_cases.sh OUT_DIR [REPO]   (REPO: a clone of deepmedic/deepmedic; default: cloned from
# GitHub into a temporary folder)
# Then: .venv/bin/slicer-samba evaluate OUT_DIR --contrasts t1ce,flair
set -euo pipefail
out=${1:?usage: scripts/get_brats13_cases.sh OUT_DIR [REPO]}
repo=${2:-}
commit=e10ba7c3570d06194f5dadca91d99d5e7bba7de5
here=$(cd "$(dirname "$0")" && pwd)
sums=$here/brats13_cases.sha256
python=${PYTHON:-$here/../.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$repo" ]; then
  repo=$work/deepmedic
  git clone --quiet https://github.com/deepmedic/deepmedic "$repo"
fi
git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "$repo is not a clone of deepmedic/deepmedic holding commit $commit: clone it, or leave REPO out." >&2; exit 1; }
src=$work/files
mkdir "$src"
git -C "$repo" archive "$commit" examples/dataForExamples/brats2015TrainingData | tar -x -C "$src"
src=$src/examples/dataForExamples/brats2015TrainingData
(cd "$src" && sha256sum --check --quiet "$sums") || {
  echo "Some files in $repo at $commit are not the files our numbers came from (sha256 differs): do not use them." >&2
  exit 1; }
"$python" - "$src" "$out" "$sums" <<'PY'
import sys
from pathlib import Path

import SimpleITK as sitk

src, out, sums = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cases = sorted({Path(line.split()[1]).parent for line in sums.read_text().splitlines()})
for case in cases:
    name = case.name.replace("brats_2013_", "brats13_").removesuffix("_1")
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    for source, key in (("Flair_subtrMeanDivStd", "flair"), ("T1c_subtrMeanDivStd", "t1ce")):
        (target / f"{name}_{key}.nii.gz").write_bytes((src / case / f"{source}.nii.gz").read_bytes())
    labels = sitk.ReadImage(str(src / case / "OTMultiClass.nii.gz"))
    values = sitk.GetArrayFromImage(labels).astype("uint8")
    values[values == 3] = 1  # BraTS 2015's non-enhancing core joins necrosis (BraTS 2017's NCR/NET)
    merged = sitk.GetImageFromArray(values)
    merged.CopyInformation(labels)
    sitk.WriteImage(merged, str(target / f"{name}_seg.nii.gz"), useCompression=True)
print(f"{len(cases)} cases (FLAIR, T1CE, labels) written to {out}")
PY
