"""Segmentation metrics for BraTS regions, in one place (numpy + scipy only).

Conventions (those of the BraTS challenge), for one binary mask pair:

* both empty: dice 1, jaccard 1, hd95 0, sensitivity 1 (nothing to find),
  specificity and accuracy as usual (1 here, since nothing was wrongly flagged);
* exactly one empty: dice 0, jaccard 0, hd95 inf (no surface to measure to);
* sensitivity = TP / (TP + FN), 1 when the truth is empty;
  specificity = TN / (TN + FP), 1 when the truth fills the whole array;
  accuracy = (TP + TN) / N.

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``:
surfaces are the mask voxels that 6-connected (face) binary erosion removes
(MONAI's ``get_mask_edges`` without sub-voxel areas); for every surface voxel of
one mask the Euclidean distance, in mm, to the nearest surface voxel of the other
is taken; the result is the larger of the two directed 95th percentiles (linear
interpolation, as ``torch.quantile``). Unlike MONAI, both-empty gives 0, not NaN.

Arrays are in numpy order ((k, j, i) for 3D volumes) and ``spacing`` is given in
that same axis order, i.e. reversed from SimpleITK's GetSpacing().
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .brats import REGIONS, region_masks

Spacing = Sequence[float] | float | None  # per axis in numpy order; a scalar means isotropic

METRICS = ("dice", "jaccard", "sensitivity", "specificity", "accuracy", "hd95")


def _as_masks(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred).astype(bool, copy=False), np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}.")
    return pred, truth


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,))  # a scalar means isotropic
    return tuple(float(v) for v in values)


def _ratio(num: int, den: int, if_undefined: float) -> float:
    return num / den if den else if_undefined


def hausdorff_distance(pred, truth, spacing: Spacing = None, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm) between the surfaces of two masks.

    percentile=95 gives HD95, percentile=100 the classic (maximum) Hausdorff distance
    of the surfaces. Empty-mask conventions as in the module docstring.
    """
    pred, truth = _as_masks(pred, truth)
    sampling = _spacing(spacing, pred.ndim)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.inf

    # Only the bounding box of the union matters, and it is usually tiny compared to a
    # 240x240x155 volume. No margin is needed: binary_erosion treats outside the array as
    # background (border_value=0), which is exactly what lies outside the box, and the
    # exact EDT inside the box sees every surface voxel of both masks.
    box = ndimage.find_objects((pred | truth).view(np.uint8))[0]
    pred, truth = pred[box], truth[box]
    # Surface = voxels removed by erosion with the default face-connected structure (MONAI's edges).
    edge_pred = pred & ~ndimage.binary_erosion(pred)
    edge_truth = truth & ~ndimage.binary_erosion(truth)
    # EDT of the complement gives, at each voxel, the distance to the nearest surface voxel.
    pred_to_truth = ndimage.distance_transform_edt(~edge_truth, sampling=sampling)[edge_pred]
    truth_to_pred = ndimage.distance_transform_edt(~edge_pred, sampling=sampling)[edge_truth]
    return float(max(np.percentile(pred_to_truth, percentile), np.percentile(truth_to_pred, percentile)))


def binary_metrics(pred, truth, spacing: Spacing = None) -> dict[str, float]:
    """Dice, Jaccard, sensitivity, specificity, accuracy and HD95 (mm) of one mask pair.

    pred, truth: boolean or 0/1 arrays of the same shape (2D or 3D, numpy axis order);
    spacing: voxel size per axis in that same order (default 1.0). See the module
    docstring for the empty-mask conventions.
    """
    pred, truth = _as_masks(pred, truth)
    # Python ints: counts of large volumes must not overflow or lose precision.
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = pred.size - tp - fp - fn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "jaccard": _ratio(tp, tp + fp + fn, 1.0),
        "sensitivity": _ratio(tp, tp + fn, 1.0),
        "specificity": _ratio(tn, tn + fp, 1.0),
        "accuracy": _ratio(tp + tn, pred.size, 1.0),
        "hd95": hausdorff_distance(pred, truth, spacing, 95.0),
    }


def region_metrics(pred_labels, truth_labels, spacing: Spacing = None) -> dict[str, dict[str, float]]:
    """binary_metrics for the ET, TC and WT regions of two internal label arrays (1 NETC, 2 SNFH, 3 ET)."""
    pred, truth = region_masks(np.asarray(pred_labels)), region_masks(np.asarray(truth_labels))
    return {region: binary_metrics(pred[region], truth[region], spacing) for region in REGIONS}


def mean_over_cases(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average every metric of every region over cases, ignoring NaN.

    An inf (a region missing in prediction or truth) is kept, so the mean HD95 of
    that region is inf; a metric that is NaN in every case averages to NaN.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for case in per_case:
        for region, metrics in case.items():
            for name, value in metrics.items():
                values.setdefault(region, {}).setdefault(name, []).append(float(value))
    return {
        region: {name: _nanmean(vals) for name, vals in metrics.items()} for region, metrics in values.items()
    }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def volumes_ml(labels, spacing: Spacing = None) -> dict[str, float]:
    """Sub-region volumes in millilitres: NETC, SNFH, ET and the derived TC, WT."""
    from .brats import ET, NETC, SNFH

    labels = np.asarray(labels)
    voxel_ml = float(np.prod(_spacing(spacing, labels.ndim))) / 1000.0
    counts = {name: int(np.count_nonzero(labels == value)) for name, value in (("NETC", NETC), ("SNFH", SNFH), ("ET", ET))}
    counts["TC"] = counts["NETC"] + counts["ET"]
    counts["WT"] = counts["TC"] + counts["SNFH"]
    return {name: count * voxel_ml for name, count in counts.items()}
