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


def geometry_differences(reference: tuple, other: tuple, atol: float = 1e-3) -> list[str]:
    """What differs between two voxel grids, each (shape (k, j, i), ijk_to_ras 4x4), in words;
    [] when they are the same grid."""
    (ref_shape, ref_matrix), (shape, matrix) = reference, other
    ref_matrix, matrix = np.asarray(ref_matrix, float), np.asarray(matrix, float)
    ref_spacing, spacing = np.linalg.norm(ref_matrix[:3, :3], axis=0), np.linalg.norm(matrix[:3, :3], axis=0)
    differences = []
    if tuple(shape) != tuple(ref_shape):
        differences.append(f"size {_size(shape)} vs {_size(ref_shape)} voxels")
    if not np.allclose(spacing, ref_spacing, atol=atol):
        differences.append(f"spacing {_mm(spacing)} vs {_mm(ref_spacing)} mm")
    if not np.allclose(matrix[:3, :3] / spacing, ref_matrix[:3, :3] / ref_spacing, atol=atol):
        differences.append("orientation (axes rotated or flipped)")
    if not np.allclose(matrix[:3, 3], ref_matrix[:3, 3], atol=atol):
        differences.append(f"origin {_mm(matrix[:3, 3])} vs {_mm(ref_matrix[:3, 3])} mm (RAS)")
    return differences


def _size(shape) -> str:
    return "x".join(str(int(n)) for n in reversed(tuple(shape)))  # (k, j, i) shown as I x J x K


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_same_geometry(reference_name: str, reference: tuple, others: dict[str, tuple], atol: float = 1e-3) -> None:
    """Each entry is (shape, ijk_to_ras 4x4). Models read voxels side by side, so grids must match."""
    for name, other in others.items():
        differences = geometry_differences(reference, other, atol)
        if differences:
            raise InputError(
                f"{name} is not on the same voxel grid as {reference_name} ({'; '.join(differences)}): "
                f"resample it onto {reference_name} (Resample Image (BRAINS) or the Crop Volume module) and try again."
            )
