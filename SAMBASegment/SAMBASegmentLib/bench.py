"""`slicer-samba bench samba`: SAM the naive way against the pipeline, on one phantom case, in one run.

Naive: segment-anything's own SamPredictor, set_image + predict(box) once per slice, modality and
view. Pipeline: sam_runner's batched encoder, embedding cache and batched decoder. Both get the
same slices and the same boxes (pipeline.sam_votes with either runner), so their votes must agree:
the Dice between them shows the fast path computes the same thing, the ratio what it saves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from SAMBACore.brats import MODALITIES, region_masks
from SAMBACore.phantom import make_case
from SAMBASegmentLib.evaluation import truth_roi
from SAMBASegmentLib.pipeline import fuse_votes, prompt_boxes, sam_votes
from SAMBASegmentLib.prompts import Boxes
from SAMBASegmentLib.sam_model import OFFICIAL, build_sam
from SAMBASegmentLib.sam_runner import EmbeddingCache, naive_segment_stack
from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle
from SAMBASegmentLib.slices import VIEWS


def limit_boxes(boxes: Boxes, max_slices: int | None) -> Boxes:
    """At most `max_slices` of the boxes: the slices nearest the middle of the boxed range,
    i.e. through the tumour rather than at its edges."""
    if max_slices is None or len(boxes) <= max_slices:
        return boxes
    indices = sorted(boxes)
    middle = indices[len(indices) // 2]
    kept = sorted(indices, key=lambda i: (abs(i - middle), i))[:max_slices]
    return {i: boxes[i] for i in sorted(kept)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    # Counts only: metrics.binary_metrics would also compute HD95, far too slow for 12 full volumes.
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2 * int(np.count_nonzero(a & b)) / total if total else 1.0


def bench_samba(bundle="phantom-demo", seed: int = 0, lowres: bool = False, views=VIEWS, device: str = "cpu",
                sam_type: str | None = None, max_slices: int | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Time the naive SamPredictor loop and the pipeline on phantom case `seed`; returns the report.

    sam_type: None keeps the bundle's SAM; "vit_b" (or vit_l, vit_h) swaps in a randomly initialised
    SAM of the official shape, for timing. max_slices: at most that many prompted slices per view.
    Prompts come from the bundle's YOLO (its box on every slice), or (without one) the true tumour box.
    """
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"Unknown view(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(VIEWS)}.")
    if sam_type is not None and sam_type not in OFFICIAL:
        raise ValueError(f"Unknown SAM type {sam_type!r}: choose one of {', '.join(OFFICIAL)}.")
    if max_slices is not None and max_slices < 1:
        raise ValueError(f"--max-slices must be at least 1, not {max_slices}.")
    seconds: dict[str, float] = {}

    def timed(stage: str, work: Callable):
        log(f"{stage} ...")
        started = time.perf_counter()
        result = work()
        if device == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: count it in its own stage
        seconds[stage] = time.perf_counter() - started
        log(f"{stage}: {seconds[stage]:.1f} s")
        return result

    models = timed("load models", lambda: load_samba_models(resolve_bundle(bundle), device))
    case = timed("phantom", lambda: make_case(seed, lowres))
    if sam_type is not None:
        torch.manual_seed(0)
        models.sam = timed(f"build random {sam_type}", lambda: build_sam({"type": sam_type}).to(device).eval())
    # YOLO's own box per slice: batching is timed on a fixed set of boxes (propagation, the pipeline's
    # default, chooses each box from the previous slice's mask: one slice at a time by nature).
    prompt = "yolo-boxes" if models.yolo is not None else "roi"
    roi = truth_roi(case.labels) if prompt == "roi" else None
    boxes = timed("prompts", lambda: {
        view: limit_boxes(prompt_boxes(models, case.images, view, prompt, roi, device=device), max_slices)
        for view in views})
    slices = {view: len(view_boxes) for view, view_boxes in boxes.items()}
    log(f"Prompted slices per view ({prompt} boxes): {slices}; SAM calls: {sum(slices.values()) * len(MODALITIES)}")

    naive = timed("sam naive", lambda: sam_votes(case.images, models.sam, boxes, segment=naive_segment_stack))
    cache = EmbeddingCache()
    fast = timed("sam pipeline", lambda: sam_votes(case.images, models.sam, boxes, cache=cache))
    # A second run with the embeddings cached: what another ROI on the same volumes costs.
    timed("sam pipeline cached", lambda: sam_votes(case.images, models.sam, boxes, cache=cache))
    whole_case = tuple(views) == VIEWS and max_slices is None
    labels = None
    if whole_case and models.voting is not None and any(slices.values()):  # votes of a few slices are no case to fuse
        labels, _ = timed("fusion", lambda: fuse_votes(case.images, fast, models, multimask=False, device=device))

    per_vote = [_dice(naive[n, 0], fast[n, 0]) for n in range(naive.shape[0]) if naive[n, 0].any() or fast[n, 0].any()]
    stages = ("prompts", "fusion")
    report = {
        "bundle": str(bundle),
        "sam": f"random {sam_type}" if sam_type else "bundle",
        "device": device,
        "case": {"seed": seed, "lowres": lowres, "shape": list(case.labels.shape)},
        "prompt": prompt,
        "views": list(views),
        "slices": slices,
        "sam_calls": sum(slices.values()) * len(MODALITIES),
        "whole_case": whole_case,
        "seconds": seconds,
        "speedup": seconds["sam naive"] / seconds["sam pipeline"],
        "total_seconds": {
            "naive": seconds["sam naive"] + sum(seconds.get(s, 0.0) for s in stages),
            "pipeline": seconds["sam pipeline"] + sum(seconds.get(s, 0.0) for s in stages),
        },
        "agreement": {
            "dice": _dice(naive, fast),
            "min_dice_per_vote": min(per_vote, default=1.0),
            "voxels_equal": float((naive == fast).mean()),
            "tumour_voxels_naive": int(np.count_nonzero(naive)),
        },
    }
    if labels is not None:
        report["wt_dice_vs_truth"] = _dice(labels > 0, region_masks(case.labels)["WT"])
    return report


def format_report(report: dict) -> str:
    """The report as a few lines for the terminal."""
    seconds = report["seconds"]
    agreement = report["agreement"]
    lines = [
        (f"SAM {report['sam']} on {report['device']}, {report['sam_calls']} box-prompted slices "
         f"(slices per view {report['slices']}, {report['prompt']} boxes)"),
        "Time per stage: " + ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items()),
        (f"SAM: naive SamPredictor loop {seconds['sam naive']:.2f} s, pipeline {seconds['sam pipeline']:.2f} s "
         f"(x{report['speedup']:.1f}); with cached embeddings {seconds['sam pipeline cached']:.2f} s"),
        (f"Agreement naive vs pipeline: Dice {agreement['dice']:.4f} (lowest per vote volume "
         f"{agreement['min_dice_per_vote']:.4f}), voxels equal {agreement['voxels_equal']:.6f}"),
        (("Whole case (prompts + SAM + fusion)" if report["whole_case"] else "Selected slices (prompts + SAM)")
         + f": naive {report['total_seconds']['naive']:.1f} s, pipeline {report['total_seconds']['pipeline']:.1f} s"),
    ]
    if "wt_dice_vs_truth" in report:
        lines.append(f"Pipeline whole-tumour Dice against the phantom's truth: {report['wt_dice_vs_truth']:.3f}")
    return "\n".join(lines)
