"""BraTS 2023 lesion-wise Dice and HD95 of one region (numpy + scipy only).

Our own implementation of the definition the BraTS 2023 challenge scored with (the
rachitsaluja/BraTS-2023-Metrics code that the Synapse scoring ran; docs/lesionwise.md says
how it was checked against that code). For one binary region mask pair:

1. Truth lesions: the truth's 26-connected components, merged when they fall in one
   26-connected component of the truth dilated `dilation` times with the 18-connected
   (3x3x3 without corners) structure; a lesion is the truth voxels of one dilated component.
2. Each lesion is dilated alone (same structure and iterations); the prediction's
   26-connected components that touch that dilated lesion are its match (several may match
   one lesion, and one component may match several lesions). Dice and HD95 are taken between
   the lesion and the union of its matched components (whole components); a lesion with no
   match has Dice 0 and HD95 374 mm (as has any infinite HD95).
3. Predicted components that match no lesion are false positives: Dice 0, HD95 374 each.
4. Lesions of `min_volume` mm^3 or less (voxel count x voxel volume) are left out of the
   score; components matching them are not false positives either.
5. Lesion-wise Dice = sum of the kept lesions' Dice / (kept lesions + false positives);
   lesion-wise HD95 = (sum of their HD95 + 374 x false positives) / the same count. With
   nothing to count (no kept lesion, no false positive: e.g. both masks empty) the scores are
   Dice 1 and HD95 0; an empty truth with predicted components scores 0 and 374.

Defaults are the adult-glioma (BraTS-GLI, also SSA and PED) parameters: dilation 3, volume
threshold 50 (mm^3, i.e. voxels at BraTS's 1 mm). HD95 is this project's surface-voxel
HD95 (metrics.hausdorff_distance, as the voxel-wise column), not the official code's
area-weighted surfel one: a lesion's HD95 can differ from the official value by a few mm (3.9 mm
at most on the cases checked), where a few percent of a surface lies far away.

Arrays are in numpy order ((k, j, i)) and `spacing` in that same order, as in metrics.py.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .brats import REGIONS, region_masks
from .metrics import Spacing, hausdorff_distance

DILATION = 3  # BraTS-GLI / SSA / PED; MEN and MET used 1
MIN_VOLUME_MM3 = 50.0  # BraTS-GLI / SSA / PED / MEN; MET used 2
HD95_PENALTY = 374.0  # mm, for a missed lesion, a false positive, or an infinite HD95

LESIONWISE_METRICS = ("lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp")


def _sampling(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    return tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))


def _grown_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def lesionwise_scores(pred, truth, spacing: Spacing = None, dilation: int = DILATION,
                      min_volume: float = MIN_VOLUME_MM3) -> dict[str, float]:
    """Lesion-wise Dice and HD95 (mm) of one binary mask pair, with the counts behind them.

    Returns lesion_dice, lesion_hd95, lesion_tp (kept truth lesions with a match), lesion_fn
    (kept lesions without one) and lesion_fp (unmatched predicted components). See the module
    docstring for the definition.
    """
    pred, truth = np.asarray(pred).astype(bool, copy=False), np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}.")
    sampling = _sampling(spacing, pred.ndim)
    voxel_volume = float(np.prod(sampling))
    grow = ndimage.generate_binary_structure(pred.ndim, max(pred.ndim - 1, 1))  # 18-connected in 3D
    full = ndimage.generate_binary_structure(pred.ndim, pred.ndim)  # 26-connected in 3D

    union = pred | truth
    if not union.any():
        return _score([], 0, 0)
    # Work in the box of both masks grown by the dilation: nothing outside it is touched, and
    # clipping at the array's edge is what dilating the whole array does there too.
    box = _grown_box(ndimage.find_objects(union.view(np.uint8))[0], dilation, pred.shape)
    pred, truth = pred[box], truth[box]

    pred_labels, n_pred = ndimage.label(pred, structure=full)
    dilated_labels, _ = ndimage.label(ndimage.binary_dilation(truth, grow, iterations=dilation)
                                      if dilation > 0 else truth, structure=full)
    # Every truth voxel lies in one dilated component: that component's number is its lesion.
    lesions = np.where(truth, dilated_labels, 0)

    matched: set[int] = set()
    kept = []  # (dice, hd95) of each lesion over the volume threshold
    tp = 0
    for number, lesion_box in enumerate(ndimage.find_objects(lesions), start=1):
        if lesion_box is None:
            continue
        near = _grown_box(lesion_box, dilation, lesions.shape)
        lesion_near = lesions[near] == number
        roi = ndimage.binary_dilation(lesion_near, grow, iterations=dilation) if dilation > 0 else lesion_near
        touching = np.unique(pred_labels[near][roi])
        touching = touching[touching != 0]
        matched.update(touching.tolist())
        lesion = lesions == number
        volume = int(np.count_nonzero(lesion)) * voxel_volume
        if volume <= min_volume:
            continue
        if touching.size == 0:
            kept.append((0.0, HD95_PENALTY))
            continue
        tp += 1
        found = np.isin(pred_labels, touching)
        overlap = int(np.count_nonzero(found & lesion))
        dice = 2.0 * overlap / (int(np.count_nonzero(found)) + int(np.count_nonzero(lesion)))
        hd95 = hausdorff_distance(found, lesion, sampling)
        kept.append((dice, hd95 if np.isfinite(hd95) else HD95_PENALTY))
    return _score(kept, tp, n_pred - len(matched))


def _score(kept: list[tuple[float, float]], tp: int, fp: int) -> dict[str, float]:
    count = len(kept) + fp
    if count == 0:
        dice, hd95 = 1.0, 0.0
    else:
        dice = sum(d for d, _ in kept) / count
        hd95 = (sum(h for _, h in kept) + HD95_PENALTY * fp) / count
    return {"lesion_dice": float(dice), "lesion_hd95": float(hd95), "lesion_tp": tp,
            "lesion_fn": len(kept) - tp, "lesion_fp": fp}


def region_lesionwise(pred_labels, truth_labels, spacing: Spacing = None, dilation: int = DILATION,
                      min_volume: float = MIN_VOLUME_MM3) -> dict[str, dict[str, float]]:
    """lesionwise_scores for the ET, TC and WT regions of two internal label arrays (1 NETC, 2 SNFH, 3 ET)."""
    pred, truth = region_masks(np.asarray(pred_labels)), region_masks(np.asarray(truth_labels))
    return {region: lesionwise_scores(pred[region], truth[region], spacing, dilation, min_volume)
            for region in REGIONS}
