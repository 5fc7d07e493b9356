#!/usr/bin/env bash
# Lays out real-brats18-20: twenty real glioma cases from the BraTS 2018 training set with their expert labels,
# held out from every design choice (docs/results.md, "Twenty real cases with expert labels, held out").
#
# Source: the sample volumes of DeepBrainSeg (koriavinash1/DeepBrainSeg, MIT-licensed code; the images and labels
# are BraTS 2018 training data under the BraTS terms: cite Menze et al., IEEE TMI 2015, and Bakas et al., Sci Data
# 2017) at commit 5d4f381: sample_volume/brats/Brats18_*/Brats18_*_{flair,t1,t1ce,t2,seg}.nii.gz (SRI24, 1 mm,
# skull-stripped; labels 1, 2, 4 as BraTS 2018). The repository's own predictions and masks beside them are not
# taken. The files are not ours and are not in this repository; each is checked against the sha256 our numbers came
# from (scripts/brats18_cases.sha256).
#
# Usage: scripts/get_brats18_cases.sh OUT_DIR [REPO]   (REPO: a clone of koriavinash1/DeepBrainSeg; default: cloned
# from GitHub into a temporary folder, about 270 MB)
# Then: .venv/bin/slicer-samba evaluate OUT_DIR
set -euo pipefail
out=${1:?usage: scripts/get_brats18_cases.sh OUT_DIR [REPO]}
repo=${2:-}
commit=5d4f3810f1c776050b6937b6db5b7afa17527efd
sums=$(cd "$(dirname "$0")" && pwd)/brats18_cases.sha256
"$(dirname "$0")/checked_files_from_git.sh" https://github.com/koriavinash1/DeepBrainSeg "$repo" "$commit" \
  sample_volume/brats "$sums" "$out"
echo "$(wc -l < "$sums") files of 20 cases written to $out"
