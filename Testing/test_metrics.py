"""SAMBACore.metrics checked against independent implementations (SimpleITK, MONAI, hand counts)."""

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SAMBACore.brats import ET, NETC, SNFH
from SAMBACore.metrics import binary_metrics, hausdorff_distance, mean_over_cases, region_metrics

# (seed, shape, spacing in numpy axis order): 2D and 3D, anisotropic.
CASES = [
    (0, (80, 90), (0.7, 1.3)),
    (1, (80, 90), (1.0, 1.0)),
    (2, (36, 44, 40), (2.5, 0.9, 1.2)),
    (3, (36, 44, 40), (1.0, 0.5, 0.5)),
    (4, (30, 40, 34), (3.0, 1.0, 1.0)),
]


def random_blobs(seed, shape):
    """Two overlapping, irregular, multi-component masks (smoothed noise, thresholded)."""
    rng = np.random.default_rng(seed)

    def blob():
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
        return field > 0.6 * field.std()

    return blob(), blob()


def to_sitk(mask, spacing):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing)])  # SimpleITK spacing is (i, j, k)
    return image


def monai_hd(pred, truth, spacing, percentile):
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    as_batch = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks
        value = monai_metrics.compute_hausdorff_distance(
            as_batch(pred), as_batch(truth), include_background=True, percentile=percentile, spacing=list(spacing)
        )
    return float(value.item())


@pytest.mark.parametrize("seed, shape, spacing", CASES)
def test_overlap_matches_simpleitk(seed, shape, spacing):
    pred, truth = random_blobs(seed, shape)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(to_sitk(pred, spacing), to_sitk(truth, spacing))  # source = pred, target = truth
    m = binary_metrics(pred, truth, spacing)
    assert m["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
    assert m["jaccard"] == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-12)
    # SimpleITK 2.5: false-negative error FN/(TP+FN), false-positive error FP/(FP+TN).
    assert m["sensitivity"] == pytest.approx(1 - overlap.GetFalseNegativeError(), abs=1e-12)
    assert m["specificity"] == pytest.approx(1 - overlap.GetFalsePositiveError(), abs=1e-12)
    # False discovery rate FP/(TP+FP) is 1 - precision, which follows from Dice and sensitivity.
    precision = m["dice"] * m["sensitivity"] / (2 * m["sensitivity"] - m["dice"])
    assert precision == pytest.approx(1 - overlap.GetFalseDiscoveryRate(), abs=1e-12)


@pytest.mark.parametrize("seed, shape, spacing", CASES)
def test_hd95_matches_monai(seed, shape, spacing):
    pred, truth = random_blobs(seed, shape)
    expected = monai_hd(pred, truth, spacing, 95)
    assert expected > 0
    # MONAI works in float32, we in float64.
    assert binary_metrics(pred, truth, spacing)["hd95"] == pytest.approx(expected, rel=1e-5)
    assert hausdorff_distance(pred, truth, spacing, 100) == pytest.approx(monai_hd(pred, truth, spacing, 100), rel=1e-5)


@pytest.mark.parametrize("seed, shape, spacing", CASES)
def test_max_hausdorff_matches_simpleitk(seed, shape, spacing):
    # SimpleITK measures between all foreground voxels, we between surface voxels. For these
    # blobs the farthest points lie on the surfaces, so the two maxima coincide
    # (see test_max_hausdorff_differs_from_simpleitk_inside_holes for where they do not).
    pred, truth = random_blobs(seed, shape)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(to_sitk(pred, spacing), to_sitk(truth, spacing))
    assert hausdorff_distance(pred, truth, spacing, 100) == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-9)


def test_max_hausdorff_differs_from_simpleitk_inside_holes():
    # Truth: a square ring with a 9x9 hole; pred: the filled square. Surfaces: the outer
    # boundaries coincide, and the ring's inner boundary is 3 px from the outer one -> 3.
    # SimpleITK (all voxels): the hole's centre is 5 px from the ring -> 5.
    truth = np.zeros((21, 21), bool)
    truth[2:19, 2:19] = True
    pred = truth.copy()
    truth[6:15, 6:15] = False
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(to_sitk(pred, (1, 1)), to_sitk(truth, (1, 1)))
    assert hausdorff.GetHausdorffDistance() == pytest.approx(5.0)
    assert hausdorff_distance(pred, truth, percentile=100) == pytest.approx(3.0)
    assert hausdorff_distance(pred, truth, percentile=100) == pytest.approx(monai_hd(pred, truth, (1, 1), 100))


def test_confusion_based_metrics_on_a_known_example():
    pred = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 1, 0]])
    truth = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    tp, fp, fn, tn = 2, 2, 1, 5  # counted by hand
    m = binary_metrics(pred, truth)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx((tp + tn) / 10)
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["jaccard"] == pytest.approx(tp / (tp + fp + fn))


def test_empty_mask_conventions():
    empty, blob = np.zeros((6, 7, 8), bool), np.zeros((6, 7, 8), bool)
    blob[2:4, 2:5, 3:6] = True

    both = binary_metrics(empty, empty, (2.0, 1.0, 1.0))
    assert both == {"dice": 1.0, "jaccard": 1.0, "sensitivity": 1.0, "specificity": 1.0, "accuracy": 1.0, "hd95": 0.0}

    false_alarm = binary_metrics(blob, empty)
    assert false_alarm["dice"] == 0.0 and false_alarm["jaccard"] == 0.0
    assert false_alarm["hd95"] == math.inf
    assert false_alarm["sensitivity"] == 1.0  # nothing to find
    assert false_alarm["specificity"] == pytest.approx(1 - blob.sum() / blob.size)

    missed = binary_metrics(empty, blob)
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0
    assert missed["hd95"] == math.inf
    assert missed["specificity"] == 1.0

    # MONAI's symmetric HD gives NaN here (one directed distance has no points), and NaN
    # again when both are empty; the BraTS conventions above replace those.
    assert math.isnan(monai_hd(blob, empty, (1, 1, 1), 95))
    assert math.isnan(monai_hd(empty, empty, (1, 1, 1), 95))


def test_region_metrics_when_netc_and_et_are_swapped():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[3:17, 3:17, 3:17] = SNFH
    truth[6:14, 6:14, 6:10] = NETC
    truth[6:14, 6:14, 10:14] = ET
    pred = truth.copy()
    pred[truth == NETC], pred[truth == ET] = ET, NETC

    m = region_metrics(pred, truth, spacing=(1.0, 1.0, 2.0))
    assert list(m) == ["ET", "TC", "WT"]
    for region in ("TC", "WT"):  # unions of NETC and ET are unchanged
        assert m[region]["dice"] == 1.0 and m[region]["hd95"] == 0.0
    assert m["ET"]["dice"] == 0.0  # the two ET halves touch but do not overlap
    # ET surfaces are 8x8x4 slabs side by side along the last (2 mm) axis.
    assert m["ET"]["hd95"] == pytest.approx(monai_hd(pred == ET, truth == ET, (1.0, 1.0, 2.0), 95), rel=1e-5)
    assert 0 < m["ET"]["hd95"] < math.inf


def test_region_metrics_full_brats_volume():
    shape, spacing = (155, 240, 240), (1.5, 0.9, 0.9)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = ((k - 60) * 1.5) ** 2 + ((j - 100) * 0.9) ** 2 + ((i - 130) * 0.9) ** 2
    truth = np.zeros(shape, np.uint8)
    truth[r2 < 15**2] = SNFH
    truth[r2 < 9**2] = ET
    truth[r2 < 5**2] = NETC
    pred = np.roll(truth, (1, -2, 3), axis=(0, 1, 2))  # a slightly misplaced prediction

    m = region_metrics(pred, truth, spacing)
    for region, labels in (("ET", [ET]), ("TC", [NETC, ET]), ("WT", [NETC, SNFH, ET])):
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(to_sitk(p, spacing), to_sitk(t, spacing))
        assert m[region]["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
        assert 0.3 < m[region]["dice"] < 1
        assert m[region]["hd95"] == pytest.approx(monai_hd(p, t, spacing, 95), rel=1e-5)
        assert m[region]["specificity"] > 0.999 and m[region]["accuracy"] > 0.999


def test_mean_over_cases_ignores_nan_and_keeps_inf():
    cases = [
        {"ET": {"dice": 0.5, "hd95": 2.0}, "WT": {"dice": 0.9, "hd95": 1.0}},
        {"ET": {"dice": math.nan, "hd95": 4.0}, "WT": {"dice": 0.7, "hd95": math.inf}},
    ]
    mean = mean_over_cases(cases)
    assert mean["ET"] == {"dice": 0.5, "hd95": 3.0}
    assert mean["WT"]["dice"] == pytest.approx(0.8)
    assert mean["WT"]["hd95"] == math.inf
    assert math.isnan(mean_over_cases([{"ET": {"dice": math.nan}}])["ET"]["dice"])


def test_inputs_are_checked_and_scalar_spacing_is_isotropic():
    a, b = random_blobs(5, (30, 30))
    assert binary_metrics(a, b, 2.0)["hd95"] == pytest.approx(2 * binary_metrics(a, b)["hd95"])
    with pytest.raises(ValueError, match="same shape"):
        binary_metrics(a, b[:-1])


def test_score_cases_scores_what_the_segmenter_returns(tmp_path):
    from SAMBACore.evaluation import score_cases
    from test_r2unet_training import write_tiny_cases

    folder = write_tiny_cases(tmp_path / "cases", range(2))
    (folder / "NOT-A-CASE").mkdir()
    logs = []
    perfect = score_cases(folder, lambda images, truth, spacing: (truth, {"note": "truth"}), logs.append)
    assert perfect["cases"] == 2 and [c["note"] for c in perfect["per_case"]] == ["truth", "truth"]
    assert all(perfect["mean"][region]["dice"] == 1.0 for region in ("ET", "TC", "WT"))
    assert "(truth)" in logs[0] and "WT 1.000" in logs[0]
    empty = score_cases(folder, lambda images, truth, spacing: (np.zeros_like(truth), {}), logs.append)
    assert empty["mean"]["WT"]["dice"] == 0.0 and empty["mean"]["WT"]["sensitivity"] == 0.0

    import SimpleITK as sitk  # the segmenter gets the case's voxel size (k, j, i) from its header
    for path in folder.glob("*/*.nii.gz"):
        image = sitk.ReadImage(str(path))
        image.SetSpacing((0.9, 1.2, 5.0))
        sitk.WriteImage(image, str(path))
    seen = []
    score_cases(folder, lambda images, truth, spacing: (seen.append(spacing) or truth, {}), logs.append)
    assert len(seen) == 2 and np.allclose(seen, [(5.0, 1.2, 0.9)] * 2)  # NIfTI keeps float32
