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


def background_value(volume: np.ndarray) -> float:
    """The value that fills a volume around the brain: the most common value on the edges of its
    slices (along the first axis; for a 2D image, its edges), if at least half of them hold it;
    otherwise 0, the BraTS convention.

    A skull-stripped BraTS volume has 0 there; the same volume shifted by +1000 has 1000, and one
    z-scored over the whole grid a negative value that is not the minimum of the brain; a volume
    cropped into the brain, or with noise in the air around a head, has no one value there."""
    array = np.asarray(volume)
    if array.ndim < 2 or array.size == 0:
        return 0.0
    edges = np.concatenate([array[..., 0, :].ravel(), array[..., -1, :].ravel(),
                            array[..., :, 0].ravel(), array[..., :, -1].ravel()])
    if 2 * np.count_nonzero(edges == 0) >= edges.size:  # the usual case, without sorting
        return 0.0
    values, counts = np.unique(edges, return_counts=True)
    best = int(counts.argmax())
    return float(values[best]) if 2 * counts[best] >= edges.size and np.isfinite(values[best]) else 0.0


def zero_background(volume: np.ndarray) -> np.ndarray:
    """`volume` with its background (background_value) moved to 0, as every model here expects:
    the same array when it is 0 already, else a float32 copy shifted by it. Inputs are moved so
    where they enter (arrays from nodes, read_case, run_samba), so that intensities shifted by a
    constant (+1000, or below 0) give the segmentation the unshifted volume gives."""
    background = background_value(volume)
    if background == 0:
        return volume
    return (np.asarray(volume, dtype=np.float32) - np.float32(background)).astype(np.float32)


# A skull-stripped brain on its grid, in mL of voxels that are not background, as measured:
# real-dev (three real BraTS-style cases, each contrast) 1244-1639, the phantoms 1883 (MNI152's
# generous brain mask). Not stripped: the phantom with a 12 mm ring of skull and scalp round the
# brain 3008, and with noise in the air around it the whole 240x240x155 grid (8928). Above this
# limit the volume most likely still has its skull (or its air is not background).
STRIPPED_BRAIN_LIMIT_ML = 2400.0


def foreground_ml(volume: np.ndarray, voxel_ml: float) -> float:
    """mL of the voxels that are not background (background_value)."""
    array = np.asarray(volume)
    return float(np.count_nonzero(array != background_value(array))) * voxel_ml


def skull_strip_warning(volumes: dict[str, np.ndarray], voxel_ml: float) -> str | None:
    """A warning naming the volumes that look not skull-stripped (more than
    STRIPPED_BRAIN_LIMIT_ML that is not background), or None. A cheap heuristic, not a check: a
    very large brain could pass the limit, and a head scanned in a small field of view may not."""
    found = {name: foreground_ml(array, voxel_ml) for name, array in volumes.items()}
    large = {name: ml for name, ml in found.items() if ml > STRIPPED_BRAIN_LIMIT_ML}
    if not large:
        return None
    which = ", ".join(f"{name} ({ml:.0f} mL)" for name, ml in large.items())
    return (f"{which} {'does' if len(large) == 1 else 'do'} not look skull-stripped: that much of the volume is "
            "not background, where a skull-stripped brain is about 1000-2000 mL. The models expect skull-stripped "
            "input (only the brain, one value around it): strip the skull first (Slicer's HDBrainExtraction or "
            "SwissSkullStripper extension, HD-BET or SynthStrip), or check the result carefully.")


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
