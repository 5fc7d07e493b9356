#!/usr/bin/env bash
# Lays out real-extra-3: three more real glioma cases with expert labels and all four contrasts, none of them in any
# other set here (FLAIR correlation with each of real-brats18-20, real-bioexp-22, real-brats13-5, real-dev and
# real-brainles-25 at most 0.53 inside the brain, where a copy of one patient, DeepMedic's brats_2013_pat0006 against
# Brats18_2013_20_1, gives 1.00). All three enhance. Held out: laid out in session 43, read by nothing yet
# (docs/results.md, the "Real scans" paragraph at the top).
#
# Sources (the images and labels are BraTS training data under the BraTS terms: cite Menze et al., IEEE TMI 2015,
# Bakas et al., Sci Data 2017, and for BraTS 2021 Baid et al., arXiv:2107.02314; SRI24, 1 mm, skull-stripped; labels
# 1, 2, 4):
#   Brats18_2013_2_1      koriavinash1/DeepBrainSeg at 166accd, ui/Brats18_2013_2_1_*.nii.gz
#   Brats18_TCIA05_396_1  IAmSuyogJadhav/Brainy at aa52f6e, samples/Brats18_TCIA05_396_1/
#   BraTS2021_00006       1brahimmohamed/Brain-Tumor-Segmentation-GP at e96dd3b,
#                         "Research/Slicer Extension/nvidia-Segmentation/Seg/BraTS2021_train/BraTS2021_00006/"
# The files are not ours and are not in this repository; each is checked against the sha256 our numbers will come
# from (scripts/extra3_cases.sha256).
#
# Usage: scripts/get_extra3_cases.sh OUT_DIR [DEEPBRAINSEG_REPO BRAINY_REPO GP_REPO]   (clones: default, each cloned
# from GitHub into a temporary folder)
set -euo pipefail
out=${1:?usage: scripts/get_extra3_cases.sh OUT_DIR [DEEPBRAINSEG_REPO BRAINY_REPO GP_REPO]}
here=$(cd "$(dirname "$0")" && pwd)
sums=$here/extra3_cases.sha256
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
for case in Brats18_2013_2_1 Brats18_TCIA05_396_1 BraTS2021_00006; do grep "  $case/" "$sums" > "$parts/$case"; done
# DeepBrainSeg keeps this case's files flat in ui/: their paths there are the names alone.
sed -i 's|  Brats18_2013_2_1/|  |' "$parts/Brats18_2013_2_1"
"$here/checked_files_from_git.sh" https://github.com/koriavinash1/DeepBrainSeg "${2:-}" \
  166accd7ce66e601db49d4467bf5a14c40109184 ui "$parts/Brats18_2013_2_1" "$out/Brats18_2013_2_1"
"$here/checked_files_from_git.sh" https://github.com/IAmSuyogJadhav/Brainy "${3:-}" \
  aa52f6e86e598eb9d993b3ebfecd78f4c4ab5454 samples "$parts/Brats18_TCIA05_396_1" "$out"
"$here/checked_files_from_git.sh" https://github.com/1brahimmohamed/Brain-Tumor-Segmentation-GP "${4:-}" \
  e96dd3bec302e1088033d56c072aa927f3f3aa4a "Research/Slicer Extension/nvidia-Segmentation/Seg/BraTS2021_train" \
  "$parts/BraTS2021_00006" "$out"
echo "$(wc -l < "$sums") files of 3 cases written to $out"
