"""The tumour's 3D box found by R2U-Net Segment's cascade: an ROI drawn automatically for SAMBA.

YOLO boxes each slice on its own and, trained on phantoms, boxes real tumours loosely (on one real
case twice the tumour's width, docs/tried.md), and a loose box makes LiteMedSAM outline whatever the
box holds. The cascade sees the whole volume in 3D: even where its outline is poor, the box around
it is close to the tumour's (3D-box IoU 0.73-0.82 on the three real cases). Its whole tumour's
largest piece, grown by a drawn ROI's margin, then prompts SAM as a radiologist's box does (propagation.rois_of_box).
The cascade is any-contrast (presence flags), so this works on whatever contrasts SAMBA is given.

The margin is there for the tumour the cascade missed at its ends, not for more of the ROI to fill:
LiteMedSAM outlines something in every box it is given, so on the tuning phantoms the masks ran
on to the ROI's last slice, 5 past the tumour. So the margin's slices are reach, as past a YOLO run's
ends and in a drawn box's outer slices (propagation.py): a mask there is kept only while the tumour tapers
(docs/results.md).
"""

from __future__ import annotations

import numpy as np

from SAMBACore.pieces import largest_piece
from SAMBASegmentLib.prompts import roi_around

BUNDLE = "phantom-cascade-any"  # R2U-Net Segment's bundle for any set of contrasts
MARGIN = 5  # voxels: the drawn-ROI stand-in's (evaluation.ROI_MARGIN), not tuned for this
# The full-resolution patch edge of every measurement of this prompt (estimated 1.3-2.1 GB for the cascade on a
# BraTS case). Where the estimate does not fit the memory free, R2U-Net Segment's auto plan halves it (down to
# 16): the same box, more slowly, though the measured saving is small (freed memory is kept, docs/results.md);
# where nothing fits, the user is told before anything runs.
PATCH = 128


def cascade_whole_tumour(images: dict[str, np.ndarray], device: str = "cpu", progress=None) -> np.ndarray:
    """The cascade's whole tumour (bool, (K, J, I)) on the contrasts given (None or absent: missing)."""
    # R2U-Net Segment's package, imported here only: SAMBA without this prompt does not need it.
    from R2UNetSegmentLib import inference
    from R2UNetSegmentLib.memory_plan import MemoryBudgetError, format_bytes
    from R2UNetSegmentLib.presence import stack
    from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models, resolve_bundle

    models = load_r2unet_models(resolve_bundle(BUNDLE), device)
    image, present = stack(images)
    try:  # mode auto with a cascade only: the largest patch up to PATCH that fits the memory free now
        labels, _, _ = inference.segment(inference.normalise(image), cascade=models.cascade, mode="auto",
                                         patch_size=PATCH, device=device, progress=progress, present=present)
    except MemoryBudgetError as error:
        raise MemoryError(f"The 3D U-Net's box needs about {format_bytes(error.needed_bytes)} of memory and "
                          f"{format_bytes(error.budget_bytes)} is free. Close other programs and apply again, or draw "
                          "an ROI around the tumour (prompt roi), which does not need the 3D U-Net.") from None
    return labels > 0


def cascade_roi(images: dict[str, np.ndarray], device: str = "cpu", progress=None):
    """((k, j, i) min, (k, j, i) max) around the cascade's largest piece of tumour, grown by MARGIN;
    None when the cascade finds no tumour."""
    return roi_around(largest_piece(cascade_whole_tumour(images, device, progress)), MARGIN)

