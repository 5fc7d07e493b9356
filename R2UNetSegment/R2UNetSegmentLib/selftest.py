"""The body of R2UNetSegment's self-test: run in Slicer by R2UNetSegmentTest, and headless in CI."""

from __future__ import annotations

import tempfile

import numpy as np

from SAMBACore import bridge, metrics
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, find_case_files, to_internal_labels
from SAMBACore.inputs import InputError
from SAMBACore.phantom import write_case

SELF_TEST_SEED = 20002  # a held-out phantom seed (training uses seeds below 20000)
MIN_WT_DICE = 0.85  # the phantom-r2unet cascade measured 0.97 on 10 held-out phantoms


def run_self_test(scene, logic, log=print) -> dict:
    """Phantom case -> channels -> cascade segmentation -> Dice against the truth; then a budget
    too small for any mode and a missing channel must be refused with the scene left as it was.

    `logic` has the R2UNetSegmentCore methods. Returns the region metrics.
    """
    with tempfile.TemporaryDirectory() as folder:
        log("Making a phantom case")
        files = find_case_files(write_case(folder, "SELFTEST", seed=SELF_TEST_SEED), need_seg=True)
        nodes = {m: bridge.load_volume(scene, files[m]) for m in MODALITIES}
        seg_node = bridge.load_volume(scene, files["seg"])
        truth = to_internal_labels(bridge.array_from_volume(seg_node))
        scene.RemoveNode(seg_node)

    log("Gathering the four BraTS channels from the FLAIR volume")
    channels = logic.prepare(scene, nodes["flair"]).image
    for index, m in enumerate(MODALITIES):
        np.testing.assert_array_equal(channels[index], bridge.array_from_volume(nodes[m]))

    log("Segmenting with the cascade")
    segmentation = logic.process(scene, nodes["flair"], mode="cascade")
    predicted = bridge.labels_from_segmentation(segmentation, nodes["t1"], {s.key: v for v, s in LABEL_SEGMENTS.items()})
    scores = metrics.region_metrics(predicted, truth, tuple(reversed(nodes["t1"].GetSpacing())))
    log("Dice " + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items()))
    assert scores["WT"]["dice"] >= MIN_WT_DICE, scores

    before = scene.GetNumberOfNodes()
    log("A memory budget too small for any mode is refused, naming one that works")
    try:
        logic.process(scene, nodes["flair"], mode="auto", budget="1KB")
    except ValueError as error:
        assert "smallest" in str(error).lower(), error
    else:
        raise AssertionError("a 1 KB budget was accepted")
    log("Without T2 the bundle's four-channel models refuse the input")
    scene.RemoveNode(nodes["t2"])
    before -= 1
    try:
        logic.process(scene, nodes["flair"])
    except InputError as error:
        assert "channel" in str(error), error
    else:
        raise AssertionError("a one-channel input was given to a four-channel model")
    assert scene.GetNumberOfNodes() == before
    log("Self-test passed")
    return scores
