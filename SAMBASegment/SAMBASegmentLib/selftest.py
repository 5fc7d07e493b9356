"""The body of SAMBASegment's self-test: run in Slicer by SAMBASegmentTest, and headless in CI."""

from __future__ import annotations

import tempfile

import numpy as np

from SAMBACore import bridge, metrics
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, find_case_files, to_internal_labels
from SAMBACore.bundle_names import SMALL_BUNDLE
from SAMBACore.inputs import InputError
from SAMBACore.phantom import write_case

SELF_TEST_SEED = 20001  # a held-out phantom seed (training uses seeds below 20000)
MIN_WT_DICE = 0.85  # SAMBA with the phantom-demo bundle and YOLO boxes measured 0.924 on this case (any thread count or kernel)


def run_self_test(scene, process, log=print) -> dict:
    """Phantom case -> `process(scene, nodes, bundle=SMALL_BUNDLE, prompt="yolo")` (SAMBA, phantom-demo and
    its YOLO boxes: seconds, where the default LiteMedSAM bundle and the 3D U-Net's box take a minute or more
    on a CPU; `make demo` runs those) -> Dice
    against the truth; then a NaN volume must be refused with the scene left alone.

    `process` is the module logic's process method. Returns the region metrics.
    """
    with tempfile.TemporaryDirectory() as folder:
        log("Making a phantom case")
        files = find_case_files(write_case(folder, "SELFTEST", seed=SELF_TEST_SEED), need_seg=True)
        nodes = {m: bridge.load_volume(scene, files[m]) for m in MODALITIES}
        truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(scene, files["seg"])))

    log("Segmenting")
    segmentation = process(scene, nodes, bundle=SMALL_BUNDLE, prompt="yolo")
    names = {segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)}
    assert names == {s.name for s in LABEL_SEGMENTS.values()}, names
    predicted = bridge.labels_from_segmentation(segmentation, nodes["t1"], {s.key: v for v, s in LABEL_SEGMENTS.items()})
    scores = metrics.region_metrics(predicted, truth, tuple(reversed(nodes["t1"].GetSpacing())))
    log("Dice " + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items()))
    assert scores["WT"]["dice"] >= MIN_WT_DICE, scores

    log("Checking that a NaN volume is refused and the scene left as it was")
    bad = bridge.array_from_volume(nodes["t2"])
    bad[0, 0, 0] = np.nan
    nodes["t2"] = bridge.volume_from_array(scene, bad, bridge.ijk_to_ras(nodes["t1"]), "broken t2")
    before = scene.GetNumberOfNodes()
    try:
        process(scene, nodes, bundle=SMALL_BUNDLE)
    except InputError as error:
        assert "NaN" in str(error) and "broken t2" in str(error), error
    else:
        raise AssertionError("a NaN volume was accepted")
    assert scene.GetNumberOfNodes() == before
    log("Self-test passed")
    return scores
