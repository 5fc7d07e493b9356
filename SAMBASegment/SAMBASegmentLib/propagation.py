"""One 3D box (a drawn ROI) to good per-slice prompts, by propagation from the middle.

A radiologist draws one box around the whole tumour. Projected onto every slice it crosses, that
box is far too large near the tumour's ends, where the tumour is small, and SAM then segments
whatever fills it. Instead, as LiteMedSAM's own 3D inference does: segment the ROI's middle
slice with the ROI's box, then prompt each next slice (outwards, both ways) with the box of its
neighbour's mask grown by `margin` pixels and clipped to the ROI; stop where a slice's mask comes
back empty (the tumour has ended). A slice is encoded only when reached, through the same cache
as every other run, so a second ROI on the same volume encodes only slices not seen before.
"""

from __future__ import annotations

import numpy as np

from SAMBASegmentLib.prompts import Boxes, box_of_mask
from SAMBASegmentLib.sam_runner import EmbeddingCache, decode_boxes

MARGIN = 3  # pixels around the neighbour's mask: LiteMedSAM's own bbox_shift in its 3D inference


def clip_box(box: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """`box` (x0, y0, x1, y1) kept inside `limit`; a box that would vanish keeps one pixel."""
    x0, y0 = max(box[0], limit[0]), max(box[1], limit[1])
    x1, y1 = min(box[2], limit[2]), min(box[3], limit[3])
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], np.float32)


def propagate_stack(sam, slices_uint8: np.ndarray, roi_boxes: Boxes, cache: EmbeddingCache | None = None,
                    key=("stack",), multimask: bool = False, margin: int = MARGIN) -> tuple[np.ndarray, Boxes]:
    """Masks like sam_runner.segment_stack, (N, H, W) or (N, 3, H, W) bool, for the slices of
    `roi_boxes` (the ROI projected onto this view: consecutive slices, one box each), prompted by
    propagation; returns the masks and the boxes actually used."""
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

    used: Boxes = {}
    middle = indices[len(indices) // 2]
    used[middle] = np.asarray(roi_boxes[middle], np.float32)
    start = segment(middle, used[middle])
    for step in (1, -1):
        mask, index = start, middle + step
        while index in roi_boxes:
            box = box_of_mask(mask, margin)
            if box is None:
                break
            used[index] = clip_box(box, np.asarray(roi_boxes[index], np.float32))
            mask = segment(index, used[index])
            index += step
    return result, dict(sorted(used.items()))
