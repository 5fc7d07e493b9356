"""Scoring a segmenter on labelled BraTS cases: the loop SAMBASegment's and R2UNetSegment's
evaluations share (read each case, segment it, time it, score each region, average). Each region
gets the voxel-wise metrics (metrics.region_metrics) and the BraTS 2023 lesion-wise ones
(lesionwise.region_lesionwise: lesion_dice, lesion_hd95 and the lesion counts behind them)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from SAMBACore import lesionwise, metrics
from SAMBACore.brats import find_training_cases, read_case
from SAMBACore.inputs import InputError

# segment(images by modality, truth labels, voxel size in mm in (k, j, i) order) -> (labels, notes for the
# report); the truth is there for prompts drawn from it (an ROI standing in for a radiologist's box). A note
# "regions" (a tuple) names the regions the labels hold, when not all three (no T1CE: WT only).
SegmentCase = Callable[[dict, np.ndarray, tuple], tuple[np.ndarray, dict]]


def score_cases(data_dir, segment: SegmentCase, log: Callable[[str], None] = print,
                on_case: Callable[[dict, dict, np.ndarray, np.ndarray], None] | None = None,
                allow_missing: bool = False, contrasts=None) -> dict:
    """Every case of data_dir with its seg file segmented and scored (voxel- and lesion-wise), with
    the mean per region over cases (over the cases that produced it) and the mean seconds of `segment`
    per case. `on_case(files, images, labels, truth)` is called after each case (a preview picture of it,
    for example). allow_missing: cases with any of the four contrasts; `contrasts`: use only these
    (the others are left out, to measure what a case without them would get). A case whose files cannot
    be read (truncated, corrupt) is skipped with the reason, and named in "unreadable"."""
    cases, skipped = find_training_cases(data_dir, allow_missing=allow_missing or contrasts is not None)
    per_case, unreadable = [], []
    for index, files in enumerate(cases):
        if contrasts is not None:
            files = {k: v for k, v in files.items() if k in contrasts or k == "seg"}
            if len(files) == 1:
                skipped.append(f"{files['seg'].parent.name}: has none of {', '.join(contrasts)}")
                continue
        try:
            images, truth, spacing = read_case(files)
        except InputError as error:  # a truncated or corrupt file: score the others, say which was left out
            unreadable.append(files["seg"].parent.name)
            skipped.append(f"{unreadable[-1]}: {error}")
            log(f"[{index + 1}/{len(cases)}] Skipped {skipped[-1]}")
            continue
        started = time.perf_counter()
        labels, notes = segment(images, truth, spacing)
        seconds = time.perf_counter() - started
        regions = notes.pop("regions", None)
        scores = metrics.region_metrics(labels, truth, spacing)
        for region, values in lesionwise.region_lesionwise(labels, truth, spacing).items():
            scores[region].update(values)
        if regions is not None:  # not produced (no T1CE): not scored, rather than scored as missed
            scores = {r: v for r, v in scores.items() if r in regions}
        per_case.append({"case": files["seg"].parent.name, **notes, "seconds": seconds, "metrics": scores})
        log(f"[{index + 1}/{len(cases)}] {per_case[-1]['case']}"
            + "".join(f" ({value})" for value in notes.values()) + ": "
            + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items()) + "; lesion-wise "
            + ", ".join(f"{r} {v['lesion_dice']:.3f}" for r, v in scores.items()) + f" ({seconds:.1f} s)")
        if on_case:
            on_case(files, images, labels, truth)
    return {
        "cases": len(per_case),
        "skipped": skipped,
        "unreadable": unreadable,
        "mean": metrics.mean_over_cases([c["metrics"] for c in per_case]),
        "mean_seconds": float(np.mean([c["seconds"] for c in per_case])) if per_case else float("nan"),
        "per_case": per_case,
    }


def format_means(report: dict) -> str:
    """The report's mean per region, one line: Dice and HD95, voxel-wise and lesion-wise, and the time."""
    return (", ".join(f"{r} Dice {v['dice']:.3f} HD95 {v['hd95']:.1f} mm (lesion-wise {v['lesion_dice']:.3f} / "
                      f"{v['lesion_hd95']:.1f} mm)" for r, v in report["mean"].items())
            + f"; {report['mean_seconds']:.0f} s per case")


def report_end(report: dict, as_json: bool) -> int:
    """The end of an evaluate command: the report as one JSON line if asked, and exit status 2 (with the
    cases named on stderr) when some case could not be read."""
    import json
    import sys

    if as_json:
        print(json.dumps(report))
    if report["unreadable"]:
        print(f"{len(report['unreadable'])} case(s) could not be read and were not scored "
              f"({', '.join(report['unreadable'])}): see the messages above.", file=sys.stderr)
        return 2
    return 0
