"""The body of R2UNetSegment's self-test: run in Slicer by R2UNetSegmentTest, and headless in CI."""

from __future__ import annotations

import tempfile

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import MODALITIES, find_case_files
from SAMBACore.phantom import write_case

SELF_TEST_SEED = 20002


def run_self_test(scene, gather, log=print) -> None:
    """`gather(scene, primary)` is the logic's channel gathering: four BraTS channels in model
    order when all four are loaded, one channel otherwise, voxels untouched."""
    with tempfile.TemporaryDirectory() as folder:
        log("Loading a phantom case")
        files = find_case_files(write_case(folder, "SELFTEST", seed=SELF_TEST_SEED))
        nodes = {m: bridge.load_volume(scene, files[m]) for m in MODALITIES}

    channels, names = gather(scene, nodes["flair"])
    assert names == [nodes[m].GetName() for m in MODALITIES], names
    assert channels.shape == (4,) + bridge.array_from_volume(nodes["t1"]).shape
    for index, m in enumerate(MODALITIES):
        np.testing.assert_array_equal(channels[index], bridge.array_from_volume(nodes[m]))

    log("Without T2 the FLAIR volume is segmented on its own")
    scene.RemoveNode(nodes["t2"])
    channels, names = gather(scene, nodes["flair"])
    assert names == [nodes["flair"].GetName()] and channels.shape[0] == 1
    log("Self-test passed")
