"""How good a localizer's boxes are on labelled cases, without running SAM.

SAMBA's whole tumour with YOLO prompts can be no better than its boxes: a tumour slice without a
box is lost, a box on a tumour-free slice gives SAM something to segment (a false lesion). This
scores the boxes per slice against the true whole tumour's: seconds a case, where a Dice through
LiteMedSAM costs minutes, so localizers and box filters can be compared on many cases.
"""

from __future__ import annotations

import numpy as np

from SAMBASegmentLib.prompts import Boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def score_boxes(found: Boxes, truth: Boxes) -> dict:
    """Per-slice agreement of `found` boxes with the `truth` boxes of one view.

    recall: fraction of tumour slices given a box; false_slices: boxes on tumour-free slices, as a
    fraction of the tumour slices (0 is none; 0.5: half as many false boxes as tumour slices);
    iou: mean IoU over the tumour slices that got a box; slice_dice: the Dice of the slices given a
    box against the tumour slices (2 hits / (boxes + tumour slices)), one number for a filter that
    trades recall for fewer false boxes.
    """
    hits = [n for n in truth if n in found]
    false = [n for n in found if n not in truth]
    return {
        "tumour_slices": len(truth),
        "recall": len(hits) / len(truth) if truth else float(not found),
        "false_slices": len(false) / max(len(truth), 1),
        "iou": float(np.mean([box_iou(found[n], truth[n]) for n in hits])) if hits else 0.0,
        "slice_dice": 2 * len(hits) / (len(found) + len(truth)) if found or truth else 1.0,
    }
