"""`slicer-samba bench samba`: naive SamPredictor loop vs the pipeline, on a tiny random bundle.

Speed is not asserted (the 2-core CI machine is shared); the report's structure is, and that the
two paths compute the same masks.
"""

import json

import numpy as np
import pytest

from SAMBACore import cli
from SAMBASegmentLib import voting
from SAMBASegmentLib.bench import limit_boxes
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
SEED = 3


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, reseed):
    """A random SAM and voting net without YOLO: the benchmark then boxes the true tumour."""
    reseed()  # conftest.py
    folder = tmp_path_factory.mktemp("bench") / "bundle"
    save_samba_bundle(folder, SambaModels(build_sam(TINY_SAM), None, voting.build_voting_net()),
                      {"sam": TINY_SAM, "voting": voting.CONFIG},
                      {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0",
                       "intended_use": "tests", "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}})
    return folder


def test_limit_boxes_keeps_the_middle_slices():
    boxes = {i: np.array([i, 0, i + 1, 1]) for i in range(10, 21)}
    assert sorted(limit_boxes(boxes, 3)) == [14, 15, 16]
    assert limit_boxes(boxes, None) is boxes and limit_boxes(boxes, 50) is boxes


def test_bench_reports_stages_ratio_and_agreement(tiny_bundle, capsys):
    code = cli.main(["bench", "samba", "--bundle", str(tiny_bundle), "--seed", str(SEED), "--views", "axial,sagittal",
                     "--max-slices", "3", "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["prompt"] == "roi" and report["slices"] == {"axial": 3, "sagittal": 3}
    assert report["sam_calls"] == 6 * 4 and report["whole_case"] is False
    # No fusion stage: the votes of a few slices are not a case.
    stages = {"phantom", "load models", "prompts", "sam naive", "sam pipeline", "sam pipeline cached"}
    assert set(report["seconds"]) == stages and all(v > 0 for v in report["seconds"].values())
    assert report["speedup"] == pytest.approx(report["seconds"]["sam naive"] / report["seconds"]["sam pipeline"])
    assert report["speedup"] > 0
    # The fast path computes what SamPredictor computes, on non-trivial masks.
    assert report["agreement"]["tumour_voxels_naive"] > 1000
    assert report["agreement"]["dice"] > 0.99 and report["agreement"]["min_dice_per_vote"] > 0.99
    for line in ("sam naive: ", "Time per stage: ", "Agreement naive vs pipeline: Dice 1.0000", "Selected slices"):
        assert line in out


def test_bench_refuses_bad_options_before_any_work(tiny_bundle, capsys):
    assert cli.main(["bench", "samba", "--bundle", str(tiny_bundle), "--views", "axial,oblique"]) == 2
    assert "Unknown view(s) oblique: choose from axial, coronal, sagittal" in capsys.readouterr().err
    assert cli.main(["bench", "samba", "--bundle", str(tiny_bundle), "--max-slices", "0"]) == 2
    assert "--max-slices must be at least 1" in capsys.readouterr().err
    assert cli.main(["bench", "samba", "--bundle", str(tiny_bundle / "nowhere")]) == 2
    assert "No model bundle" in capsys.readouterr().err
