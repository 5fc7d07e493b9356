"""Scoring a bundle's models on labelled BraTS cases: Dice, HD95 and the other metrics per region, time per case."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from SAMBACore.brats import MODALITIES
from SAMBACore.evaluation import score_cases

from .r2unet_bundle import R2UNetModels


def evaluate(models: R2UNetModels, data_dir, mode: str = "cascade", model: str = "unet", patch_size: int = 64,
             device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Segment every case of data_dir in `mode` (full, patch, cascade, auto) and score it against its truth."""
    from .inference import normalise, segment

    def segment_case(images, truth, files):
        image = normalise(np.stack([images[m] for m in MODALITIES]))
        labels, _, mode_used = segment(image, model=getattr(models, model), cascade=models.cascade, mode=mode,
                                       patch_size=patch_size, device=device)
        return labels, {"mode": mode_used}

    return {"mode": mode, "model": "cascade" if mode == "cascade" else model, **score_cases(data_dir, segment_case, log)}
