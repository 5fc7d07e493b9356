"""Tumours of a v2 case: where they go, how big, and their sub-region shapes.

Shapes are level sets of a lumpy metric: a union of rotated blobs plus smooth noise at two
scales, so cores come out lobulated and sometimes with satellites rather than as ellipsoids.
Each region takes exactly its drawn volume by ranking voxels (phantom._smallest): the core
first, necrosis inside it, edema outside it where the metric, made cheaper along white
matter, is lowest, so edema spreads along the tracts and spares cortex and ventricles.
"""

from __future__ import annotations

import numpy as np

from ..phantom import _smallest
from . import anatomy, fields

# Tumour tissue codes inside the generator; ET and necrosis are what BraTS labels them,
# "net" is non-enhancing tumour (labelled NETC like necrosis, but not dark on T1CE).
EDEMA, ENHANCING, NECROSIS, NONENHANCING = 1, 2, 3, 4
CODES = {"edema": EDEMA, "et": ENHANCING, "nec": NECROSIS, "net": NONENHANCING}

_EDEMA_KINDS = {"none": (0.0, 0.0), "mild": (0.1, 0.35), "moderate": (0.35, 0.6), "extensive": (0.6, 0.85)}
# Enhancing rim thickness in mm (necrosis fills the rest of the core); small cores come out
# solid, as small enhancing lesions are, rather than with a rim thinner than a voxel.
_RIMS = {"solid": None, "thick": (4.0, 9.0), "thin": (1.5, 3.0), "patchy": (2.0, 5.0)}


def _ball_radius(volume_mm3: float) -> float:
    return float(np.cbrt(3 * volume_mm3 / (4 * np.pi)))


def plan(rng: np.random.Generator, deform: anatomy.Deformation) -> tuple[list[dict], dict]:
    """Draw the lesions (centre in output voxels, volumes, kinds) before the anatomy is warped,
    since their mass effect is part of the warp."""
    t = anatomy.template()
    n = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    total_ml = float(np.exp(rng.uniform(np.log(1.1), np.log(145))))
    shares = rng.dirichlet(np.full(n, 2.0)) * total_ml
    enhancing = bool(rng.random() > 0.25)  # a quarter of the cases: non-enhancing tumours, no ET
    edema_kind = str(rng.choice(list(_EDEMA_KINDS), p=[0.12, 0.25, 0.33, 0.30]))
    lesions = []
    for ml in shares:
        ed_frac = float(rng.uniform(*_EDEMA_KINDS[edema_kind]))
        r_wt = _ball_radius(ml * 1000)
        for _ in range(30):  # keep lesions apart so that their volumes add up
            site = str(rng.choice(anatomy.SITES, p=[0.5, 0.3, 0.2]))
            cand = t.sites[site]
            centre = deform.to_output(cand[:, rng.integers(cand.shape[1])].astype(float))
            if all(np.linalg.norm(centre - o["centre"]) > 0.9 * (r_wt + o["r_wt"]) + 4 for o in lesions):
                break
        push = float(rng.uniform(0.4, 1.0) if enhancing else rng.uniform(0.1, 0.6))  # infiltrative ones push less
        mass = ml * 1000 * (1 - 0.3 * ed_frac)  # edema swells too, less than solid tumour
        shift = 0.0 if site == "midline" or ml < 25 else float(min(12, (ml - 25) / 10) * rng.uniform(0.5, 1))
        lesions.append({
            "site": site, "centre": centre, "ml": float(ml), "r_wt": r_wt, "edema_frac": ed_frac,
            "enhancing": enhancing, "rim": str(rng.choice(list(_RIMS))) if enhancing else "none",
            "radius": _ball_radius(mass), "push": push, "shift": shift,
        })
    return lesions, {"edema": edema_kind, "enhancing": enhancing, "drawn_ml": round(total_ml, 2)}


def _blob_metric(rng, rel, r_core, midline):
    """Union of 1-4 rotated ellipsoids, as a distance-like metric that is about 1 on its surface."""
    q = None
    for k in range(int(rng.integers(1, 5))):
        offset = rng.normal(0, 0.5 * r_core, 3) if k else np.zeros(3)
        radii = r_core * rng.uniform(0.5, 1.0, 3)
        if midline:  # butterfly: spread across the corpus callosum to both hemispheres
            offset[2] *= 2
            radii[2] *= 1.6
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
        d = [rel[a] - np.float32(offset[a]) for a in range(3)]
        qk = sum(((rot[i, 0] * d[0] + rot[i, 1] * d[1] + rot[i, 2] * d[2]) / np.float32(radii[i])) ** 2 for i in range(3))
        q = qk if q is None else np.minimum(q, qk)
    return np.sqrt(q)


def paint(rng: np.random.Generator, lesion: dict, tissues: anatomy.Tissues, codes: np.ndarray) -> float:
    """Draw one lesion's regions into `codes` (the tissues' box); returns its own volume in mL."""
    start = np.array([s.start for s in tissues.box])
    c = lesion["centre"] - start
    v_wt = lesion["ml"] * 1000
    v_core = v_wt * (1 - lesion["edema_frac"])
    r_core = max(_ball_radius(v_core), 1.0)
    h = int(np.ceil(2.0 * lesion["r_wt"] + 8))
    sub = tuple(slice(max(0, int(ci) - h), min(n, int(ci) + h + 1)) for ci, n in zip(c, codes.shape))
    shape = tuple(s.stop - s.start for s in sub)
    rel = [(np.arange(s.start, s.stop, dtype=np.float32) - np.float32(ci)).reshape([-1 if a == i else 1 for a in range(3)])
           for i, (s, ci) in enumerate(zip(sub, c))]
    csf, wm, brain = tissues.csf[sub], tissues.wm[sub], tissues.brain[sub]

    q = _blob_metric(rng, rel, r_core, lesion["site"] == "midline")
    lumpy = rng.uniform(0.1, 0.5) if lesion["enhancing"] else rng.uniform(0.3, 0.7)  # low grade: more infiltrative
    q += lumpy * fields.smooth_field(rng, shape, max(3.0, 0.8 * r_core))
    q += rng.uniform(0.03, 0.2) * fields.smooth_field(rng, shape, max(2.0, 0.3 * r_core))
    q += 2 * csf  # tumours abut the ventricles rather than fill them
    q[~brain] = np.inf
    core = _smallest(q, v_core)

    ed = q * (1 + rng.uniform(1, 2.5) * (1 - wm)) + rng.uniform(0.1, 0.5) * fields.smooth_field(rng, shape, rng.uniform(5, 12))
    ed[core | ~brain | (csf > 0.5)] = np.inf
    edema = _smallest(ed, v_wt - v_core)

    mine = np.zeros(shape, np.uint8)
    mine[edema] = EDEMA
    if not lesion["enhancing"]:
        mine[core] = NONENHANCING
    else:
        rim_mm = rng.uniform(*_RIMS[lesion["rim"]]) if _RIMS[lesion["rim"]] else np.inf
        nec_frac = max(0.0, 1 - rim_mm / r_core) ** 3
        necrosis = np.zeros(shape, bool)
        if nec_frac > 0:
            nec_field = np.where(core, q * np.exp(0.4 * fields.smooth_field(rng, shape, 4.0)), np.inf)
            necrosis = _smallest(nec_field, nec_frac * core.sum())
        rim = core & ~necrosis
        mine[rim], mine[necrosis] = ENHANCING, NECROSIS
        if lesion["rim"] == "patchy" and rim.sum() > 20:  # gaps in the enhancing rim
            gap = fields.smooth_field(rng, shape, max(3.0, r_core / 2))
            mine[rim & (gap < np.quantile(gap[rim], rng.uniform(0.2, 0.5)))] = NONENHANCING
    # Cores win over edema, later lesions' cores over earlier ones.
    region = codes[sub]
    region[mine >= ENHANCING] = mine[mine >= ENHANCING]
    region[(mine == EDEMA) & (region == 0)] = EDEMA
    return float((mine > 0).sum() / 1000)
