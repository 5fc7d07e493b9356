"""The grid the networks run on. Every bundle here was trained on 1 mm phantoms, so a volume on a coarser or
finer grid (a low-field site's 5 mm slices) is resampled to 1 mm for them, and their labels back to its own grid,
as nnU-Net resamples each case to its target spacing. Without this the cascade, given real cases as 1 x 1 x 5 mm
slabs, lost the tumour core altogether (docs/results.md, "Real scans with thick slices").

Both grids span the same extent, from the first voxel's centre to the last's, so the volume's origin stays where
it is. Images are interpolated linearly; labels come back by nearest neighbour (the label at each voxel's centre).
"""

from __future__ import annotations

import numpy as np

TRAINING_SPACING_MM = 1.0
TOLERANCE = 0.1  # a grid within 10% of 1 mm on every axis is used as it is (BraTS cases are 1 mm exactly)


def training_shape(shape, spacing) -> tuple[int, ...] | None:
    """The spatial `shape` on the 1 mm grid of the same extent, or None where `spacing` (mm, one per axis of
    `shape`; None: unknown) is within TOLERANCE of 1 mm on every axis and the volume is used as it is."""
    if spacing is None or all(abs(s / TRAINING_SPACING_MM - 1.0) <= TOLERANCE for s in spacing):
        return None
    return tuple(max(1, round((n - 1) * s / TRAINING_SPACING_MM) + 1) for n, s in zip(shape, spacing))


def resample(array: np.ndarray, shape, order: int) -> np.ndarray:
    """`array` ((C, *S) for an image, (*S) for labels) on the spatial `shape` spanning the same extent:
    linear (order 1) or nearest neighbour (order 0)."""
    from scipy import ndimage

    spatial = array.shape[-len(shape):]
    if tuple(spatial) == tuple(shape):
        return array
    factors = (1.0,) * (array.ndim - len(shape)) + tuple(n / m for n, m in zip(shape, spatial))
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=False)
