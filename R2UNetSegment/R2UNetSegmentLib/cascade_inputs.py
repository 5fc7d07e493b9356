"""What each stage of the U-Net cascade sees, shared by training and inference so the two agree.

Stage 1: the image down-sampled by `factor` (0.3 in the memory-efficiency study), whole.
Stage 2: the full-resolution image plus the stage-1 labels brought back to full resolution,
one-hot (one channel per class, background included), so stage 2 knows where stage 1 saw what.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def low_resolution_shape(shape, factor: float) -> tuple[int, ...]:
    """The stage-1 grid: each axis scaled by `factor`, at least 1 voxel."""
    if not 0 < factor <= 1:
        raise ValueError(f"the cascade's down-sampling factor must be in (0, 1], not {factor}")
    return tuple(max(1, round(size * factor)) for size in shape)


def downsample(image: np.ndarray, factor: float) -> np.ndarray:
    """(C, *spatial) float image -> (C, *low_resolution_shape) by (bi/tri)linear interpolation.

    align_corners=False with an explicit size keeps the two grids' outer edges together, which is
    what upsample_labels assumes on the way back.
    """
    size = low_resolution_shape(image.shape[1:], factor)
    mode = "trilinear" if image.ndim == 4 else "bilinear"
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)[0].numpy()


def upsample_labels(labels: np.ndarray, shape) -> np.ndarray:
    """Low-resolution integer labels -> labels on the full grid `shape` (nearest neighbour)."""
    x = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(x, size=tuple(shape), mode="nearest")[0, 0].numpy().round().astype(np.uint8)


def stage2_inputs(image: np.ndarray, stage1_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, *spatial) image + stage-1 labels (any grid) -> (C + n_classes, *spatial) float32."""
    labels = stage1_labels
    if labels.shape != image.shape[1:]:
        labels = upsample_labels(labels, image.shape[1:])
    if labels.max(initial=0) >= n_classes:
        raise ValueError(f"stage-1 labels go up to {labels.max()}, but the cascade has {n_classes} classes")
    one_hot = np.eye(n_classes, dtype=np.float32)[labels.astype(np.int64)]  # (*spatial, K)
    return np.concatenate([image.astype(np.float32), np.moveaxis(one_hot, -1, 0)], axis=0)
