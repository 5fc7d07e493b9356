"""Non-tumour look-alikes of a v4 case, labelled background: what real scans have and v1-v3 lacked.

Real FLAIR and T2 show bright rims and caps around the ventricles and white-matter hyperintensities
(small-vessel disease, common in older patients); real T1CE shows enhancing vessels on the brain's
surface and the choroid plexus. None is tumour. A cascade trained on v1 + v3 called both tumour on
real scans (docs/results.md, 2026-12-06). v4 adds them to v3's cases, drawn from their own random
stream, so a v4 case is its v3 case (same seed: anatomy, tumours, acquisition, tumour intensities)
with the look-alikes painted in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import fields


def draw(rng: np.random.Generator) -> dict:
    """What a case gets: each kind present or not, how much of it, how bright (relative numbers)."""
    u = rng.uniform
    return {
        "periventricular": bool(rng.random() < 0.6), "rim_mm": float(u(1.5, 6.0)),
        "wmh": int(rng.integers(1, 30)) if rng.random() < 0.6 else 0,
        "vessels": int(rng.integers(2, 13)) if rng.random() < 0.8 else 0,
        "plexus": bool(rng.random() < 0.6),
        # FLAIR and T2 of the hyperintensities: this share of the way from WM to the case's edema
        "flair_share": float(u(0.45, 1.0)), "t2_share": float(u(0.45, 1.0)), "t1_ratio": float(u(0.8, 1.0)),
        # vessels: enhancing like a tumour on T1CE; a flow void (dark) on T2, anything on FLAIR
        "ce_ratio": float(np.exp(u(np.log(1.2), np.log(2.6)))), "t2_void": float(u(0.3, 0.9)),
        "flair_ratio": float(u(0.5, 1.3)),
    }


def values(draws: dict, tissue: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{modality: {"wmh": signal, "vessel": signal}} from the case's tissue values (contrast.draw_values)."""
    t1, ce, t2, fl = (tissue[k] for k in ("t1", "t1ce", "t2", "flair"))
    wmh_t1 = t1["wm"] * draws["t1_ratio"]
    return {
        "t1": {"wmh": wmh_t1, "vessel": t1["gm"]},
        "t1ce": {"wmh": ce["wm"] * wmh_t1 / t1["wm"], "vessel": max(ce["wm"], ce["gm"]) * draws["ce_ratio"]},
        "t2": {"wmh": t2["wm"] + draws["t2_share"] * (t2["edema"] - t2["wm"]), "vessel": t2["wm"] * draws["t2_void"]},
        "flair": {"wmh": fl["wm"] + draws["flair_share"] * (fl["edema"] - fl["wm"]), "vessel": fl["gm"] * draws["flair_ratio"]},
    }


def _balls(rng, shape, candidates: np.ndarray, count: int, radius: tuple[float, float]) -> np.ndarray:
    """`count` balls centred at random among the candidate voxels (a boolean map), radii in mm."""
    out = np.zeros(shape, bool)
    where = np.flatnonzero(candidates)
    if count == 0 or where.size == 0:
        return out
    for flat in rng.choice(where, size=count):
        r = rng.uniform(*radius)
        c = np.unravel_index(flat, shape)
        box = tuple(slice(max(0, int(x - r - 1)), min(n, int(x + r + 2))) for x, n in zip(c, shape))
        grid = np.ogrid[box]
        out[box] |= sum((g - x) ** 2 for g, x in zip(grid, c)) <= r * r
    return out


def _vessel(rng, shape, surface: np.ndarray) -> np.ndarray:
    """A thin tube following the brain's surface: a random walk from a surface voxel, kept near it."""
    out = np.zeros(shape, bool)
    where = np.flatnonzero(surface)
    if where.size == 0:
        return out
    point = np.array(np.unravel_index(rng.choice(where), shape), float)
    direction = rng.normal(size=3)
    for _ in range(int(rng.integers(30, 120))):
        direction = direction / np.linalg.norm(direction) + rng.normal(scale=0.3, size=3)
        step = point + direction / np.linalg.norm(direction)
        index = tuple(np.clip(np.round(step).astype(int), 0, np.array(shape) - 1))
        if not surface[index]:  # left the surface band: turn back towards it
            direction = -direction
            continue
        point = step
        out[index] = True
    thick = rng.random() < 0.5  # 1 or 3 voxels across (iterations=0 would dilate until nothing changes)
    return ndimage.binary_dilation(out) if thick else out


def maps(rng: np.random.Generator, draws: dict, tissues, vent_sdf: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Soft maps (0-1, the tissues' box) of the look-alikes: "wmh" (periventricular and white-matter
    hyperintensities) and "vessel" (surface vessels and choroid plexus); zero inside any tumour."""
    shape = codes.shape
    wm = tissues.wm > 0.6
    wmh = np.zeros(shape, bool)
    if draws["periventricular"]:  # patchy: caps and rims, not a perfect shell
        patches = fields.smooth_field(rng, shape, rng.uniform(6, 14)) > rng.uniform(-0.5, 0.5)
        wmh |= (vent_sdf > 0) & (vent_sdf < draws["rim_mm"]) & wm & patches
    wmh |= _balls(rng, shape, wm & (vent_sdf > 4), draws["wmh"], (1.0, 4.0)) & wm
    depth = ndimage.distance_transform_edt(tissues.brain)
    vessel = np.zeros(shape, bool)
    surface = tissues.brain & (depth < 3)
    for _ in range(draws["vessels"]):
        vessel |= _vessel(rng, shape, surface)
    if draws["plexus"]:
        vessel |= _balls(rng, shape, vent_sdf < -1.5, int(rng.integers(1, 4)), (1.5, 3.5)) & tissues.brain
    outside_tumour = (codes == 0).astype(np.float32)
    sigma = rng.uniform(0.5, 1.0)  # partial volume
    return {name: np.clip(ndimage.gaussian_filter(m.astype(np.float32), sigma, truncate=2.5), 0, 1) * outside_tumour
            for name, m in (("wmh", wmh), ("vessel", vessel)) if m.any()}
