"""Phantoms v2: domain-randomised BraTS-like cases, after SynthSeg (Billot et al. 2023).

Everything a network should not rely on is drawn at random per case: the anatomy (the
ICBM152 template rotated, scaled, elastically warped, ventricles grown or shrunk, tissue
pushed aside by the tumours, the midline shifted by large ones), the tumours (1-3 lobulated
lesions, deep, cortical or across the midline, 1-150 mL in all, with or without necrosis or
enhancement, edema from none to extensive), the intensities (random per tissue and contrast
within the physiological order only, textured, gamma, bias field) and the acquisition (1-7 mm
slices along any axis, blur, partial volume, motion ghosts, Rician noise, and int16, float or
z-scored values). What was drawn is in `PhantomCase.params`.

Two random streams per seed: the design (every scalar and discrete choice, `draw_design`,
cheap enough to survey hundreds of seeds) and the realisation (noise fields, shapes, noise).
`make_case_v2(seed)` is bit-identical per seed. The ground truth stays on the 1 mm BraTS grid.
Versions v3 (harder tumour contrasts, contrast.py) and v4 (v3 plus non-tumour look-alikes labelled
background, lookalikes.py) are the same cases with those changes.
"""

from __future__ import annotations

import numpy as np

from ..brats import ET, MODALITIES, NETC, SNFH
from ..phantom import SHAPE, PhantomCase
from . import acquisition, anatomy, contrast, lesions, lookalikes

VERSIONS = ("v2", "v3", "v4")
_TO_LABEL = np.array([0, SNFH, ET, NETC, NETC], np.uint8)  # generator codes -> internal labels


def draw_design(seed: int, version: str = "v2") -> dict:
    """The case's scalar and discrete draws, made before any volume is built; `version` "v3" draws
    the tissue intensities as contrast.draw_values says, everything else as "v2"."""
    rng = np.random.default_rng([seed, 0])
    deform = anatomy.draw_deformation(rng)
    plan, tumour = lesions.plan(rng, deform)
    main_axis = int(rng.choice(3, p=[0.6, 0.2, 0.2]))  # most protocols are axial
    return {
        "deform": deform, "plan": plan, "tumour": tumour,
        "ventricles_mm": float(rng.uniform(-3, 6)),
        "values": contrast.draw_values(rng, version),
        "acquisition": {key: acquisition.draw(rng, main_axis) for key in MODALITIES},
        "kind": acquisition.draw_scale(rng),
    }


def make_case_v2(seed: int, version: str = "v2") -> PhantomCase:
    """One domain-randomised case; the same seed and version give bit-identical arrays and params."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    design = draw_design(seed, version)
    rng = np.random.default_rng([seed, 1])
    deform, plan, acq = design["deform"], design["plan"], design["acquisition"]
    t = anatomy.template()
    mid_out = float(deform.to_output(np.r_[t.centre[:2], t.mid_x])[2])
    src_nodes, shift = anatomy.sampling_nodes(deform, plan, mid_out)
    tissues = anatomy.warp_tissues(src_nodes, design["ventricles_mm"])
    del src_nodes

    codes = np.zeros(tissues.brain.shape, np.uint8)
    own_ml = [lesions.paint(rng, lesion, tissues, codes) for lesion in plan]
    codes[~tissues.brain] = 0

    soft, look = {}, None
    if version == "v4":  # their own stream: the case is otherwise its v3 case, draw for draw
        look_rng = np.random.default_rng([seed, 2])
        look = lookalikes.draw(look_rng)
        soft = lookalikes.maps(look_rng, look, tissues, tissues.vent_sdf, codes)
        for key, extra in lookalikes.values(look, design["values"]).items():
            design["values"][key] = {**design["values"][key], **extra}
    painter = contrast.Painter(rng, tissues, codes, soft)
    n_total = int(np.prod(SHAPE))
    images, scales, offsets, backgrounds = {}, {}, {}, {}
    for key in MODALITIES:
        values = design["values"][key]
        box_img = acquisition.acquire(rng, painter.paint(rng, values), values["wm"], acq[key])
        box_img, scales[key], offsets[key], backgrounds[key] = acquisition.store(rng, box_img, tissues.brain, design["kind"], n_total)
        full = np.full(SHAPE, backgrounds[key], np.float32)
        full[tissues.box] = box_img
        images[key] = full

    labels = np.zeros(SHAPE, np.uint8)
    labels[tissues.box] = _TO_LABEL[codes]
    tissue_map = np.zeros(SHAPE, np.uint8)  # dominant healthy tissue: 1 CSF, 2 GM, 3 WM
    dominant = 1 + np.argmax(np.stack([tissues.csf, tissues.gm, tissues.wm]), axis=0).astype(np.uint8)
    tissue_map[tissues.box] = np.where(tissues.brain, dominant, 0)
    params = _params(seed, version, design, own_ml, labels, shift, scales, offsets, backgrounds)
    if look is not None:
        params["lookalikes"] = {**look, "ml": {name: round(float(m.sum()) / 1000, 3) for name, m in soft.items()}}
    return PhantomCase(images=images, labels=labels, params=params, tissues=tissue_map)


def _params(seed, version, design, own_ml, labels, shift, scales, offsets, backgrounds) -> dict:
    """What was drawn and measured, JSON-able; volumes measured on the labels."""
    plan, kind = design["plan"], design["kind"]
    return {
        "generator": version,
        "seed": int(seed),
        "lesions": len(plan),
        "lesion_ml": [round(v, 3) for v in own_ml],
        "total_ml": round(float((labels > 0).sum() / 1000), 3),
        "sites": [les["site"] for les in plan],
        "rims": [les["rim"] for les in plan],
        "has_et": bool((labels == ET).any()),
        "has_necrosis_or_nonenhancing": bool((labels == NETC).any()),
        **design["tumour"],
        "midline_shift_mm": round(float(shift), 2),
        "ventricles_mm": round(design["ventricles_mm"], 2),
        "deformation": design["deform"].params,
        "slices": {k: {"axis": a["axis"], "plane": a["plane"], "thickness_mm": a["thickness_mm"]} for k, a in design["acquisition"].items()},
        "acquisition": design["acquisition"],
        "intensity": {"kind": kind, "dtype": "int16" if kind == "int16" else "float32", "background": backgrounds,
                      "scale": scales, "offset": offsets},
        "values": {k: {t: round(x, 4) for t, x in v.items()} for k, v in design["values"].items()},
    }
