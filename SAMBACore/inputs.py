"""Checks on input images, shared by every module, so bad input fails early with one clear message."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """An input cannot be segmented as it is; the message says which and what to do."""


def check_image(name: str, array: np.ndarray) -> None:
    """Refuse volumes a model would silently get wrong: empty, NaN/inf, or constant."""
    if array.size == 0:
        raise InputError(f"{name} has no voxels: load the volume again.")
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise InputError(f"{name} has {bad} NaN or infinite voxels: fix or re-export the volume, then try again.")
    if not array.any():
        raise InputError(f"{name} is empty (all voxels are 0): check that the right volume is selected.")
    if array.min() == array.max():
        raise InputError(f"{name} is constant ({array.flat[0]}): check that the right volume is selected.")


def check_same_geometry(reference_name: str, reference: tuple, others: dict[str, tuple], atol: float = 1e-3) -> None:
    """Each entry is (shape, ijk_to_ras 4x4). Models read voxels side by side, so grids must match."""
    ref_shape, ref_matrix = reference
    for name, (shape, matrix) in others.items():
        if tuple(shape) != tuple(ref_shape) or not np.allclose(matrix, ref_matrix, atol=atol):
            raise InputError(
                f"{name} is not on the same voxel grid as {reference_name} "
                f"(size {tuple(shape)} vs {tuple(ref_shape)}): resample it onto {reference_name} "
                "(Resample Image (BRAINS) or the Crop Volume module) and try again."
            )
