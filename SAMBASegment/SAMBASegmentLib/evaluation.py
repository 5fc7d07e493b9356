"""Scoring a bundle on labelled cases: per-case and mean Dice / HD95 per region, and time per case.

The ROI prompt stands in for a box a radiologist draws: the ground truth's whole-tumour bounding
box grown by `roi_margin` voxels, the paper's "tumour box drawn by hand" setting.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from SAMBACore.brats import internal_labels_of, region_masks
from SAMBACore.evaluation import score_cases
from SAMBASegmentLib.contrasts import describe
from SAMBASegmentLib.core_outline import DEFAULT_CORE
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.prompts import roi_around
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels


ROI_MARGIN = 5  # voxels around the true box: the stand-in for a hand-drawn box in every measurement


def truth_roi(labels: np.ndarray, margin: int = ROI_MARGIN):
    """The whole tumour's bounding box in (k, j, i), grown by `margin` voxels: a hand-drawn box."""
    return roi_around(region_masks(labels)["WT"], margin)


def evaluate(models: SambaModels, data_dir, prompt: str = "cascade", mode: str = "samba", roi_margin: int = ROI_MARGIN,
             device: str = "cpu", log: Callable[[str], None] = print, on_case=None, preset: str = "auto",
             contrasts=None, core: str = DEFAULT_CORE) -> dict:
    """Scores per case and their means (SAMBACore.evaluation.score_cases). Cases may have any set of the
    four contrasts; `contrasts` uses only those (the others left out), to measure a subset. `core`: as
    pipeline.run_samba's."""
    ran = set()

    def segment(images, truth, spacing):
        roi = truth_roi(truth, roi_margin) if prompt == "roi" and truth.any() else None
        result = run_samba(images, models, prompt=prompt, mode=mode, roi=roi, cache=EmbeddingCache(), device=device,
                           preset=preset, voxel_mm3=float(np.prod(spacing)), core=core)
        ran.add(result.preset)
        return internal_labels_of(result.labels, result.regions), {"contrasts": describe(result.contrasts),
                                                                   "regions": result.regions}

    scores = score_cases(data_dir, segment, log, on_case, allow_missing=True, contrasts=contrasts)
    return {"prompt": prompt, "roi_margin": roi_margin if prompt == "roi" else None, "mode": mode,
            "preset": ",".join(sorted(ran)), "core": core, "contrasts": ",".join(contrasts) if contrasts else "as found", **scores}
