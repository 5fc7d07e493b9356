#!/usr/bin/env bash
# Lays out real-brainles-25, the real glioma case held out from every design choice (docs/results.md, "A fourth
# real case, held out"), as a BraTS 2023 case folder: OUT_DIR/real-brainles-25/real-brainles-25-{t1n,t1c,t2w,t2f,seg}.nii.gz.
#
# Source: the example case of the `brats` package, BrainLesion/BraTS (Apache-2.0) at commit 528ab54, whose history
# still holds it: data/preprocessed_case/*.nii.gz (SRI24, 1 mm, skull-stripped) and outputs/segmentation.nii.gz,
# the output of the BraTS 2025 adult-glioma algorithm BraTS25_2 (labels from an algorithm, not an expert). The
# images are not ours and are not in this repository; each file is checked against the sha256 our numbers came from.
#
# Usage: scripts/get_heldout_real_case.sh OUT_DIR [REPO]   (REPO: a clone of BrainLesion/BraTS with its history;
# default: cloned from GitHub into a temporary folder, about 20 MB)
# Then: .venv/bin/slicer-samba evaluate OUT_DIR
set -euo pipefail
out=${1:?usage: scripts/get_heldout_real_case.sh OUT_DIR [REPO]}
repo=${2:-}
commit=528ab54e0599e30b831c759fa001eb95c2b053d9
if [ -z "$repo" ]; then
  repo=$(mktemp -d)
  trap 'rm -rf "$repo"' EXIT
  git clone --quiet https://github.com/BrainLesion/BraTS "$repo"
fi
case_dir=$out/real-brainles-25
mkdir -p "$case_dir"
declare -A source=([t1n]=data/preprocessed_case/t1n.nii.gz [t1c]=data/preprocessed_case/t1c.nii.gz
                   [t2w]=data/preprocessed_case/t2w.nii.gz [t2f]=data/preprocessed_case/t2f.nii.gz
                   [seg]=outputs/segmentation.nii.gz)
declare -A sha256=([t1n]=ba2f57ea39b7b14347af44c925b760d99ba22c70f4303d5aa5435b5986a33079
                   [t1c]=398ef610a2070826ffb93092e646216adf63c0c0ad896d6c9d778433e57966b3
                   [t2w]=a32356a8afe56285355897602451d5f815fc20cf12216bd12a8986fbe8dc6f5f
                   [t2f]=6e72edf9e6bc87277df733e2e72c9acddc139b0dbc35399452afdccf051884e9
                   [seg]=2729f0947180454ffbe04ff77372feb66ff9afbbb81e026e8f67d8fa23206506)
for name in t1n t1c t2w t2f seg; do
  file=$case_dir/real-brainles-25-$name.nii.gz
  git -C "$repo" show "$commit:${source[$name]}" > "$file"
  echo "${sha256[$name]}  $file" | sha256sum --check --quiet || {
    echo "$file is not the file our numbers came from (sha256 differs): not used." >&2; rm -f "$file"; exit 1; }
done
echo "real-brainles-25 written to $case_dir"
