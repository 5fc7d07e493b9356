"""2D slices of a volume per view, and SAMBA's per-slice intensity normalisation.

Volumes are numpy arrays in (k, j, i) = (z, y, x) order, e.g. BraTS 155x240x240.
Axial slices are 240x240; coronal and sagittal ones are 155x240, i.e. NOT square, which is
why everything downstream must keep the aspect ratio (the published SAMBA code did not).
"""

from __future__ import annotations

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def views_and_contrasts(stacks) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The views and the contrasts of (contrast, view) stacks (a preset's), each once, in order of appearance."""
    stacks = tuple(stacks)
    return tuple(dict.fromkeys(v for _, v in stacks)), tuple(dict.fromkeys(m for m, _ in stacks))


def view_slices(volume: np.ndarray, view: str) -> np.ndarray:
    """(N, H, W) stack of the view's slices; a numpy view of `volume`, not a copy.

    axial: volume[k] (H=j, W=i); coronal: volume[:, j, :] (H=k, W=i);
    sagittal: volume[:, :, i] (H=k, W=j).
    """
    return np.moveaxis(volume, _AXIS[view], 0)


def view_axis(view: str) -> int:
    """The (k, j, i) axis that `view`'s slices are taken along."""
    return _AXIS[view]


def slice_count(shape, view: str) -> int:
    """How many `view` slices a volume of `shape` (z, y, x) has."""
    return shape[_AXIS[view]]


def from_view_slices(stack: np.ndarray, view: str) -> np.ndarray:
    """Exact inverse of view_slices: the (k, j, i) volume from a view's stack."""
    return np.moveaxis(stack, 0, _AXIS[view])


def normalise_slice(slice2d: np.ndarray) -> np.ndarray:
    """SAMBA's per-slice normalisation, as uint8 (H, W, 3) RGB for SAM.

    Clip to the 0.5/99.5 percentiles of the non-zero voxels, scale to 0-255; voxels that were 0
    (outside the skull-stripped brain) stay 0. A constant non-zero slice has no range to scale:
    its voxels become 255 so the brain stays visible. An all-zero slice stays all zero.
    """
    values = slice2d[slice2d != 0].astype(np.float64)
    out = np.zeros(slice2d.shape, np.uint8)
    if values.size:
        low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
        out[:] = _scale(slice2d.astype(np.float64), low, high, slice2d != 0)
    return np.repeat(out[..., None], 3, axis=-1)


def normalise_slices(stack: np.ndarray) -> np.ndarray:
    """normalise_slice applied to every slice of an (N, H, W) stack at once -> (N, H, W, 3).

    One sort for the whole stack instead of two np.percentile calls per slice; the percentile
    interpolation is numpy's default ("linear"), written out so results are identical.
    """
    n = stack.shape[0]
    flat = stack.reshape(n, -1).astype(np.float64)
    nonzero = flat != 0
    counts = nonzero.sum(axis=1)
    # Zeros become NaN so the sort puts them last: the first `count` entries are the values.
    ordered = np.sort(np.where(nonzero, flat, np.nan), axis=1)
    low = _sorted_percentile(ordered, counts, LOW_PERCENTILE)[:, None]
    high = _sorted_percentile(ordered, counts, HIGH_PERCENTILE)[:, None]
    out = _scale(flat, low, high, nonzero)
    return np.repeat(out.reshape(stack.shape)[..., None], 3, axis=-1)


def prompted_slices(volume: np.ndarray, view: str, indices) -> np.ndarray:
    """A volume's `view` slices as SAM's uint8 RGB (N, H, W, 3), only those at `indices` normalised: SAM
    reads only the slices it has a box for, so the others are left zero rather than normalised for nothing."""
    stack = view_slices(volume, view)
    prompted = np.zeros(stack.shape + (3,), np.uint8)
    indices = sorted(indices)
    prompted[indices] = normalise_slices(stack[indices])
    return prompted


def _scale(values, low, high, keep) -> np.ndarray:
    """Clip to [low, high], map to 0-255, zero outside `keep`; a zero range maps to 255."""
    span = np.asarray(high - low, np.float64)
    safe = np.where(span > 0, span, 1.0)
    scaled = np.where(span > 0, (np.clip(values, low, high) - low) / safe * 255.0, 255.0)
    return np.where(keep, np.rint(scaled), 0).astype(np.uint8)


def _sorted_percentile(ordered: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Per row, numpy's linear percentile of the first counts[row] entries of a sorted row."""
    last = np.maximum(counts - 1, 0)
    position = q / 100.0 * last
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, last)
    t = position - below
    rows = np.arange(ordered.shape[0])
    a, b = ordered[rows, below], ordered[rows, above]
    # numpy's _lerp: interpolate from whichever end is nearer, for the same rounding.
    diff = b - a
    value = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return np.where(counts > 0, value, 0.0)
