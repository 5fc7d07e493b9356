"""SAMBACore.lesionwise (BraTS 2023 lesion-wise Dice / HD95) on small volumes whose scores are known
by hand, and `slicer-samba evaluate` reporting them. docs/lesionwise.md has the check against the
official BraTS 2023 code on real and phantom cases."""

import json
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from SAMBACore.brats import MODALITIES, case_file_name
from SAMBACore.lesionwise import HD95_PENALTY, lesionwise_scores, region_lesionwise

SHAPE = (16, 16, 40)


def cube(corner, size, shape=SHAPE):
    mask = np.zeros(shape, bool)
    size = (size,) * 3 if np.isscalar(size) else size
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return mask


def scores(pred, truth, spacing=None):
    s = lesionwise_scores(pred, truth, spacing)
    return round(s["lesion_dice"], 6), round(s["lesion_hd95"], 6), (s["lesion_tp"], s["lesion_fn"], s["lesion_fp"])


def test_one_perfect_lesion_scores_one_and_zero():
    lesion = cube((4, 4, 4), 5)
    assert scores(lesion, lesion) == (1.0, 0.0, (1, 0, 0))


def test_a_false_positive_blob_halves_the_score_and_a_missed_lesion_too():
    lesion, far = cube((4, 4, 4), 5), cube((4, 4, 30), 3)  # 125 voxels; 27, 21 voxels away
    assert scores(lesion | far, lesion) == (0.5, HD95_PENALTY / 2, (1, 0, 1))  # a FP counts whatever its size
    big_far = cube((4, 4, 30), 5)
    assert scores(lesion, lesion | big_far) == (0.5, HD95_PENALTY / 2, (1, 1, 0))


def test_lesions_of_50_mm3_or_less_are_left_out():
    lesion = cube((4, 4, 4), 5)
    for small, counted in ((cube((4, 4, 30), 3), False), (cube((4, 4, 30), (5, 5, 2)), False),  # 27, 50 voxels
                           (cube((4, 4, 30), (5, 5, 3)), True)):  # 75 voxels
        assert scores(lesion, lesion | small) == ((0.5, HD95_PENALTY / 2, (1, 1, 0)) if counted else (1.0, 0.0, (1, 0, 0)))
    # The threshold is a volume: at 2 mm^3 a voxel, 50 voxels are 100 mm^3 and count.
    small = cube((4, 4, 30), (5, 5, 2))
    assert scores(lesion, lesion | small, (2.0, 1.0, 1.0)) == (0.5, HD95_PENALTY / 2, (1, 1, 0))
    # A predicted component on a left-out lesion is not a false positive either.
    assert scores(lesion | small, lesion | small) == (1.0, 0.0, (1, 0, 0))


def test_empty_truth_and_empty_prediction():
    empty, blob = np.zeros(SHAPE, bool), cube((4, 4, 4), 5)
    assert scores(empty, empty) == (1.0, 0.0, (0, 0, 0))
    assert scores(blob, empty) == (0.0, HD95_PENALTY, (0, 0, 1))
    assert scores(empty, blob) == (0.0, HD95_PENALTY, (0, 1, 0))
    assert scores(empty, cube((4, 4, 4), 3)) == (1.0, 0.0, (0, 0, 0))  # only a left-out lesion: nothing to count


def test_hd95_is_in_mm_with_anisotropic_spacing():
    # A 10-voxel cube shifted one voxel along axis 0: a fifth of each surface lies one axis-0 step
    # from the other surface and nothing lies further, so HD95 is exactly that step, in mm.
    truth = cube((2, 2, 2), 10, (14, 14, 14))
    pred = np.roll(truth, 1, axis=0)
    assert scores(pred, truth, (2.5, 1.0, 1.0)) == (0.9, 2.5, (1, 0, 0))
    assert scores(pred, truth, (1.0, 1.0, 2.5)) == (0.9, 1.0, (1, 0, 0))


def test_nearby_truth_components_merge_into_one_lesion():
    a = cube((4, 4, 2), 4)
    near, far = cube((4, 4, 8), 4), cube((4, 4, 16), 4)  # 2 and 10 voxels apart; the dilation is 3
    dice, _, counts = scores(a, a | near)  # one lesion of 128 voxels, half found
    assert (dice, counts) == (round(2 * 64 / (64 + 128), 6), (1, 0, 0))
    assert scores(a, a | far) == (0.5, HD95_PENALTY / 2, (1, 1, 0))


def test_a_predicted_speck_next_to_a_lesion_joins_it_instead_of_counting_as_false_positive():
    lesion = cube((4, 4, 4), 5)
    speck = np.zeros(SHAPE, bool)
    speck[6, 6, 11] = True  # one voxel of background between it and the lesion
    dice, _, counts = scores(lesion | speck, lesion)
    assert counts == (1, 0, 0) and dice == round(2 * 125 / (126 + 125), 6)


def test_regions_of_label_arrays():
    truth = np.zeros(SHAPE, np.uint8)
    truth[cube((4, 4, 4), 6)] = 2  # SNFH around
    truth[cube((5, 5, 5), 4)] = 1  # NETC core, no ET
    result = region_lesionwise(truth, truth)
    assert set(result) == {"ET", "TC", "WT"}
    assert result["ET"]["lesion_dice"] == 1.0 and result["ET"]["lesion_tp"] == 0  # both empty
    assert result["TC"]["lesion_dice"] == 1.0 and result["TC"]["lesion_tp"] == 1


def write_case(folder, labels):
    case_id = "LW-00001-000"
    (folder / case_id).mkdir(parents=True)
    for key in list(MODALITIES) + ["seg"]:
        array = labels if key == "seg" else (labels * 100.0).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / case_id / case_file_name(case_id, key)))
    return folder


def test_evaluate_reports_lesionwise_scores_per_case_and_mean(tmp_path, monkeypatch, capsys):
    """The real `evaluate` handler and score_cases, with the model run faked (it would load torch):
    the prediction is the truth plus a false-positive blob, so WT scores lesion-wise 0.5 / 187 mm."""
    from SAMBACore.cli import main
    from SAMBACore.evaluation import score_cases

    labels = np.zeros(SHAPE, np.uint8)
    labels[cube((4, 4, 4), 6)] = 2
    labels[cube((5, 5, 5), 4)] = 3
    cases = write_case(tmp_path / "cases", labels)
    blob = cube((4, 4, 30), 3)

    def evaluate(models, data_dir, prompt, mode, device, on_case, preset, contrasts=None, roi_margin=5, core="t1ce"):
        segment = lambda images, truth, spacing: (np.where(blob, 2, truth).astype(np.uint8), {})  # noqa: E731
        return {"prompt": prompt, "mode": mode, "preset": preset, "core": core, "contrasts": "as found",
                **score_cases(data_dir, segment, print, on_case)}

    fake_evaluation = types.ModuleType("SAMBASegmentLib.evaluation")
    fake_evaluation.evaluate, fake_evaluation.ROI_MARGIN = evaluate, 5
    fake_bundle = types.ModuleType("SAMBASegmentLib.samba_bundle")
    fake_bundle.resolve_bundle = lambda name: name
    fake_bundle.load_samba_models = lambda bundle, device, adapter=None: types.SimpleNamespace(picked_sam=None)
    monkeypatch.setitem(sys.modules, "SAMBASegmentLib.evaluation", fake_evaluation)
    monkeypatch.setitem(sys.modules, "SAMBASegmentLib.samba_bundle", fake_bundle)
    monkeypatch.setattr("SAMBACore.device.choose_device", lambda requested: "cpu")

    assert main(["evaluate", str(cases), "--prompt", "roi", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "; lesion-wise ET 1.000, TC 1.000, WT 0.500" in out[0]  # the per-case line
    mean_line = next(line for line in out if line.startswith("Mean over 1 case(s)"))
    assert "WT Dice 0.941 HD95 " in mean_line and "mm (lesion-wise 0.500 / 187.0 mm)" in mean_line
    report = json.loads(out[-1])
    for metrics in (report["per_case"][0]["metrics"]["WT"], report["mean"]["WT"]):
        assert metrics["lesion_dice"] == 0.5 and metrics["lesion_hd95"] == 187.0 and metrics["lesion_fp"] == 1
        assert metrics["dice"] == pytest.approx(2 * 216 / (216 + 243))
