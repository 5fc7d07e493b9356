"""Box prompts from masks and ROIs, and the YOLO localizer's plumbing (weights as safetensors)."""

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from SAMBASegmentLib import localizer
from SAMBASegmentLib.prompts import box_of_mask, boxes_from_mask, boxes_from_roi
from SAMBASegmentLib.slices import view_slices


def test_box_of_mask_is_tight_and_clipped():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 7:12] = True
    np.testing.assert_array_equal(box_of_mask(mask), [7, 2, 12, 5])  # x0, y0, x1, y1; ends exclusive
    np.testing.assert_array_equal(box_of_mask(mask, margin=3), [4, 0, 15, 8])
    assert box_of_mask(np.zeros((4, 4), bool)) is None


def test_boxes_from_mask_per_view_cover_the_mask():
    mask = np.zeros((11, 17, 23), bool)
    mask[3:6, 4:9, 10:20] = True
    for view, count in (("axial", 3), ("coronal", 5), ("sagittal", 10)):
        boxes = boxes_from_mask(mask, view)
        assert len(boxes) == count
        stack = view_slices(mask, view)
        for n, (x0, y0, x1, y1) in boxes.items():
            inside = np.zeros(stack[n].shape, bool)
            inside[int(y0):int(y1), int(x0):int(x1)] = True
            np.testing.assert_array_equal(inside, stack[n])  # a box mask equals its own box


def test_roi_projects_onto_every_slice_it_crosses():
    boxes = boxes_from_roi((7, 2, 3), (2, 5, 9), (11, 17, 23), "coronal")  # corners in any order
    assert sorted(boxes) == [2, 3, 4, 5]
    np.testing.assert_array_equal(boxes[3], [3, 2, 10, 8])
    outside = boxes_from_roi((-5, 0, 0), (1, 3, 50), (11, 17, 23), "axial")  # clipped to the volume
    assert sorted(outside) == [0, 1] and outside[0][2] == 23


def test_detector_weights_round_trip_through_safetensors(tmp_path):
    yolo = localizer.build_detector()
    state = localizer.detector_state_dict(yolo)
    save_file(state, tmp_path / "yolo.safetensors")
    again = localizer.build_detector(state_dict=load_file(tmp_path / "yolo.safetensors"))
    slices = np.zeros((2, 155, 240, 3), np.uint8)  # non-square, like coronal slices
    slices[:, 40:90, 100:170] = 200
    a = localizer.detect_boxes(yolo, slices, conf=0.0)
    b = localizer.detect_boxes(again, slices, conf=0.0)
    assert a.keys() == b.keys()
    for n in a:
        np.testing.assert_allclose(a[n], b[n], atol=1e-3)
        x0, y0, x1, y1 = a[n]
        assert 0 <= x0 <= x1 <= 240 and 0 <= y0 <= y1 <= 155, "boxes come back in the slice's own frame"
    assert localizer.detect_boxes(yolo, np.zeros((3, 20, 30, 3), np.uint8)) == {}, "empty slices are skipped"


def test_the_bundles_confidence_threshold_is_the_one_detect_boxes_uses():
    """A bundle's yolo config "conf" decides which boxes count (it was once written and never read):
    phantom-demo's YOLO on a phantom's FLAIR slices, with a threshold between its scores."""
    from SAMBACore.bundles import load_bundle, load_state_dict
    from SAMBACore.phantom import make_case
    from SAMBASegmentLib.samba_bundle import resolve_bundle
    from SAMBASegmentLib.slices import normalise_slices, view_slices

    bundle = load_bundle(resolve_bundle("phantom-demo"))
    config, state = bundle.components["yolo"].config, load_state_dict(bundle, "yolo")
    assert localizer.build_detector(config, state).overrides["conf"] == config["conf"]
    slices = normalise_slices(view_slices(make_case(3).images["flair"], "axial"))
    scores: dict[int, float] = {}
    localizer.detect_boxes(localizer.build_detector(config, state), slices, conf=0.01, scores=scores)
    threshold = float(np.median(list(scores.values())))
    strict = localizer.build_detector({**config, "conf": threshold}, state)
    kept = localizer.detect_boxes(strict, slices)
    assert 0 < len(kept) < len(scores), "the threshold sits between the scores"
    assert sorted(kept) == sorted(n for n, score in scores.items() if score >= threshold)
    assert len(localizer.detect_boxes(strict, slices, conf=0.01)) == len(scores), "an explicit conf still wins"


def test_consistent_boxes_drop_lone_detections_but_not_a_tumour_run():
    from SAMBASegmentLib.localizer import consistent_boxes

    def box(x):
        return np.array([x, x, x + 10, x + 10], np.float32)

    boxes = {n: box(50) for n in range(10, 20)}
    boxes[15] = box(150)  # a false box inside the tumour's run: it must not cut the run
    boxes[40] = box(50)  # alone, far from the others
    boxes.update({60: box(0), 62: box(2), 65: box(4)})  # gaps of 1 and 2 slices: one run
    boxes.update({80: box(0), 84: box(0), 88: box(0)})  # gaps of 3: three lone boxes
    assert sorted(consistent_boxes(boxes)) == [10, 11, 12, 13, 14, 16, 17, 18, 19, 60, 62, 65]


def test_main_runs_keep_the_most_confident_run_and_those_near_it():
    from SAMBASegmentLib.localizer import main_runs

    def box(x):
        return np.array([x, x, x + 10, x + 10], np.float32)

    boxes = {n: box(50) for n in range(10, 30)}  # the tumour: 20 sure boxes
    boxes.update({n: box(150) for n in range(40, 46)})  # a run of 6 unsure false boxes
    boxes.update({n: box(0) for n in range(60, 72)})  # a second lesion: 12 sure boxes
    scores = {n: 0.9 for n in boxes} | {n: 0.3 for n in range(40, 46)}
    assert main_runs(boxes, scores, keep=1.0) == [list(range(10, 30))]
    assert main_runs(boxes, scores, keep=0.5) == [list(range(10, 30)), list(range(60, 72))]
    assert main_runs(boxes, scores, keep=0.0) == [list(range(10, 30)), list(range(40, 46)), list(range(60, 72))]
    assert main_runs({}, {}, keep=0.5) == []


def test_box_scores_count_missed_and_false_slices():
    from SAMBASegmentLib.box_quality import box_iou, score_boxes

    a = np.array([0, 0, 10, 10], np.float32)
    assert box_iou(a, a) == 1.0 and box_iou(a, a + np.float32(20)) == 0.0
    assert abs(box_iou(a, np.array([5, 0, 15, 10], np.float32)) - 50 / 150) < 1e-6
    truth = {n: a for n in range(4)}
    found = {0: a, 1: a, 7: a}  # half the tumour slices, one false box
    assert score_boxes(found, truth) == {"tumour_slices": 4, "recall": 0.5, "false_slices": 0.25, "iou": 1.0,
                                         "slice_dice": 4 / 7}
