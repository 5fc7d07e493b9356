"""Tissue intensities of a v2 case: random per tissue and contrast, in physiological order only.

As in SynthSeg, the numbers themselves are drawn at random so that a network cannot learn
them; what is kept is the order that defines the tissues and the BraTS sub-regions:
  healthy   T1/T1CE: CSF < GM < WM;  T2: WM < GM < CSF;  FLAIR: CSF < WM < GM
  edema     brighter than WM on T2 and FLAIR, darker on T1, not enhancing
  ET        brighter than WM (and GM) on T1CE, not brighter than WM on T1
  necrosis  dark on T1CE, well below the enhancing rim; bright on T2
  non-enhancing tumour  as dark on T1CE as on T1 (relative to WM), bright on T2 / FLAIR
Margins are wide enough that thick slices, bias and noise do not undo the order.

Version "v4" is v3 with non-tumour look-alikes painted in (lookalikes.py).

Version "v3" (same draws, so the same seed gives the same anatomy and tumours) widens what v2
made too easy, after looking at real BraTS cases: enhancement as faint as 1.15x the brighter of
GM and WM on T1CE (v2: 1.5x and up), necrosis that can look like edema on T1 (only the enhancing
rim around it tells it apart), and a non-enhancing tumour always darker on T1 and brighter on T2
than its edema (v2 let it look like edema, so nets trained on v2 called edema core).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..brats import MODALITIES
from . import fields
from .lesions import CODES

HEALTHY_ORDER = {"t1": ("csf", "gm", "wm"), "t1ce": ("csf", "gm", "wm"), "t2": ("wm", "gm", "csf"), "flair": ("csf", "wm", "gm")}


def draw_values(rng: np.random.Generator, version: str = "v2") -> dict[str, dict[str, float]]:
    """{modality: {tissue: mean signal}} on an arbitrary 0-3.2 scale; version "v3" as in the module's
    docstring (the same number of draws as "v2", in the same order)."""
    u = rng.uniform
    v3 = version in ("v3", "v4")  # v4: v3's values, plus look-alikes drawn elsewhere (lookalikes.py)
    # Darkest tissue, then two steps up: contrast from faint (low field) to strong, never none.
    v = {key: dict(zip(HEALTHY_ORDER[key], np.cumsum([u(0.05, 0.4), u(0.06, 0.4), u(0.06, 0.4)]))) for key in MODALITIES}
    t1, ce, t2, fl = (v[k] for k in MODALITIES)
    t1.update(edema=t1["wm"] * u(0.6, 0.95), et=t1["wm"] * u(0.55, 0.95), nec=t1["wm"] * u(0.25, 1.0 if v3 else 0.7))
    t1["net"] = t1["edema"] * u(0.55, 0.9) if v3 else t1["wm"] * u(0.5, 0.9)
    # Gadolinium reaches only the enhancing tissue: elsewhere T1CE keeps T1's ratio to WM.
    for name in ("edema", "nec", "net"):
        ce[name] = ce["wm"] * t1[name] / t1["wm"] * u(0.93, 1.05)
    # v3: log-uniform 1.15-2.6x, so a third of the cases enhance less than v2's weakest (1.5x)
    ce["et"] = max(ce["wm"], ce["gm"]) * (float(np.exp(u(np.log(1.15), np.log(2.6)))) if v3 else u(1.5, 2.6))
    t2["edema"] = max(t2["wm"] * u(1.35, 2.0), t2["wm"] + u(0.3, 0.9) * (t2["csf"] - t2["wm"]))
    t2.update(et=t2["wm"] + u(0.2, 0.8) * (t2["edema"] - t2["wm"]), nec=max(t2["edema"], t2["csf"]) * u(0.85, 1.1),
              net=t2["edema"] * (u(1.05, 1.4) if v3 else u(0.9, 1.25)))
    fl["edema"] = max(fl["wm"] * u(1.35, 2.0), fl["gm"] * u(1.0, 1.5))
    fl.update(et=fl["wm"] + u(0.2, 0.9) * (fl["edema"] - fl["wm"]), nec=fl["wm"] * u(0.5, 1.6), net=fl["edema"] * u(0.8, 1.15))
    return {k: {t: float(x) for t, x in d.items()} for k, d in v.items()}


class Painter:
    """Per-case pieces shared by the four contrasts: textures and soft tumour maps."""

    def __init__(self, rng: np.random.Generator, tissues, codes: np.ndarray, lookalikes: dict | None = None):
        self.tissues = tissues
        self.lookalikes = lookalikes or {}  # soft maps by name (lookalikes.maps); v4 only
        shape = codes.shape
        # Anatomy has structure at several scales; the same texture shows in every contrast.
        self.texture = [fields.smooth_field(rng, shape, rng.uniform(1.5, 3.5)), fields.smooth_field(rng, shape, rng.uniform(6, 14))]
        self.box = None
        hits = np.nonzero(codes)
        if hits[0].size:
            self.box = tuple(slice(max(0, int(h.min()) - 4), min(n, int(h.max()) + 5)) for h, n in zip(hits, shape))
            sub = codes[self.box]
            sigma = rng.uniform(0.5, 1.0)  # partial volume at the tumour's edges
            self.soft = {name: ndimage.gaussian_filter((sub == code).astype(np.float32), sigma, truncate=2.5)
                         for name, code in CODES.items() if (sub == code).any()}
            self.soft["edema"] = self.soft.get("edema", np.zeros(sub.shape, np.float32)) * np.float32(rng.uniform(0.65, 0.9))  # anatomy shows through
            self.tumour_texture = fields.smooth_field(rng, sub.shape, rng.uniform(1.5, 5))

    def paint(self, rng: np.random.Generator, values: dict[str, float]) -> np.ndarray:
        tis = self.tissues
        img = tis.csf * np.float32(values["csf"]) + tis.gm * np.float32(values["gm"]) + tis.wm * np.float32(values["wm"])
        for name, soft in self.lookalikes.items():  # before the texture, which they share with the tissue
            img = img * (1 - soft) + soft * np.float32(values[name])
        a, b = rng.uniform(0.01, 0.06, 2)
        img *= 1 + np.float32(a) * self.texture[0] + np.float32(b) * self.texture[1]
        if self.box is not None:
            weight = sum(self.soft.values())
            tumour = sum(s * np.float32(values[name]) for name, s in self.soft.items())
            tumour *= 1 + np.float32(rng.uniform(0.05, 0.2)) * self.tumour_texture  # tumours are heterogeneous
            img[self.box] = img[self.box] * (1 - weight) + tumour
        return np.maximum(img, 0)
