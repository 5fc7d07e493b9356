"""BraTS-like phantom cases built on the MNI ICBM152 template that nilearn ships.

A case is four contrasts (t1, t1ce, t2, flair) plus ground truth on the BraTS grid
(240x240x155, 1 mm, LPS, origin (0, -239, 0)) with one synthetic glioma: a necrotic or
non-enhancing core, an enhancing rim and edema. Anatomy comes from the ICBM152 brain mask
and GM/WM maps (offline, inside nilearn's wheel); tumour, contrasts, bias field and noise are
random but bit-identical per seed. `lowres` mimics low-field scans: thick blurred slices,
more noise, lower contrast. The ground truth always stays on the 1 mm grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .brats import ET, MODALITIES, NETC, SNFH, case_file_name, from_internal_labels

SHAPE = (155, 240, 240)  # (z, y, x), as SimpleITK's GetArrayFromImage and Slicer's arrayFromVolume
SPACING = (1.0, 1.0, 1.0)
ORIGIN = (0.0, -239.0, 0.0)  # where BraTS puts voxel (0, 0, 0), LPS with identity direction

# Mean intensity per tissue and modality on BraTS' rough 0-1000 scale; jittered per case.
# Order: csf, gm, wm, edema, enhancing tumour, necrosis / non-enhancing core.
_CONTRAST = {
    "t1": (250, 500, 650, 430, 480, 280),  # WM > GM > CSF, tumour hypo-intense
    "t1ce": (260, 490, 610, 420, 950, 270),  # gadolinium: ET brightest, necrosis dark
    "t2": (950, 560, 380, 760, 600, 860),  # fluid bright: CSF, necrosis, edema; WM darkest
    "flair": (150, 500, 400, 860, 640, 480),  # CSF suppressed, edema brightest
}


@dataclass
class PhantomCase:
    images: dict[str, np.ndarray]  # MODALITIES -> float32 SHAPE, background 0
    labels: np.ndarray  # uint8 SHAPE, internal labels 0-3
    spacing: tuple[float, float, float] = SPACING  # (x, y, z) mm, SimpleITK order
    origin: tuple[float, float, float] = ORIGIN
    # Filled by phantom_v2: what was drawn (JSON-able), and the deformed anatomy's dominant
    # healthy tissue per voxel (uint8: 0 background, 1 CSF, 2 GM, 3 WM) for measuring contrasts.
    params: dict = field(default_factory=dict)
    tissues: np.ndarray | None = None


@dataclass(frozen=True)
class _Anatomy:
    brain: np.ndarray  # bool SHAPE
    csf: np.ndarray  # float32 tissue fractions, SHAPE, summing to 1 inside the brain
    gm: np.ndarray
    wm: np.ndarray
    centres: tuple[np.ndarray, np.ndarray]  # candidate tumour centres (3, n) per hemisphere
    coords: np.ndarray  # (3, n_brain) brain voxel positions scaled to about [-1, 1], for the bias field


def _place(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Shift `volume` into SHAPE so the brain's bounding box is centred (crop or pad per axis)."""
    out = np.zeros(SHAPE, np.float32)
    src, dst = [], []
    for axis, size in enumerate(SHAPE):
        hits = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        shift = (size - (hits[-1] - hits[0] + 1)) // 2 - hits[0]
        lo_in, lo_out = max(0, -shift), max(0, shift)
        n = min(volume.shape[axis] - lo_in, size - lo_out)
        src.append(slice(lo_in, lo_in + n))
        dst.append(slice(lo_out, lo_out + n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


@functools.lru_cache(maxsize=1)
def _anatomy() -> _Anatomy:
    from nilearn import datasets  # slow to import and only needed here

    loaders = (datasets.load_mni152_brain_mask, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template)
    # nilearn arrays are (x, y, z) in RAS; BraTS arrays are (z, y, x) with x growing to the
    # patient's left and y to the back, so transpose and flip x and y.
    raw = [f(resolution=1).get_fdata(dtype=np.float32).transpose(2, 1, 0)[:, ::-1, ::-1] for f in loaders]
    raw_brain = raw[0] > 0.5
    mask, gm, wm = (_place(v, raw_brain) for v in raw)
    brain = mask > 0.5
    gm, wm = np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain
    total = np.maximum(gm + wm, 1.0)  # the maps overlap slightly; keep fractions <= 1
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)
    # Tumour centres: deep white matter of the cerebrum, off the midline, away from the surface.
    depth = ndimage.distance_transform_edt(brain)
    z, y, x = np.nonzero(brain)
    lo, hi = np.array([z.min(), y.min(), x.min()]), np.array([z.max(), y.max(), x.max()])
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    ok = (wm > 0.9) & (depth > 18)
    ok[: int(lo[0] + 0.4 * (hi[0] - lo[0]))] = False  # gliomas in BraTS are mostly supratentorial
    cz, cy, cx = np.nonzero(ok)
    left = cx > mid[2] + 10
    right = cx < mid[2] - 10
    centres = tuple(np.stack([cz[s], cy[s], cx[s]]) for s in (left, right))
    coords = ((np.stack([z, y, x]) - mid[:, None]) / half[:, None]).astype(np.float32)
    return _Anatomy(brain, csf, gm.astype(np.float32), wm.astype(np.float32), centres, coords)


def _field(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Smooth random field, zero mean and unit std, with features about `cell` voxels wide.

    Drawn on a coarse grid and zoomed up: far cheaper than filtering white noise at full size.
    """
    coarse = tuple(max(3, int(np.ceil(n / cell)) + 1) for n in shape)
    small = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 0.7)
    out = ndimage.zoom(small, [n / c for n, c in zip(shape, coarse)], order=1)
    return (out - out.mean()) / (out.std() + 1e-6)


def _smallest(field: np.ndarray, n: int) -> np.ndarray:
    """Mask of the `n` voxels with the lowest (finite) values: lets us fix a region's volume."""
    n = min(int(n), int(np.isfinite(field).sum()))
    if n <= 0:
        return np.zeros(field.shape, bool)
    return field <= np.partition(field.ravel(), n - 1)[n - 1]


def _tumour(rng: np.random.Generator, anat: _Anatomy) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Internal labels of one tumour inside a box around it, and that box."""
    wt_ml = np.exp(rng.uniform(np.log(10), np.log(150)))  # log-uniform: as many small as large
    tc_ml = wt_ml * rng.uniform(0.15, 0.5)
    # A third of the cases get almost no necrosis so the label mix varies between cases.
    nec_frac = rng.uniform(0.0, 0.05) if rng.random() < 0.3 else rng.uniform(0.2, 0.7)
    cand = anat.centres[rng.integers(2)]
    centre = cand[:, rng.integers(cand.shape[1])]
    box = tuple(slice(max(0, c - 64), min(n, c + 64)) for c, n in zip(centre, SHAPE))
    bshape = tuple(s.stop - s.start for s in box)
    rel = [g - c for g, c in zip(np.ogrid[box], centre)]
    brain, csf, wm = anat.brain[box], anat.csf[box], anat.wm[box]

    # Core shape: union of a few rotated, overlapping ellipsoids (q < 1 inside one) ...
    r = (3 * tc_ml * 1000 / (4 * np.pi)) ** (1 / 3)  # radius of a sphere of the core's volume
    q = np.full(bshape, np.inf, np.float32)
    for k in range(rng.integers(1, 5)):
        offset = rng.normal(0, 0.45 * r, 3) if k else np.zeros(3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        radii = r * rng.uniform(0.5, 1.1, 3)
        d = [rel[a] - offset[a] for a in range(3)]
        q = np.minimum(q, sum(((rot[i, 0] * d[0] + rot[i, 1] * d[1] + rot[i, 2] * d[2]) / radii[i]) ** 2 for i in range(3)))
    # ... with a lumpy boundary, and pushed away from CSF: tumours abut ventricles, not fill them.
    q = q * np.exp(0.5 * _field(rng, bshape, max(4.0, r / 2))) * (1 + 3 * csf)
    q[~brain] = np.inf
    core = _smallest(q, tc_ml * 1000)
    # Necrosis: the inner part of the core, with its own lumps so the enhancing rim varies in thickness.
    nec_field = np.where(core, q * np.exp(0.6 * _field(rng, bshape, 4.0)), np.inf)
    necrosis = _smallest(nec_field, nec_frac * core.sum())
    # Edema: the nearest voxels around the core, spreading more easily along white matter.
    dist = ndimage.distance_transform_edt(~core)
    ed_field = dist * (1 + 1.5 * (1 - wm)) * np.exp(0.5 * _field(rng, bshape, 10.0))
    ed_field[core | ~brain | (csf > 0.6)] = np.inf
    edema = _smallest(ed_field, (wt_ml - tc_ml) * 1000)

    labels = np.zeros(bshape, np.uint8)
    labels[edema], labels[core], labels[necrosis] = SNFH, ET, NETC
    return labels, box


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as an MR scanner reconstructs it."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real**2 + (sigma * rng.standard_normal(signal.shape, dtype=np.float32)) ** 2)


def _thick_slices(rng: np.random.Generator, vol: np.ndarray, thick: int, sigma: float) -> np.ndarray:
    """Acquire `vol` as `thick` mm slices (slab average, slight in-plane blur, noise), then
    interpolate back to 1 mm the way a viewer would: partial-volume smear along z."""
    centres = np.arange(thick // 2, vol.shape[0], thick)
    slabs = ndimage.uniform_filter1d(vol, thick, axis=0)[centres]
    slabs = _rician(rng, ndimage.gaussian_filter(slabs, (0, 0.7, 0.7)), sigma)
    z = np.arange(vol.shape[0])
    i0 = np.clip(np.searchsorted(centres, z, side="right") - 1, 0, len(centres) - 2)
    w = np.clip((z - centres[i0]) / thick, 0, 1).astype(np.float32)[:, None, None]
    return slabs[i0] * (1 - w) + slabs[i0 + 1] * w


def make_case(seed: int, lowres: bool = False) -> PhantomCase:
    """One phantom case; the same seed (and lowres) gives bit-identical arrays."""
    anat = _anatomy()
    rng = np.random.default_rng(seed)
    box_labels, box = _tumour(rng, anat)
    labels = np.zeros(SHAPE, np.uint8)
    labels[box] = box_labels
    # Soft label maps so the images have partial-volume edges rather than voxel steps.
    soft = {lab: ndimage.gaussian_filter((box_labels == lab).astype(np.float32), 0.8) for lab in (SNFH, ET, NETC)}
    soft[SNFH] *= 0.8  # edema lets some of the underlying anatomy show through
    tumour_weight = soft[SNFH] + soft[ET] + soft[NETC]
    thick = int(rng.integers(4, 7))

    images = {}
    for key in MODALITIES:
        csf_v, gm_v, wm_v, ed_v, et_v, nc_v = np.array(_CONTRAST[key]) * rng.uniform(0.93, 1.07, 6) * rng.uniform(0.85, 1.15)
        img = anat.csf * np.float32(csf_v) + anat.gm * np.float32(gm_v) + anat.wm * np.float32(wm_v)
        texture = 1 + 0.08 * _field(rng, box_labels.shape, 3.0)  # tumours are heterogeneous
        tumour = (soft[SNFH] * ed_v + soft[ET] * et_v + soft[NETC] * nc_v) * texture
        img[box] = img[box] * (1 - tumour_weight) + tumour
        values = img[anat.brain]
        if lowres:  # low field: less T1/T2 contrast between tissues
            values = values.mean() + rng.uniform(0.55, 0.75) * (values - values.mean())
        # Smooth multiplicative bias field: exp of a random quadratic polynomial in x, y, z.
        z, y, x = anat.coords
        terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
        log_bias = sum(c * t for c, t in zip(rng.normal(0, 0.15 if lowres else 0.1, len(terms)), terms))
        values = values * np.exp(log_bias).astype(np.float32)
        sigma = wm_v * (rng.uniform(0.05, 0.08) if lowres else rng.uniform(0.015, 0.03))
        out = np.zeros(SHAPE, np.float32)
        if lowres:
            out[anat.brain] = values
            out = _thick_slices(rng, out, thick, sigma) * anat.brain
        else:
            out[anat.brain] = _rician(rng, values, sigma)
        images[key] = out.astype(np.float32)
    return PhantomCase(images=images, labels=labels)


def case_id_for(number: int, naming: str = "2023") -> str:
    """BraTS-style case id: PHANTOM-00007-000 (2023) or PHANTOM_00007 (2021)."""
    return f"PHANTOM-{number:05d}-000" if naming == "2023" else f"PHANTOM_{number:05d}"


def write_case(out_dir, case_id: str, seed: int, lowres: bool = False, naming: str = "2023",
               randomise: bool | str = False) -> Path:
    """Write one case as BraTS NIfTI files into out_dir/case_id; returns that folder.

    randomise: the domain-randomised generator (phantom_v2) instead of this one, True or "v2", or
    "v3" (v2 with fainter enhancement and harder cores, see phantom_v2.contrast) or "v4" (v3 with non-tumour
    look-alikes, phantom_v2.lookalikes); `lowres` is then
    ignored (v2 draws its own slice thickness). The default stays this generator so that earlier
    results reproduce."""
    import SimpleITK as sitk

    if naming not in ("2021", "2023"):
        raise ValueError(f"naming must be '2021' or '2023', not {naming!r}")
    if randomise:
        from .phantom_v2 import make_case_v2

        case = make_case_v2(seed, "v2" if randomise is True else randomise)
    else:
        case = make_case(seed, lowres)
    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {**case.images, "seg": from_internal_labels(case.labels, naming)}
    if case.params.get("intensity", {}).get("dtype") == "int16":  # stored as a scanner would
        arrays.update({key: case.images[key].astype(np.int16) for key in case.images})
    for key, array in arrays.items():
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(case.spacing)
        image.SetOrigin(case.origin)
        sitk.WriteImage(image, str(folder / case_file_name(case_id, key, naming)), True)
    return folder


def write_cases(out_dir, n: int, seed: int = 0, lowres: bool = False, naming: str = "2023", progress=None,
                randomise: bool | str = False) -> list[Path]:
    """Write `n` cases; case i uses seed + i and is named after it. progress(i, n, path) after each.
    randomise: use the domain-randomised generator (see write_case)."""
    folders = []
    for i in range(n):
        folders.append(write_case(out_dir, case_id_for(seed + i, naming), seed + i, lowres, naming, randomise))
        if progress is not None:
            progress(i, n, folders[-1])
    return folders
