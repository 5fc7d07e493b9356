"""Smooth random fields, separable upsampling and trilinear warping for full-size volumes.

scipy's zoom and map_coordinates take about a second each on a 240x240x155 volume on the
2-core machine this runs on; a case needs dozens of such fields, so these do the same work
with numpy gathers: linear interpolation one axis at a time, and one trilinear gather that
warps several tissue maps at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def lerp_axis(a: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """`a` linearly interpolated along `axis` at fractional indices `positions` (clamped)."""
    n = a.shape[axis]
    pos = np.clip(np.asarray(positions, np.float64), 0, n - 1)
    i0 = np.minimum(pos.astype(np.intp), max(n - 2, 0))
    shape = [1] * a.ndim
    shape[axis] = -1
    w = (pos - i0).astype(np.float32).reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, np.minimum(i0 + 1, n - 1), axis=axis)
    return lo + (hi - lo) * w


def upsample(coarse: np.ndarray, step: float, box: tuple[slice, ...], offset: float = 0.0) -> np.ndarray:
    """A coarse grid whose node i lies at voxel i * step - offset, read at every voxel of `box`."""
    out = coarse
    for axis, s in enumerate(box):
        out = lerp_axis(out, (np.arange(s.start, s.stop) + offset) / step, axis)
    return out.astype(np.float32, copy=False)


def nodes(n: int, step: float, extra: int = 1) -> int:
    """Number of coarse nodes, `step` apart, that cover indices 0 .. n - 1 (plus `extra`)."""
    return int(np.ceil((n - 1) / step)) + 1 + extra


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Random field of about zero mean and unit std with features about `cell` voxels wide."""
    coarse = tuple(nodes(n, cell, 2) for n in shape)
    small = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 0.8, mode="wrap")
    small = (small - small.mean()) / (small.std() + 1e-6)
    offset = float(rng.uniform(0, cell))  # so the node grid does not line up between fields
    return upsample(small, cell, tuple(slice(0, n) for n in shape), offset)


def pad_stack(maps: list[np.ndarray], pad_values: list[float]) -> np.ndarray:
    """Stack maps as channels (Z, Y, X, C), padded by one voxel of `pad_values` on every side,
    ready for `warp`: a sample outside the volume reads the pad."""
    shape = tuple(n + 2 for n in maps[0].shape)
    out = np.empty(shape + (len(maps),), np.float32)
    out[...] = np.asarray(pad_values, np.float32)
    for c, m in enumerate(maps):
        out[1:-1, 1:-1, 1:-1, c] = m
    return out


def warp(stack: np.ndarray, coords: list[np.ndarray], chunk: int = 4) -> np.ndarray:
    """Trilinear samples of a padded (Z, Y, X, 4) float32 stack at voxel positions `coords`
    (three arrays of one shape, in unpadded voxel units). Returns coords' shape + (4,)."""
    zp, yp, xp, c = stack.shape
    assert c == 4 and stack.dtype == np.float32 and stack.flags.c_contiguous
    # One voxel's four channels are 16 bytes: gathering them as one complex128 is several
    # times faster than numpy's row indexing.
    flat = stack.reshape(-1).view(np.complex128)
    sz, sy = yp * xp, xp
    out = np.empty(coords[0].shape + (c,), np.float32)
    for start in range(0, coords[0].shape[0], chunk):
        part = slice(start, start + chunk)
        idx, fracs = 0, []
        for axis, n in enumerate((zp, yp, xp)):
            p = np.clip(coords[axis][part] + 1.0, 0, n - 1.001)
            i = p.astype(np.intp)  # floor, since p >= 0
            fracs.append((p - i).astype(np.float32)[..., None])
            idx = idx * n + i
        fz, fy, fx = fracs

        def at(o):
            return np.take(flat, idx + o).view(np.float32).reshape(idx.shape + (c,))

        def along_x(o):
            lo = at(o)
            return lo + (at(o + 1) - lo) * fx

        y0 = along_x(0)
        y0 += (along_x(sy) - y0) * fy
        y1 = along_x(sz)
        y1 += (along_x(sz + sy) - y1) * fy
        out[part] = y0 + (y1 - y0) * fz
    return out
