"""Scoring a bundle on labelled cases: per-case and mean Dice / HD95 per region, and time per case.

The ROI prompt stands in for a box a radiologist draws: the ground truth's whole-tumour bounding
box grown by `roi_margin` voxels, the paper's "tumour box drawn by hand" setting.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from SAMBACore import metrics
from SAMBACore.brats import find_training_cases, read_case, region_masks
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels


def truth_roi(labels: np.ndarray, margin: int = 5):
    """The whole tumour's bounding box in (k, j, i), grown by `margin` voxels: a hand-drawn box."""
    voxels = np.argwhere(region_masks(labels)["WT"])
    return tuple(voxels.min(axis=0) - margin), tuple(voxels.max(axis=0) + margin)


def evaluate(models: SambaModels, data_dir, prompt: str = "yolo", mode: str = "samba", roi_margin: int = 5,
             device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    cases, skipped = find_training_cases(data_dir)
    per_case = []
    for index, files in enumerate(cases):
        images, labels, spacing = read_case(files)
        roi = truth_roi(labels, roi_margin) if prompt == "roi" and labels.any() else None
        started = time.perf_counter()
        result = run_samba(images, models, prompt=prompt, mode=mode, roi=roi, cache=EmbeddingCache(), device=device)
        seconds = time.perf_counter() - started
        scores = metrics.region_metrics(result.labels, labels, spacing)
        per_case.append({"case": files["seg"].parent.name, "seconds": seconds, "metrics": scores})
        log(f"[{index + 1}/{len(cases)}] {per_case[-1]['case']}: "
            + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items()) + f" ({seconds:.0f} s)")
    return {
        "prompt": prompt,
        "mode": mode,
        "cases": len(per_case),
        "skipped": skipped,
        "mean": metrics.mean_over_cases([c["metrics"] for c in per_case]),
        "mean_seconds": float(np.mean([c["seconds"] for c in per_case])),
        "per_case": per_case,
    }
