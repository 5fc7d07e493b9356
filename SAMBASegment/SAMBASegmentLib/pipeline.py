"""The SAMBA pipeline on one case: prompts per slice, SAM per modality and view, fusion.

1. Prompts per view: the YOLO box on each FLAIR slice (reused for all four modalities, as the
   paper), or a user ROI projected onto every slice it crosses, or boxes from a segmentation.
2. SAM on every slice that has a box, per modality and view: 12 binary vote volumes
   (SAMBA-mc: 12 votes for each of WT, TC, ET).
3. Fusion: the voting network on the 4 images + 12 votes; for SAMBA-mc, the majority of the
   votes per region.
4. The agreement map: per voxel, the fraction of the 12 whole-tumour votes that say tumour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from SAMBACore.brats import MODALITIES, SNFH
from SAMBASegmentLib import localizer, voting
from SAMBASegmentLib.prompts import Boxes, boxes_from_mask, boxes_from_roi
from SAMBASegmentLib.sam_runner import EmbeddingCache, segment_stack
from SAMBASegmentLib.samba_bundle import SambaModels
from SAMBASegmentLib.slices import VIEWS, from_view_slices, normalise_slices, view_slices

PROMPTS = ("yolo", "roi", "mask")
MODES = ("samba", "samba-mc")


class Cancelled(Exception):
    """Raised by a progress callback to stop the run; nothing has been changed by then."""


@dataclass
class SambaResult:
    labels: np.ndarray  # (K, J, I) uint8 internal labels
    agreement: np.ndarray  # (K, J, I) float32 in [0, 1]
    boxes: dict[str, int]  # view -> number of slices prompted
    seconds: dict[str, float] = field(default_factory=dict)
    votes: np.ndarray | None = None  # (12, K, J, I) whole-tumour votes, when asked for (training)

    @property
    def tumour_found(self) -> bool:
        return bool(self.labels.any())


def prompt_boxes(models: SambaModels, images: dict[str, np.ndarray], view: str, prompt: str,
                 roi=None, mask: np.ndarray | None = None, device: str = "cpu") -> Boxes:
    if prompt == "yolo":
        if models.yolo is None:
            raise ValueError("This bundle has no YOLO localizer: draw a box (ROI prompt) or use a segmentation.")
        return localizer.detect_boxes(models.yolo, normalise_slices(view_slices(images["flair"], view)), device=device)
    if prompt == "roi":
        if roi is None:
            raise ValueError("The ROI prompt needs a box: place a markups ROI around the tumour (--roi on the command line).")
        return boxes_from_roi(roi[0], roi[1], images["flair"].shape, view)
    if prompt == "mask":
        if mask is None or not mask.any():
            raise ValueError("The segmentation prompt needs a non-empty segmentation.")
        return boxes_from_mask(mask, view)
    raise ValueError(f"Unknown prompt source {prompt!r}: choose one of {', '.join(PROMPTS)}.")


def run_samba(
    images: dict[str, np.ndarray],
    models: SambaModels,
    prompt: str = "yolo",
    mode: str = "samba",
    roi=None,
    mask: np.ndarray | None = None,
    cache: EmbeddingCache | None = None,
    volume_key: str = "case",
    device: str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    keep_votes: bool = False,
) -> SambaResult:
    """Segment one case. `roi` is ((k, j, i) min, (k, j, i) max) voxel corners, inclusive.

    `cache` keeps SAM's slice embeddings between runs on the same `volume_key`, so a second run
    with another ROI only encodes slices it has not seen. `progress(fraction, message)` may raise
    Cancelled.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
    if mode == "samba" and models.voting is None and not keep_votes:
        raise ValueError("This bundle has no voting network to split the tumour into sub-regions: "
                         "use mode samba-mc, or a bundle with a voting network.")
    report = progress or (lambda fraction, message: None)
    multimask = mode == "samba-mc"
    seconds: dict[str, float] = {"prompts": 0.0, "sam": 0.0}
    shape = images["flair"].shape
    votes = np.zeros((len(MODALITIES) * len(VIEWS), 3 if multimask else 1) + shape, bool)
    counts = {}
    for v, view in enumerate(VIEWS):
        report(v / len(VIEWS) * 0.8, f"{view}: finding the tumour on each slice")
        started = time.perf_counter()
        boxes = prompt_boxes(models, images, view, prompt, roi, mask, device)
        seconds["prompts"] += time.perf_counter() - started
        counts[view] = len(boxes)
        for m, modality in enumerate(MODALITIES):
            report((v + (m + 1) / (len(MODALITIES) + 1)) / len(VIEWS) * 0.8, f"{view}: SAM on {modality} ({len(boxes)} slices)")
            started = time.perf_counter()
            stack = view_slices(images[modality], view)
            prompted = np.zeros(stack.shape[:1] + stack.shape[1:] + (3,), np.uint8)
            if boxes:
                indices = sorted(boxes)
                prompted[indices] = normalise_slices(stack[indices])
            masks = segment_stack(models.sam, prompted, boxes, cache, (volume_key, modality, view), multimask=multimask)
            masks = masks if multimask else masks[:, None]
            votes[m * len(VIEWS) + v] = np.stack([from_view_slices(masks[:, c], view) for c in range(masks.shape[1])])
            seconds["sam"] += time.perf_counter() - started

    report(0.85, "Fusing the votes")
    started = time.perf_counter()
    whole_votes = votes[:, 0]
    agreement = whole_votes.mean(axis=0, dtype=np.float32)
    if not any(counts.values()):  # no slice had a prompt: nothing to fuse, and no tumour to report
        labels = np.zeros(shape, np.uint8)
    elif multimask:
        labels = voting.regions_to_labels(votes.mean(axis=0) > 0.5)
    elif models.voting is None:  # votes only wanted (training the voting net): whole tumour as a stand-in
        labels = np.where(agreement > 0.5, SNFH, 0).astype(np.uint8)
    else:
        labels = voting.predict_labels(models.voting, voting.voting_inputs(images, whole_votes), device=device)
    seconds["fusion"] = time.perf_counter() - started
    report(1.0, "Done" if labels.any() else "No tumour found")
    return SambaResult(labels, agreement, counts, seconds, whole_votes if keep_votes else None)
