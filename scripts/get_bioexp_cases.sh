#!/usr/bin/env bash
# Lays out real-bioexp-22: twenty-two real glioma cases from the BraTS 2018 training set with their expert labels
# (none of them among real-brats18-20), split by sorted name into two sets of eleven: odd positions bioexp-tune
# (to design and train on), even positions bioexp-check (held out from design; rule checks only). docs/results.md,
# "Twenty-two more real cases", says which set decided what.
#
# Source: the sample volumes of BioExp (koriavinash1/BioExp, MIT-licensed code; the images and labels are BraTS 2018
# training data under the BraTS terms: cite Menze et al., IEEE TMI 2015, and Bakas et al., Sci Data 2017) at commit
# c0a88e7: sample_vol/brats/Brats18_CBICA_*/Brats18_CBICA_*_{flair,t1,t1ce,t2,seg}.nii.gz (SRI24, 1 mm,
# skull-stripped; labels 1, 2, 4 as BraTS 2018). The brain masks beside them are not taken. The files are not ours
# and are not in this repository; each is checked against the sha256 our numbers came from (scripts/bioexp_cases.sha256).
#
# Usage: scripts/get_bioexp_cases.sh OUT_DIR [REPO]   (REPO: a clone of koriavinash1/BioExp; default: cloned from
# GitHub into a temporary folder)
# Writes OUT_DIR/all (the 22 cases), OUT_DIR/bioexp-tune and OUT_DIR/bioexp-check (links into all).
# Then: .venv/bin/slicer-samba evaluate OUT_DIR/bioexp-tune
set -euo pipefail
out=${1:?usage: scripts/get_bioexp_cases.sh OUT_DIR [REPO]}
repo=${2:-}
commit=c0a88e70e26d857720a23238a0e875d360974654
sums=$(cd "$(dirname "$0")" && pwd)/bioexp_cases.sha256
mkdir -p "$out/bioexp-tune" "$out/bioexp-check"
"$(dirname "$0")/checked_files_from_git.sh" https://github.com/koriavinash1/BioExp "$repo" "$commit" sample_vol/brats \
  "$sums" "$out/all"
index=0
for case in $(cut -d' ' -f3 "$sums" | cut -d/ -f1 | sort -u); do
  index=$((index + 1))
  set_name=$([ $((index % 2)) -eq 1 ] && echo bioexp-tune || echo bioexp-check)
  ln -sfn "../all/$case" "$out/$set_name/$case"
done
echo "$(wc -l < "$sums") files of $index cases written to $out/all; $out/bioexp-tune and $out/bioexp-check link to them"
