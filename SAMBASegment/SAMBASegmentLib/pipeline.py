"""The SAMBA pipeline on one case: prompts per slice, SAM per modality and view, fusion.

1. Prompts per view: YOLO's boxes on the FLAIR slices (reused for all four modalities, as the
   paper), only its main runs of overlapping boxes (localizer.main_runs), each run taken as an ROI
   (propagation.rois_of_runs) prompted from its most confident box out; or a user ROI (one 3D box),
   prompted from its middle slice out; each next slice is boxed from its neighbour's mask
   (propagation.py). Or boxes from a segmentation.
2. SAM on every slice that has a box, per modality and view: 12 binary vote volumes
   (SAMBA-mc: 12 votes for each of WT, TC, ET).
3. Fusion: the voting network on the 4 images + 12 votes; for SAMBA-mc, the majority of the
   votes per region.
4. The agreement map: per voxel, the fraction of the 12 whole-tumour votes that say tumour.
5. Optionally (core "t1ce"), the core re-outlined by SAM on T1CE around the enhancing tumour (core_outline.py).

Any non-empty set of the four contrasts can be given (contrasts.py): SAM votes on those present,
the votes of the others are filled in, and without T1CE only the whole tumour is produced
(enhancing tumour is defined by T1CE; the core cannot be told from edema without it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from SAMBACore.brats import MODALITIES, SNFH, only_whole_tumour
from SAMBACore.memory import freed_memory_kept
from SAMBACore.pieces import drop_small_cores, drop_small_pieces, largest_piece
from SAMBASegmentLib import localizer, propagation, voting
from SAMBASegmentLib.cascade_roi import (MARGIN as CASCADE_MARGIN, cascade_whole_tumour, join_where_short,
                                         rival_warning, roi_of_piece)
from SAMBASegmentLib.contrasts import (FLAIR_ALONE_BOX, WITHOUT_T1CE, contrasts_present, prompt_contrast, regions_of,
                                      usable_pairs, whole_tumour_only)
from SAMBASegmentLib.core_outline import CORE_METHODS, DEFAULT_CORE, outline_core
from SAMBASegmentLib.prompts import Boxes, boxes_from_mask
from SAMBASegmentLib.propagation import Rois, propagate_stack, rois_of_box, rois_of_runs
from SAMBASegmentLib.sam_runner import EmbeddingCache, segment_stack
from SAMBASegmentLib.samba_bundle import SambaModels
from SAMBASegmentLib.slices import VIEWS, from_view_slices, normalise_slices, prompted_slices, slice_count, view_slices

# yolo: YOLO's main runs, each an ROI prompted by propagation; yolo-boxes: YOLO's own top box on
# every slice (the paper's prompts, and this project's before the runs; kept to reproduce them);
# cascade: the box around the U-Net cascade's tumour (cascade_roi), prompted like a drawn ROI (roi): from
# its middle slice out, its outer slices as reach (propagation.rois_of_box); its tumour is then joined to SAM's
# outline on the slices where that falls short of it (cascade_roi.join_where_short).
PROMPTS = ("yolo", "yolo-boxes", "cascade", "roi", "mask")
PROPAGATED = ("yolo", "cascade", "roi")
# One box around one tumour (cascade, roi): pieces of tumour under a tenth of the largest are dropped.
# Propagation can leave a few voxels apart from the tumour at the box's end slices, each a false lesion
# in BraTS 2023's count (YOLO's runs have their tapering rule instead). 0.1 is the cascade's own
# min_piece_fraction, not tuned again: on the v1 tuning phantoms (21000-21009, cascade prompt) lesion-wise
# WT 0.590 -> 0.728, voxel Dice unchanged (docs/results.md).
ONE_BOX = ("cascade", "roi")
ONE_BOX_MIN_PIECE = 0.1
MODES = ("samba", "samba-mc")
ALL_VOTES = tuple((m, v) for m in MODALITIES for v in VIEWS)  # vote m * 3 + v: modality-major
# Which (modality, view) pairs SAM runs on; the votes not run are filled in (fill_missing_votes).
# "all" is the paper's 12. On a CPU LiteMedSAM's encoder costs about a second a slice, so "fast"
# runs FLAIR axially only (the whole tumour is defined on FLAIR; the voting net reads the sub-regions
# from the four images), and "balanced" adds FLAIR coronal and T1CE axial.
PRESETS = {"all": ALL_VOTES,
           "balanced": (("flair", "axial"), ("flair", "coronal"), ("t1ce", "axial")),
           "fast": (("flair", "axial"),)}


class Cancelled(Exception):
    """Raised by a progress callback to stop the run; nothing has been changed by then."""


@dataclass
class SambaResult:
    labels: np.ndarray  # (K, J, I) uint8 internal labels
    agreement: np.ndarray  # (K, J, I) float32 in [0, 1]
    boxes: dict[str, int]  # view -> number of slices prompted
    seconds: dict[str, float] = field(default_factory=dict)
    votes: np.ndarray | None = None  # (12, K, J, I) whole-tumour votes, when asked for (training)
    preset: str = "all"  # which votes SAM ran (PRESETS)
    contrasts: tuple[str, ...] = MODALITIES  # the contrasts given, and used
    regions: tuple[str, ...] = ("ET", "TC", "WT")  # what `labels` holds; ("WT",): labels 1 = whole tumour
    # what the user should know: WITHOUT_T1CE, rival_warning, FLAIR_ALONE_BOX
    warnings: list[str] = field(default_factory=list)

    @property
    def tumour_found(self) -> bool:
        return bool(self.labels.any())

    @property
    def whole_tumour_only(self) -> bool:
        """Made without T1CE: `labels` 1 is the whole tumour, no sub-regions (brats.only_whole_tumour)."""
        return only_whole_tumour(self.regions)


NO_LOCALIZER = "This bundle has no YOLO localizer: draw a box (ROI prompt) or use a segmentation."


def _shape(images: dict[str, np.ndarray]) -> tuple[int, ...]:
    return next(images[m] for m in MODALITIES if images.get(m) is not None).shape


def yolo_boxes(yolo, images: dict[str, np.ndarray], view: str, device: str = "cpu",
               scores: dict[int, float] | None = None) -> Boxes:
    """YOLO's box per slice of `view`, on the prompt contrast (the first present of FLAIR, T2, T1CE,
    T1); `scores`, when given, receives every box's confidence."""
    reference = images[prompt_contrast(contrasts_present(images))]
    return localizer.detect_boxes(yolo, normalise_slices(view_slices(reference, view)), device=device, scores=scores)


def yolo_rois(yolo, images: dict[str, np.ndarray], view: str, device: str = "cpu") -> Rois:
    """YOLO's main runs of boxes (localizer.main_runs, KEEP), each an ROI reaching propagation.REACH
    slices past its ends (propagation.rois_of_runs)."""
    scores: dict[int, float] = {}
    boxes = yolo_boxes(yolo, images, view, device, scores)
    runs = localizer.main_runs(boxes, scores, localizer.KEEP)
    return rois_of_runs(boxes, runs, scores, propagation.REACH, slice_count(_shape(images), view))


def prompt_boxes(models: SambaModels, images: dict[str, np.ndarray], view: str, prompt: str,
                 roi=None, mask: np.ndarray | None = None, device: str = "cpu") -> Boxes:
    if prompt in ("yolo", "yolo-boxes"):
        if models.yolo is None:
            raise ValueError(NO_LOCALIZER)
        if prompt == "yolo-boxes":
            return yolo_boxes(models.yolo, images, view, device)
        return yolo_rois(models.yolo, images, view, device)
    if prompt == "cascade":  # roi: the cascade's (run_samba), None where it found no tumour
        return rois_of_box(*roi, _shape(images), view, CASCADE_MARGIN) if roi is not None else {}
    if prompt == "roi":
        if roi is None:
            raise ValueError("The ROI prompt needs a box: place a markups ROI around the tumour (--roi on the command line).")
        return rois_of_box(*roi, _shape(images), view, propagation.REACH)
    if prompt == "mask":
        if mask is None or not mask.any():
            raise ValueError("The segmentation prompt needs a non-empty segmentation.")
        return boxes_from_mask(mask, view)
    raise ValueError(f"Unknown prompt source {prompt!r}: choose one of {', '.join(PROMPTS)}.")


PRESET_CHOICES = ("auto", *PRESETS)


def choose_preset(preset: str, sam, device: str, prompt: str = "cascade") -> str:
    """auto: every vote with a SAM whose encoder is cheap (the small phantom SAM's 16 x 16 embedding; its
    voting net learned from its 12 votes). For a 64 x 64-embedding encoder (LiteMedSAM, ViT): 'fast' on a
    CPU (about a second a slice); on a GPU 'balanced' with one box around the tumour (ONE_BOX prompts),
    'fast' with YOLO's per-slice prompts. Measured on the three real cases, litemedsam-samba
    (docs/results.md): with the 3D U-Net's box 'balanced' was better than 'fast' on each (and with a drawn
    box), 'all' worse than both (its T1 and T2 votes, where LiteMedSAM sees the tumour poorly, shrink the
    whole tumour); with YOLO's prompts 'balanced' was worse than 'fast'."""
    if preset not in PRESET_CHOICES:
        raise ValueError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESET_CHOICES)}.")
    if preset != "auto":
        return preset
    height, width = sam.prompt_encoder.image_embedding_size
    if height * width < 4096:
        return "all"
    return "balanced" if str(device).startswith("cuda") and prompt in ONE_BOX else "fast"


def fill_missing_votes(votes: np.ndarray, computed: tuple[tuple[str, str], ...]) -> np.ndarray:
    """Votes that were not run, filled in place from those that were, so the voting net sees 12: the
    same modality's majority over the views it has, else the majority of that view's other modalities,
    else of every computed vote."""
    index = {pair: i for i, pair in enumerate(ALL_VOTES)}
    done = [index[p] for p in computed]
    for m, v in ALL_VOTES:
        if (m, v) in computed:
            continue
        same_modality = [index[(m, w)] for w in VIEWS if (m, w) in computed]
        same_view = [index[(n, v)] for n in MODALITIES if (n, v) in computed]
        source = same_modality or same_view or done
        votes[index[(m, v)]] = votes[source].mean(axis=0) > 0.5 if len(source) > 1 else votes[source[0]]
    return votes


def sam_votes(images: dict[str, np.ndarray], sam, boxes: dict[str, Boxes], multimask: bool = False,
              cache: EmbeddingCache | None = None, volume_key: str = "case", segment=None,
              progress: Callable[[float, str], None] | None = None, propagate: bool = False,
              pairs: tuple[tuple[str, str], ...] = ALL_VOTES) -> np.ndarray:
    """SAM on every prompted slice, per modality and view: (12, 1 or 3, K, J, I) bool votes.

    Vote m * 3 + v is modality m in view v (MODALITIES x VIEWS); a view missing from `boxes` gets
    no votes. `segment(sam, slices, boxes, multimask)` replaces the batched runner (the benchmark
    passes SamPredictor's naive loop, so both see exactly the same slices and boxes). `propagate`:
    the boxes are ROIs' projections; each is prompted from its seed or middle out (propagation.py).
    `pairs`: the (modality, view) pairs SAM runs on (a preset); the other votes are filled in.
    """
    report = progress or (lambda fraction, message: None)
    shape = _shape(images)
    votes = np.zeros((len(MODALITIES) * len(VIEWS), 3 if multimask else 1) + shape, bool)
    for v, view in enumerate(VIEWS):
        view_boxes = boxes.get(view, {})
        for m, modality in enumerate(MODALITIES):
            if (modality, view) not in pairs:
                continue
            report((v + m / len(MODALITIES)) / len(VIEWS), f"{view}: SAM on {modality} ({len(view_boxes)} slices)")
            if not view_boxes:
                continue
            prompted = prompted_slices(images[modality], view, view_boxes)
            if propagate:
                masks, _ = propagate_stack(sam, prompted, view_boxes, cache, (volume_key, modality, view), multimask)
            elif segment is None:
                masks = segment_stack(sam, prompted, view_boxes, cache, (volume_key, modality, view), multimask=multimask)
            else:
                masks = segment(sam, prompted, view_boxes, multimask)
            masks = masks if multimask else masks[:, None]
            votes[m * len(VIEWS) + v] = np.stack([from_view_slices(masks[:, c], view) for c in range(masks.shape[1])])
    return fill_missing_votes(votes, tuple(pairs)) if set(pairs) != set(ALL_VOTES) else votes


# How far past the votes' bounding box the voting net looks (voxels): context for its convolutions.
# Beyond it no vote saw tumour, so the net is not asked; on a 240x240x155 case that is most of it.
FUSION_MARGIN = 24


def _labels_near_votes(net, inputs: np.ndarray, whole_votes: np.ndarray, device: str) -> np.ndarray:
    """The voting net's labels inside the votes' bounding box grown by FUSION_MARGIN; background outside."""
    labels = np.zeros(inputs.shape[1:], np.uint8)
    voted = np.argwhere(whole_votes.any(axis=0))
    if voted.size == 0:
        return labels
    low = np.maximum(voted.min(axis=0) - FUSION_MARGIN, 0)
    high = np.minimum(voted.max(axis=0) + FUSION_MARGIN + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    labels[box] = voting.predict_labels(net, np.ascontiguousarray(inputs[(slice(None),) + box]), device=device)
    return labels


def fuse_votes(images: dict[str, np.ndarray], votes: np.ndarray, models: SambaModels, multimask: bool,
               device: str = "cpu", pairs: tuple[tuple[str, str], ...] = ALL_VOTES,
               voxel_mm3: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, agreement) from the votes of sam_votes: the voting net (binary; its core pieces under
    pieces.MIN_CORE_MM3 dropped), or the majority per region (SAMBA-mc). The agreement is over the
    votes SAM really ran (`pairs`), none filled in."""
    whole_votes = votes[:, 0]
    agreement = whole_votes[[ALL_VOTES.index(p) for p in pairs]].mean(axis=0, dtype=np.float32)
    if whole_tumour_only(contrasts_present(images)):  # no T1CE: the votes' whole tumour, label 1
        labels = (agreement > 0.5).astype(np.uint8)
    elif multimask:
        labels = voting.regions_to_labels(votes.mean(axis=0) > 0.5)
    elif models.voting is None:  # votes only wanted (training the voting net): whole tumour as a stand-in
        labels = np.where(agreement > 0.5, SNFH, 0).astype(np.uint8)
    else:
        labels = _labels_near_votes(models.voting, voting.voting_inputs(images, whole_votes), whole_votes, device)
        if models.whole_tumour_from_votes:
            labels = voting.within_votes(labels, agreement > 0.5)
        labels = drop_small_cores(labels, voxel_mm3)
    return labels, agreement


@freed_memory_kept()  # LiteMedSAM on a CPU: a whole case 98 -> 75 s (SAMBACore/memory.py)
def run_samba(
    images: dict[str, np.ndarray],
    models: SambaModels,
    prompt: str = "cascade",
    mode: str = "samba",
    roi=None,
    mask: np.ndarray | None = None,
    cache: EmbeddingCache | None = None,
    volume_key: str = "case",
    device: str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    keep_votes: bool = False,
    preset: str = "auto",
    voxel_mm3: float = 1.0,
    locate: Callable | None = None,
    core: str = DEFAULT_CORE,
) -> SambaResult:
    """Segment one case. `roi` is ((k, j, i) min, (k, j, i) max) voxel corners, inclusive.

    `cache` keeps SAM's slice embeddings between runs on the same `volume_key`, so a second run
    with another ROI only encodes slices it has not seen. `progress(fraction, message)` may raise
    Cancelled. `preset`: which modalities and views SAM runs on (PRESETS; auto: choose_preset).
    `voxel_mm3`: the volume of one voxel, for the smallest tumour-core piece kept (pieces.drop_small_cores).
    `locate(images, device, progress)`: the cascade's tumour, a (K, J, I) bool mask (default
    cascade_roi.cascade_whole_tumour); the cascade prompt boxes its largest piece.
    `core`: t1ce (the default: SAM re-outlines it on T1CE around the enhancing tumour, core_outline.py;
    mode samba with T1CE only) or voting (the voting net's split).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
    if core not in CORE_METHODS:
        raise ValueError(f"Unknown core method {core!r}: choose one of {', '.join(CORE_METHODS)}.")
    if mode == "samba" and models.voting is None and not keep_votes:
        raise ValueError("This bundle has no voting network to split the tumour into sub-regions: "
                         + ("use mode samba-mc, or " if models.region_tokens else "use ")
                         + "a bundle with a voting network (slicer-samba train voting).")
    if mode == "samba-mc" and not models.region_tokens:
        which = "The SAM checkpoint you picked" if models.picked_sam else "This bundle's SAM"
        raise ValueError(f"{which} was not trained for SAMBA-mc: its extra mask tokens are not the tumour's "
                         "regions. Use mode samba, or a bundle whose SAM was trained with "
                         "`slicer-samba train sam DATA -o BUNDLE --decoder-only --mode samba-mc` (phantom-demo's was).")
    preset = choose_preset(preset, models.sam, device, prompt)
    present = contrasts_present(images)  # raises when none is given
    pairs = usable_pairs(PRESETS[preset], present)
    report = progress or (lambda fraction, message: None)
    multimask = mode == "samba-mc"
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    boxes_from = 0.0  # where the progress bar stands when the per-view boxes start
    warnings: list[str] = []
    piece = None  # the cascade prompt's tumour (kept apart from `mask`, the user's segmentation for prompt mask)
    if prompt == "cascade":
        report(0.0, "Finding the tumour in 3D (U-Net cascade)")
        tumour = (locate or cascade_whole_tumour)(images, device,
                                                  lambda fraction, message: report(0.05 * fraction, message))
        piece = largest_piece(tumour)
        rival = rival_warning(tumour, piece, voxel_mm3)
        if rival:
            warnings.append(rival)
        if present == ("flair",):  # with FLAIR alone this box missed tumours a drawn one found (measured)
            warnings.append(FLAIR_ALONE_BOX)
        roi = roi_of_piece(piece)
        boxes_from = 0.05
    boxes = {}
    for v, view in enumerate(VIEWS):
        report(boxes_from + v / len(VIEWS) * (0.1 - boxes_from), f"{view}: finding the tumour on each slice")
        wanted = any(w == view for _, w in pairs)  # a view no vote of the preset uses needs no boxes
        boxes[view] = prompt_boxes(models, images, view, prompt, roi, mask, device) if wanted else {}
    seconds["prompts"] = time.perf_counter() - started

    started = time.perf_counter()
    votes = sam_votes(images, models.sam, boxes, multimask, cache, volume_key,
                      progress=lambda fraction, message: report(0.1 + 0.75 * fraction, message),
                      propagate=prompt in PROPAGATED, pairs=pairs)
    if piece is not None:  # where SAM's outline fell short of the 3D U-Net's tumour
        votes[:, 0] = join_where_short(votes[:, 0], piece)
    seconds["sam"] = time.perf_counter() - started

    report(0.85, "Fusing the votes")
    started = time.perf_counter()
    counts = {view: len(view_boxes) for view, view_boxes in boxes.items()}
    if any(counts.values()):
        labels, agreement = fuse_votes(images, votes, models, multimask, device, pairs, voxel_mm3)
        if prompt in ONE_BOX:
            labels = drop_small_pieces(labels, ONE_BOX_MIN_PIECE)
    else:  # no slice had a prompt: nothing to fuse, and no tumour to report
        labels, agreement = np.zeros(votes.shape[2:], np.uint8), np.zeros(votes.shape[2:], np.float32)
    seconds["fusion"] = time.perf_counter() - started
    if core == "t1ce" and mode == "samba" and "t1ce" in present and labels.any():
        report(0.9, "Outlining the tumour core on T1CE")
        started = time.perf_counter()
        labels = drop_small_cores(outline_core(labels, images["t1ce"], models.sam, cache, volume_key), voxel_mm3)
        seconds["core"] = time.perf_counter() - started
    report(1.0, "Done" if labels.any() else "No tumour found")
    regions = regions_of(present)
    if only_whole_tumour(regions):  # what cannot be known without T1CE: said first, wherever warnings are shown
        warnings.insert(0, WITHOUT_T1CE)
    return SambaResult(labels, agreement, counts, seconds, votes[:, 0] if keep_votes else None, preset,
                       present, regions, warnings)
