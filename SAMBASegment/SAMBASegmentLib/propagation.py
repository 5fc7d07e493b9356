"""One 3D box (a drawn ROI, or a run of YOLO's boxes) to good per-slice prompts, by propagation.

A radiologist draws one box around the whole tumour. Projected onto every slice it crosses, that
box is far too large near the tumour's ends, where the tumour is small, and SAM then segments
whatever fills it. Instead, as LiteMedSAM's own 3D inference does: segment the ROI's middle
slice with the ROI's box, then prompt each next slice (outwards, both ways) with the box of its
neighbour's mask grown by `margin` pixels and clipped to the ROI; stop where a slice's mask comes
back empty (the tumour has ended). A slice is encoded only when reached, through the same cache
as every other run, so a second ROI on the same volume encodes only slices not seen before.

The boxes may hold several ROIs (YOLO's runs, rois_of_runs): each run is propagated from its own
seed, YOLO's most confident box in it, as the run's union box can be far larger than the tumour when
one of its boxes strays (a drawn ROI has no seeds and starts from its middle slice). Each ROI also
reaches a few slices past the run's ends, for the tumour's ends YOLO missed; there a mask is kept
only while it is smaller than its neighbour's (a tumour tapers towards its end). One box around the
whole tumour (a drawn ROI, or the 3D U-Net's) has such a reach too: its outer REACH slices at each end,
where a box drawn with room to spare holds no tumour but SAM still outlines something (rois_of_box).
"""

from __future__ import annotations

import numpy as np

from SAMBASegmentLib.prompts import Boxes, box_of_mask, boxes_from_roi
from SAMBASegmentLib.slices import view_axis
from SAMBASegmentLib.sam_runner import EmbeddingCache, decode_boxes

MARGIN = 3  # pixels around the neighbour's mask: LiteMedSAM's own bbox_shift in its 3D inference
# Slices past a YOLO run's ends that propagation may go on into while SAM still finds tumour: YOLO
# misses a tumour's thin ends (and whole stretches on scans unlike its training data). Also the outer
# slices of a drawn box, whose margin is unknown. 5: the margin of the drawn-ROI stand-in
# (evaluation.ROI_MARGIN), set before it was measured (docs/results.md).
REACH = 5


def clip_box(box: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """`box` (x0, y0, x1, y1) kept inside `limit`; a box that would vanish keeps one pixel."""
    x0, y0 = max(box[0], limit[0]), max(box[1], limit[1])
    x1, y1 = min(box[2], limit[2]), min(box[3], limit[3])
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], np.float32)


def consecutive_runs(indices: list[int]) -> list[list[int]]:
    """Sorted slice indices split where a slice is skipped: [3, 4, 5, 9, 10] -> [[3, 4, 5], [9, 10]]."""
    runs: list[list[int]] = []
    for n in sorted(indices):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


class Rois(dict):
    """ROIs projected onto a view's slices (slice -> box, like Boxes), with `seeds`: for each run, the
    slice to start propagating from and the box to prompt it with; and `spans`: the slices from each
    run's first box to its last (the rest of an ROI is its reach)."""

    def __init__(self, boxes: Boxes, seeds: Boxes | None = None, spans: set[int] | None = None):
        super().__init__(boxes)
        self.seeds: Boxes = dict(seeds or {})
        self.spans: set[int] = set(spans) if spans is not None else set(boxes)


def rois_of_box(ijk_min, ijk_max, shape, view: str, reach: int) -> Rois:
    """One 3D box (inclusive (k, j, i) corners) projected onto the slices of `view` it crosses, its
    outer `reach` slices at each end along the view's axis as reach (Rois.spans holds the rest)."""
    boxes = boxes_from_roi(ijk_min, ijk_max, shape, view)
    axis = view_axis(view)
    low, high = sorted((int(ijk_min[axis]), int(ijk_max[axis])))
    return Rois(boxes, spans={n for n in boxes if low + reach <= n <= high - reach})


def rois_of_runs(boxes: Boxes, runs: list[list[int]], scores: dict[int, float] | None = None,
                 reach: int = 0, slices: int | None = None) -> Rois:
    """Each run of boxes (localizer.box_runs) as one ROI projected onto its slices: every slice from
    its first to its last, and `reach` slices beyond each end (of the `slices` there are), gets the
    union of the run's boxes (a slice YOLO skipped inside is filled). Each run's seed is its most
    confident box (`scores`), the middlemost of equals."""
    rois: Boxes = {}
    seeds: Boxes = {}
    spans: set[int] = set()
    last = slices - 1 if slices is not None else max((max(r) for r in runs), default=0) + reach
    for run in runs:
        stacked = np.stack([boxes[n] for n in run])
        union = np.concatenate([stacked[:, :2].min(axis=0), stacked[:, 2:].max(axis=0)]).astype(np.float32)
        spans.update(range(min(run), max(run) + 1))
        for n in range(max(min(run) - reach, 0), min(max(run) + reach, last) + 1):
            if n in rois:  # two runs over the same slices: one box around both
                union = np.concatenate([np.minimum(rois[n][:2], union[:2]), np.maximum(rois[n][2:], union[2:])])
            rois[n] = union
        middle = sorted(run)[len(run) // 2]
        seed = max(run, key=lambda n: ((scores or {}).get(n, 0.0), -abs(n - middle)))  # ties: the middlemost
        seeds[seed] = np.asarray(boxes[seed], np.float32)
    return Rois(dict(sorted(rois.items())), seeds, spans)


def propagate_stack(sam, slices_uint8: np.ndarray, roi_boxes: Boxes, cache: EmbeddingCache | None = None,
                    key=("stack",), multimask: bool = False, margin: int = MARGIN) -> tuple[np.ndarray, Boxes]:
    """Masks like sam_runner.segment_stack, (N, H, W) or (N, 3, H, W) bool, for the slices of
    `roi_boxes` (one or more ROIs projected onto this view: runs of consecutive slices, one box
    each; a Rois' seeds say where each run starts, else at its middle), prompted by propagation;
    returns the masks and the boxes actually used."""
    n, height, width = slices_uint8.shape[:3]
    result = np.zeros((n, 3, height, width) if multimask else (n, height, width), bool)
    indices = sorted(int(i) for i in roi_boxes)
    if not indices:
        return result, {}
    cache = cache if cache is not None else EmbeddingCache()

    def segment(index: int, box: np.ndarray) -> np.ndarray:
        # Encoded when reached: slices of the ROI beyond the tumour's ends are never encoded.
        embedding = cache.embeddings(sam, slices_uint8, [index], key)
        masks, _ = decode_boxes(sam, embedding, box[None], (height, width), multimask)
        result[index] = masks[0].cpu().numpy() if multimask else masks[0, 0].cpu().numpy()
        return result[index][0] if multimask else result[index]  # the whole tumour leads the way

    seeds = roi_boxes.seeds if isinstance(roi_boxes, Rois) else {}
    spans = roi_boxes.spans if isinstance(roi_boxes, Rois) else set(indices)
    used: Boxes = {}
    for run in consecutive_runs(indices):  # ROIs whose reaches meet are one run, with a seed each
        for first in [n for n in run if n in seeds] or [run[len(run) // 2]]:
            if first in used:  # another seed's propagation got here first
                continue
            limit = np.asarray(roi_boxes[first], np.float32)
            used[first] = clip_box(seeds[first], limit) if first in seeds else limit
            start = segment(first, used[first])
            for step in (1, -1):
                mask, index = start, first + step
                while run[0] <= index <= run[-1] and index not in used:
                    box = box_of_mask(mask, margin)
                    if box is None:
                        break
                    used[index] = clip_box(box, np.asarray(roi_boxes[index], np.float32))
                    previous, mask = mask.sum(), segment(index, used[index])
                    if index not in spans and mask.sum() >= previous:
                        # In an ROI's reach, past YOLO's last box, a tumour tapers towards its end: a
                        # mask as large as its neighbour's is SAM filling the box, not more tumour.
                        result[index] = False
                        break
                    index += step
    return result, dict(sorted(used.items()))
