"""Box prompts per slice of a view, from a mask or from a region of interest.

A box is (x0, y0, x1, y1) in the slice's own pixel frame: x along the slice's columns (W),
y along its rows (H), both inclusive-exclusive like SAM expects (x1 = last column + 1).
Boxes from YOLO live in localizer.py; all three sources give the same dict form:
slice index -> box, only for slices that have one.
"""

from __future__ import annotations

import numpy as np

from SAMBASegmentLib.slices import view_slices

Boxes = dict[int, np.ndarray]


def box_of_mask(mask2d: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """The tight box around a 2D mask, grown by `margin` pixels and kept inside the slice."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    height, width = mask2d.shape
    return np.array(
        [
            max(cols[0] - margin, 0),
            max(rows[0] - margin, 0),
            min(cols[-1] + 1 + margin, width),
            min(rows[-1] + 1 + margin, height),
        ],
        np.float32,
    )


def boxes_from_mask(mask: np.ndarray, view: str, margin: int = 0) -> Boxes:
    """One box per slice of `view` that the (k, j, i) mask touches: prompts from a segmentation."""
    stack = view_slices(mask.astype(bool), view)
    touched = np.flatnonzero(stack.reshape(stack.shape[0], -1).any(axis=1))
    return {int(n): box_of_mask(stack[n], margin) for n in touched}


def roi_around(mask: np.ndarray, margin: int = 0):
    """The (k, j, i) min and max corners (inclusive) of a 3D mask's bounding box grown by `margin`
    voxels, as an ROI prompt takes them (boxes_from_roi clips them to the volume); None if empty."""
    voxels = np.argwhere(mask)
    if voxels.size == 0:
        return None
    return tuple(voxels.min(axis=0) - margin), tuple(voxels.max(axis=0) + margin)


def boxes_from_roi(ijk_min, ijk_max, shape, view: str) -> Boxes:
    """A box drawn by the user (an axis-aligned ROI in voxel indices, inclusive, (k, j, i) order)
    projected onto every slice of `view` it crosses."""
    lo = np.clip(np.minimum(ijk_min, ijk_max), 0, np.array(shape) - 1).astype(int)
    hi = np.clip(np.maximum(ijk_min, ijk_max), 0, np.array(shape) - 1).astype(int)
    roi = np.zeros(shape, bool)
    roi[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = True
    return boxes_from_mask(roi, view)
