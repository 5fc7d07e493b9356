"""Anatomy of a v2 case: the ICBM152 tissue maps, moved, scaled, warped and pushed aside.

One sampling map (for every output voxel, where in the template to read) carries it all:
a random affine, a smooth elastic displacement, mass effect around each tumour and a
midline shift for large ones. It is built on a 4 mm node grid, which linear interpolation
brings to 1 mm exactly for the affine part and smoothly for the rest, and is applied once to
CSF, GM, WM and the ventricles' signed distance together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import phantom
from ..phantom import SHAPE
from . import fields

STEP = 4  # node spacing (voxels = mm) of the sampling map
SITES = ("deep", "cortical", "midline")


@dataclass(frozen=True)
class Template:
    stack: np.ndarray  # (Z+2, Y+2, X+2, 4) float32: CSF, GM, WM, ventricle signed distance (mm)
    depth: np.ndarray  # float32 SHAPE: mm from the brain's surface
    sites: dict[str, np.ndarray]  # site kind -> (3, n) voxels where a tumour may be centred
    centre: np.ndarray  # (3,) centre of the brain's bounding box
    vertex: np.ndarray  # (3,) top of the brain
    mid_x: float  # the midline's x


@functools.lru_cache(maxsize=1)
def template() -> Template:
    anat = phantom._anatomy()
    brain = anat.brain
    depth = _edt_in_box(brain, 1)
    # Ventricles: the deep CSF pools (lateral ventricles, third ventricle, temporal horns).
    deep_csf = (anat.csf > 0.5) & (depth > 10)
    comp, n = ndimage.label(deep_csf)
    sizes = ndimage.sum(deep_csf, comp, range(1, n + 1))
    vent = np.isin(comp, 1 + np.flatnonzero(sizes > 1000))
    sdf = np.clip(_edt_in_box(~vent, 31, vent) - _edt_in_box(vent, 1), -30, 30).astype(np.float32)
    stack = fields.pad_stack([anat.csf, anat.gm, anat.wm, sdf], [0, 0, 0, 30])

    z, y, x = np.nonzero(brain)
    lo, hi = np.array([z.min(), y.min(), x.min()]), np.array([z.max(), y.max(), x.max()])
    centre = (lo + hi) / 2
    top = z == z.max()
    vertex = np.array([z.max(), y[top].mean(), x[top].mean()])
    mid_x = centre[2]
    supra = np.zeros(SHAPE, bool)
    supra[int(lo[0] + 0.4 * (hi[0] - lo[0])):] = True  # gliomas in BraTS are mostly supratentorial
    xs = np.abs(np.arange(SHAPE[2]) - mid_x)[None, None, :]
    masks = {
        "deep": supra & (anat.wm > 0.9) & (depth > 15) & (xs > 8),
        "cortical": supra & (anat.gm > 0.5) & (depth > 3) & (depth < 12) & (xs > 8),
        "midline": supra & (anat.wm > 0.7) & (depth > 18) & (xs < 3),  # corpus callosum: butterfly
    }
    sites = {k: np.stack(np.nonzero(m))[:, ::7].astype(np.float32) for k, m in masks.items()}
    return Template(stack, depth, sites, centre, vertex, float(mid_x))


def _edt_in_box(mask: np.ndarray, margin: int, near: np.ndarray | None = None) -> np.ndarray:
    """Distance (mm) from each voxel of `mask` to the nearest voxel outside it, computed only in
    the bounding box of `near` (default: the mask) grown by `margin`, and `margin` beyond it:
    a full-size transform takes over two seconds here and only short distances are used."""
    hits = np.nonzero(mask if near is None else near)
    box = tuple(slice(max(0, int(h.min()) - margin), min(n, int(h.max()) + margin + 1)) for h, n in zip(hits, mask.shape))
    out = np.full(mask.shape, float(margin) if near is not None else 0.0, np.float32)
    out[box] = ndimage.distance_transform_edt(mask[box])
    return out


def _rotation(degrees: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(degrees)):
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a] = r[b, b] = np.cos(angle)
        r[a, b], r[b, a] = -np.sin(angle), np.sin(angle)
        out = out @ r
    return out


@dataclass
class Deformation:
    """Output voxel x reads the template at  src = c_src + M (x' - c_out) + elastic(x),
    where x' is x moved by mass effect and midline shift."""

    matrix: np.ndarray  # (3, 3) M
    c_src: np.ndarray
    c_out: np.ndarray
    elastic: np.ndarray  # (3, *node shape) mm
    params: dict

    def to_output(self, src: np.ndarray) -> np.ndarray:
        """The output voxel that reads template voxel `src`, ignoring mass effect."""
        inv = np.linalg.inv(self.matrix)
        x = self.c_out + inv @ (src - self.c_src)
        for _ in range(4):  # fixed point: the elastic part is small and smooth
            el = np.array([ndimage.map_coordinates(e, (x / STEP)[:, None], order=1, mode="nearest")[0] for e in self.elastic])
            x = self.c_out + inv @ (src - self.c_src - el)
        return x


def draw_deformation(rng: np.random.Generator) -> Deformation:
    t = template()
    degrees = rng.uniform(-10, 10, 3)
    scale = rng.uniform(0.88, 1.05) * rng.uniform(0.96, 1.04, 3)  # brain size and shape
    matrix = _rotation(degrees) @ np.diag(1 / scale)
    c_out = np.array(SHAPE, float) / 2 - 0.5 + np.r_[0, rng.uniform(-6, 6, 2)]
    # Keep the vertex inside the field of view (BraTS volumes cut the brainstem, not the top).
    margin = rng.uniform(3, 10)
    c_out[0] += (SHAPE[0] - 1 - margin) - (c_out + np.linalg.inv(matrix) @ (t.vertex - t.centre))[0]
    amp = rng.uniform(0, 3.5)
    ctrl = rng.standard_normal((3, 6, 9, 9)).astype(np.float32) * amp
    node_shape = tuple(fields.nodes(n, STEP) for n in SHAPE)
    elastic = np.stack([
        ndimage.gaussian_filter(fields.upsample(c, 32 / STEP, tuple(slice(0, n) for n in node_shape)), 2.0)
        for c in ctrl
    ])
    params = {"rotation_deg": [round(float(d), 2) for d in degrees], "scale": [round(float(s), 3) for s in scale],
              "elastic_mm": round(float(amp), 2)}
    return Deformation(matrix, t.centre.copy(), c_out, elastic, params)


def _node_grid() -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(fields.nodes(n, STEP)) * STEP for n in SHAPE], indexing="ij")).astype(np.float32)


def sampling_nodes(deform: Deformation, lesions: list[dict], mid_out: float) -> tuple[np.ndarray, float]:
    """Template positions (3, *nodes) read by the output nodes, with mass effect and midline
    shift of `lesions` (each: centre (3,), radius mm, push 0-1, shift mm). Returns them and the
    largest midline shift."""
    t = template()
    x = _node_grid()
    src0 = deform.c_src[:, None, None, None] + np.einsum("ij,j...->i...", deform.matrix, x - deform.c_out[:, None, None, None]) + deform.elastic
    # Mass effect fades towards the skull: the brain's outline does not move.
    depth = ndimage.map_coordinates(t.depth, src0.reshape(3, -1), order=1, mode="constant").reshape(x.shape[1:])
    fade = np.clip(depth / 15, 0, 1)
    moved = x.copy()
    shift_max = 0.0
    for les in lesions:
        d = x - np.asarray(les["centre"], np.float32)[:, None, None, None]
        rho = np.sqrt((d**2).sum(0)) + 1e-3
        r3 = les["push"] * les["radius"] ** 3
        # A ball of volume push * V inserted at the centre moves every shell outwards so that
        # volume is kept: radius rho reads radius cbrt(rho^3 - r3), faded out with distance.
        m = (rho - np.cbrt(np.maximum(rho**3 - r3, 0))) * np.exp(-((rho / (2.5 * les["radius"] + 20)) ** 2)) * fade
        moved -= m * d / rho
        if les["shift"] > 0:  # subfalcine shift: the midline bows away from the tumour
            side = np.sign(les["centre"][2] - mid_out)
            near = np.exp(-((d[0] ** 2 + d[1] ** 2) / (2 * 40.0**2)))
            moved[2] += side * les["shift"] * near * np.exp(-(((x[2] - mid_out) / 25.0) ** 2)) * fade
            shift_max = max(shift_max, les["shift"])
    src = deform.c_src[:, None, None, None] + np.einsum("ij,j...->i...", deform.matrix, moved - deform.c_out[:, None, None, None]) + deform.elastic
    return src.astype(np.float32), shift_max


@dataclass
class Tissues:
    box: tuple[slice, ...]  # where in SHAPE the brain lies; every array below is this box
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # bool
    vent_sdf: np.ndarray | None = None  # mm from the (grown) ventricles' wall, negative inside


def warp_tissues(src_nodes: np.ndarray, grow: float) -> Tissues:
    """Warp the template through the node map, then grow the ventricles by `grow` mm
    (atrophy or hydrocephalus; negative: smaller ventricles)."""
    t = template()
    inside = ndimage.map_coordinates(t.depth, src_nodes.reshape(3, -1), order=0, mode="constant").reshape(src_nodes.shape[1:]) > 0
    hits = np.nonzero(inside)
    box = tuple(slice(max(0, int(h.min()) * STEP - STEP - 2), min(n, int(h.max()) * STEP + STEP + 3)) for h, n in zip(hits, SHAPE))
    coords = [fields.upsample(src_nodes[a], STEP, box) for a in range(3)]
    maps = fields.warp(t.stack, coords)
    csf, gm, wm, sdf = (np.ascontiguousarray(maps[..., c]) for c in range(4))
    del maps, coords
    if grow > 0:
        to_csf = np.clip(grow - sdf + 0.5, 0, 1) * (csf + gm + wm > 0.5)
        gm, wm = gm * (1 - to_csf), wm * (1 - to_csf)
        csf = csf + (1 - csf) * to_csf
    else:
        to_wm = np.clip(sdf - grow + 0.5, 0, 1) * (sdf < 0.5)
        wm, csf = wm + csf * to_wm, csf * (1 - to_wm)
    brain = (csf + gm + wm) > 0.5
    return Tissues(box, csf, gm, wm, brain, sdf - np.float32(grow))
