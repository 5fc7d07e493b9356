"""The tumour's 3D box found by R2U-Net Segment's cascade: an ROI drawn automatically for SAMBA.

YOLO boxes each slice on its own and, trained on phantoms, boxes real tumours loosely (on one real
case twice the tumour's width, docs/tried.md), and a loose box makes LiteMedSAM outline whatever the
box holds. The cascade sees the whole volume in 3D: even where its outline is poor, the box around
it is close to the tumour's (3D-box IoU 0.73-0.82 on the three real cases). Its whole tumour's
largest piece, grown by a drawn ROI's margin, then prompts SAM as a radiologist's box does (propagation.rois_of_box);
when another piece is at least half as large, the user is told (rival_warning).
The cascade is any-contrast (presence flags), so this works on whatever contrasts SAMBA is given.

The margin is there for the tumour the cascade missed at its ends, not for more of the ROI to fill:
LiteMedSAM outlines something in every box it is given, so on the tuning phantoms the masks ran
on to the ROI's last slice, 5 past the tumour. So the margin's slices are reach, as past a YOLO run's
ends and in a drawn box's outer slices (propagation.py): a mask there is kept only while the tumour tapers
(docs/results.md).
Where SAM's outline of a slice falls short of the piece, the piece is joined to it (join_where_short).
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


# Another piece of the cascade's tumour at least this fraction of the largest: the box, around the largest, may be
# around the wrong one (a v1 phantom, 22007: a false FLAIR-bright piece 1.2x the tumour's size, docs/results.md).
# The user is told; nothing else changes.
RIVAL_FRACTION = 0.5


def rival_warning(tumour: np.ndarray, piece: np.ndarray, voxel_mm3: float = 1.0) -> str | None:
    """What to tell the user when the cascade's `tumour` holds, beside its largest `piece`, another piece at least
    RIVAL_FRACTION of it; None otherwise."""
    size, rival = int(piece.sum()), int(largest_piece(tumour & ~piece).sum())
    if size == 0 or rival < RIVAL_FRACTION * size:
        return None
    return (f"The 3D U-Net found two separate tumour-like regions ({size * voxel_mm3 / 1000:.1f} and "
            f"{rival * voxel_mm3 / 1000:.1f} mL) and SAMBA outlined the larger. If the tumour you see is not the one "
            "segmented, draw a box around it and use the prompt 'Drawn ROI' (--roi on the command line).")


def roi_of_piece(piece: np.ndarray):
    """((k, j, i) min, (k, j, i) max) around the piece, grown by MARGIN; None for an empty piece."""
    return roi_around(piece, MARGIN)


# On an axial slice where SAM's whole-tumour vote covers less than this fraction of the piece, the piece is joined
# to the vote: LiteMedSAM's outline sometimes collapses to a part of a real tumour, and propagation carries that on,
# where the piece is precise (0.88-0.96 on tuning cases). Joined everywhere, the piece added the cascade's own errors
# to outlines that were already good (v1 phantoms, docs/tried.md); 0.75 was chosen on tuning data only (v1 tuning
# phantoms and real-brats13-5, docs/results.md), not on the cases the README reports as held out.
JOIN_BELOW = 0.75


def join_where_short(votes: np.ndarray, piece: np.ndarray, fraction: float = JOIN_BELOW) -> np.ndarray:
    """Whole-tumour votes (V, K, J, I) with the piece joined on each axial slice k where a vote covers less than
    `fraction` of the piece's voxels on k (SAM's outline collapsed there); a vote that covers it is left alone."""
    joined = votes.copy()
    area = piece.sum(axis=(1, 2))
    covered = (votes & piece).sum(axis=(2, 3))  # (V, K)
    short = covered < fraction * area  # (V, K); slices without the piece: 0 < 0 is False
    joined |= short[:, :, None, None] & piece[None]
    return joined

