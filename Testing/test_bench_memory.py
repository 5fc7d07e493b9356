"""`slicer-samba bench memory` on a small box of the phantom: the report's structure and its peaks."""

import json

import pytest
from R2UNetSegmentLib.bench_memory import format_report, run_bench
from R2UNetSegmentLib.inference import Cascade
from R2UNetSegmentLib.unet3d import UNet3D

from SAMBACore import cli


def small_models():
    """Networks with a margin of 9 voxels, so 24-voxel patches grow to at most 43 voxels a side."""
    return UNet3D(4, 4, (8, 16)), Cascade(UNet3D(4, 4, (8, 16)), UNet3D(8, 4, (8, 16)))


def test_bench_reports_every_mode_and_patches_need_less_memory():
    messages = []
    report = run_bench(shape=(48, 96, 96), patch_size=24, models=small_models(), progress=messages.append)
    assert report["image_shape"] == [4, 48, 96, 96]
    assert report["order"] == ["cascade", "patch", "full"]
    assert report["models"] == "given" and report["dice_meaningful"]
    assert report["margins"] == {"patch": [9, 9, 9], "cascade stage 2": [9, 9, 9]}
    modes = report["modes"]
    assert set(modes) == {"full", "patch", "cascade"}
    for result in modes.values():
        assert set(result["dice"]) == {"WT", "TC", "ET"}
        assert all(0 <= d <= 1 for d in result["dice"].values())
        assert result["seconds"] > 0 and result["peak_bytes"] > 0
        # Tensor bytes only: with nets this narrow, oneDNN's private scratchpads (not counted) are
        # as large as the activations, so only a loose bound holds here; test_r2unet_inference
        # checks a factor of 2 where activations dominate. Measured in the full suite: up to 6.1
        # once (a fresh clone, after test_bench_lora; 1-3 alone), hence 10: what this bound catches
        # is an estimate off by an order of magnitude; the comparisons below are the real test.
        assert 0.2 < result["peak_bytes"] / result["estimate_bytes"] < 10, result
    assert modes["full"]["peak_ratio_to_full"] == 1
    assert modes["patch"]["peak_bytes"] < modes["full"]["peak_bytes"]
    assert modes["cascade"]["peak_bytes"] < modes["full"]["peak_bytes"]
    assert modes["cascade"]["peak_ratio_to_full"] == pytest.approx(
        modes["cascade"]["peak_bytes"] / modes["full"]["peak_bytes"])
    assert report["target"]["memory_met"] == (modes["cascade"]["peak_ratio_to_full"] <= 0.25)
    assert any("cascade stage 2: window" in m for m in messages)
    json.dumps(report)  # --json prints it as is
    table = format_report(report)
    assert "cascade" in table and "Target: cascade peak <= 25% of full" in table


def test_bench_command_rejects_bad_options(capsys):
    assert cli.main(["bench", "memory", "--device", "cpu", "--modes", "patch,cascade"]) == 2
    assert "modes must include full" in capsys.readouterr().err
    assert cli.main(["bench", "memory", "--device", "cpu", "--shape", "48,96"]) == 2
    assert "shape must be three sizes" in capsys.readouterr().err
