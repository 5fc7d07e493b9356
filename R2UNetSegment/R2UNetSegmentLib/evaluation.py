"""Scoring a bundle's models on labelled BraTS cases: Dice, HD95 and the other metrics per region, time per case."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from SAMBACore import metrics
from SAMBACore.brats import MODALITIES, find_training_cases, read_case

from .r2unet_bundle import R2UNetModels


def evaluate(models: R2UNetModels, data_dir, mode: str = "cascade", model: str = "unet", patch_size: int = 64,
             device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Segment every case of data_dir in `mode` (full, patch, cascade, auto) and score it against its truth."""
    from .inference import normalise, segment

    cases, skipped = find_training_cases(data_dir)
    per_case = []
    for index, files in enumerate(cases):
        images, truth, spacing = read_case(files)
        image = normalise(np.stack([images[m] for m in MODALITIES]))
        started = time.perf_counter()
        labels, _, mode_used = segment(image, model=getattr(models, model), cascade=models.cascade, mode=mode,
                                       patch_size=patch_size, device=device)
        seconds = time.perf_counter() - started
        scores = metrics.region_metrics(labels, truth, spacing)
        per_case.append({"case": files["seg"].parent.name, "mode": mode_used, "seconds": seconds, "metrics": scores})
        log(f"[{index + 1}/{len(cases)}] {per_case[-1]['case']} ({mode_used}): "
            + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items()) + f" ({seconds:.1f} s)")
    return {
        "mode": mode,
        "model": "cascade" if mode == "cascade" else model,
        "cases": len(per_case),
        "skipped": skipped,
        "mean": metrics.mean_over_cases([c["metrics"] for c in per_case]),
        "mean_seconds": float(np.mean([c["seconds"] for c in per_case])),
        "per_case": per_case,
    }
