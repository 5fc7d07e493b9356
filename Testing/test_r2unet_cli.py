"""`slicer-samba r2unet` and `slicer-samba train unet|r2unet|cascade`, as a user runs them."""

import dataclasses
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from R2UNetSegmentLib.logic import parse_budget
from R2UNetSegmentLib.r2unet_bundle import save_r2unet_bundle
from R2UNetSegmentLib.unet3d import UNet3D
from test_r2unet_training import write_tiny_cases

from SAMBACore.brats import LABEL_SEGMENTS
from SAMBACore.bundles import load_bundle
from SAMBACore.cli import main

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def tiny_bundle(path, in_channels):
    config = {"in_channels": in_channels, "out_channels": 4, "widths": [4, 8]}
    torch.manual_seed(1)
    model = UNet3D(in_channels, 4, (4, 8))
    torch.nn.init.normal_(model.head.weight, std=3.0)  # so that random weights still give several labels
    save_r2unet_bundle(path, {"unet": (model, config)})
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    return {1: tiny_bundle(folder / "one", 1), 4: tiny_bundle(folder / "four", 4)}


def oblique_file(path, array, spacing=(0.92, 1.04, 1.09)):  # within 10% of 1 mm: the networks run on this grid
    """An anisotropic image rotated about two axes, so that no voxel axis lines up with RAS."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    image.SetDirection(tuple(rotation.ravel()))
    sitk.WriteImage(image, str(path))
    return path


def image_array(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100, 30, size=(9, 12, 14)).astype(np.float32)


def test_segments_an_oblique_file_on_its_own_grid(bundles, tmp_path, capsys):
    from R2UNetSegmentLib.inference import normalise, segment
    from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models

    array = image_array()
    source = oblique_file(tmp_path / "oblique.nii.gz", array)
    out = tmp_path / "out.seg.nrrd"
    assert main(["r2unet", str(source), "-o", str(out), "--bundle", str(bundles[1]), "--mode", "full"]) == 0
    printed = capsys.readouterr().out
    assert "Mode: full, estimated peak memory" in printed and "Volumes (mL)" in printed

    seg = slicerio.read_segmentation(str(out))
    reader = sitk.ReadImage(str(source))
    expected = np.eye(4)
    expected[:3, :3] = np.array(reader.GetDirection()).reshape(3, 3) @ np.diag(reader.GetSpacing())
    expected[:3, 3] = reader.GetOrigin()
    np.testing.assert_allclose(np.array(seg["ijkToLPS"]), expected, atol=1e-6)
    assert [s["name"] for s in seg["segments"]] == [s.name for s in LABEL_SEGMENTS.values()]
    # The voxels are the model's labels, not transposed or flipped on the way to the file.
    labels, _, _ = segment(normalise(array[None]), model=load_r2unet_models(bundles[1]).unet, mode="full")
    assert len(np.unique(labels)) > 1, "a test of voxel placement needs more than one label"
    for value, display in LABEL_SEGMENTS.items():
        voxels = np.transpose(slicerio.extract_segments(seg, [(display.name, 1)])["voxels"], (2, 1, 0))
        np.testing.assert_array_equal(voxels == 1, labels == value)


def test_a_thick_slice_volume_is_planned_and_segmented_on_1_mm(scene, bundles, tmp_path):
    """The module passes the volume's voxel size (k, j, i) on: 5 mm slices are run on 1 mm (spacing.py)."""
    from R2UNetSegmentLib.logic import R2UNetSegmentCore

    from SAMBACore import bridge

    volume = bridge.load_volume(scene, oblique_file(tmp_path / "thick.nii.gz", image_array(), (0.9, 1.3, 5.0)))
    core = R2UNetSegmentCore()
    request = core.prepare(scene, volume, bundle=str(bundles[1]), model="unet", mode="full")
    assert request.spacing == pytest.approx((5.0, 1.3, 0.9))
    result = core.compute(request)
    assert result.labels.shape == (9, 12, 14)  # back on the volume's own grid
    assert result.estimate_bytes > core.compute(dataclasses.replace(request, spacing=None)).estimate_bytes  # 41 slices, not 9


def test_case_folder_with_a_four_channel_bundle(bundles, tmp_path, capsys):
    case = next(write_tiny_cases(tmp_path / "cases", [7]).iterdir())
    out = tmp_path / "case.seg.nrrd"
    assert main(["r2unet", str(case), "-o", str(out), "--bundle", str(bundles[4]), "--mode", "patch",
                 "--patch-size", "16"]) == 0
    assert "Mode: patch" in capsys.readouterr().out
    assert slicerio.read_segmentation(str(out))["voxels"].shape == (24, 24, 20)


def test_a_folder_of_cases_is_segmented_case_by_case(bundles, tmp_path, capsys):
    cases = write_tiny_cases(tmp_path / "cases", [7, 8])
    broken = cases / "BROKEN"
    broken.mkdir()
    (broken / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    code = main(["r2unet", str(cases), "-o", str(out), "--bundle", str(bundles[4]), "--mode", "full",
                 "--volumes", str(tmp_path / "volumes.tsv")])
    captured = capsys.readouterr()
    assert code == 2 and "Skipped BROKEN" in captured.err and "1 of 3 case(s) were skipped (BROKEN)" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["TINY-00007-000.seg.nrrd", "TINY-00008-000.seg.nrrd"]
    rows = [line.split("\t") for line in (tmp_path / "volumes.tsv").read_text().splitlines()]
    assert rows[0] == ["Case", "NETC (mL)", "SNFH (mL)", "ET (mL)", "TC (mL)", "WT (mL)"]
    assert [row[0] for row in rows[1:]] == ["TINY-00007-000", "TINY-00008-000"]


def bad_run(capsys, *args):
    code = main(list(map(str, args)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    return err


def test_wrong_channel_count_is_bad_input(bundles, tmp_path, capsys):
    source = oblique_file(tmp_path / "one.nii.gz", image_array())
    err = bad_run(capsys, "r2unet", source, "-o", tmp_path / "x.seg.nrrd", "--bundle", bundles[4])
    assert "Wrong channel count" in err and "gives 1 channel(s)" in err and "take 4" in err
    assert not (tmp_path / "x.seg.nrrd").exists()


@pytest.mark.parametrize("spoil, words", [("nan", "NaN"), ("zero", "empty")])
def test_nan_or_empty_input_is_refused(bundles, tmp_path, capsys, spoil, words):
    array = image_array()
    if spoil == "nan":
        array[2, 3, 4] = np.nan
    else:
        array[:] = 0
    # NRRD: Slicer's NIfTI reader turns NaN into 0 on load, its NRRD reader keeps them.
    source = oblique_file(tmp_path / "bad.nrrd", array)
    assert words in bad_run(capsys, "r2unet", source, "-o", tmp_path / "x.seg.nrrd", "--bundle", bundles[1])


def test_corrupt_weights_are_refused_naming_the_file(bundles, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundles[1], broken)
    data = bytearray((broken / "unet.safetensors").read_bytes())
    data[-4] ^= 0x55
    (broken / "unet.safetensors").write_bytes(bytes(data))
    source = oblique_file(tmp_path / "one.nii.gz", image_array())
    err = bad_run(capsys, "r2unet", source, "-o", tmp_path / "x.seg.nrrd", "--bundle", broken)
    assert "unet.safetensors" in err and "checksum mismatch" in err


def test_too_small_a_budget_names_one_that_works(bundles, tmp_path, capsys):
    source = oblique_file(tmp_path / "one.nii.gz", image_array())
    out = tmp_path / "x.seg.nrrd"
    err = bad_run(capsys, "r2unet", source, "-o", out, "--bundle", bundles[1], "--memory-budget", "1KB")
    needed = re.search(r"the smallest, (.+), needs about ([\d.]+) (MB|GB)", err)
    assert needed, err
    enough = f"{math.ceil(float(needed.group(2))) + 1}{needed.group(3)}"
    capsys.readouterr()
    assert main(["r2unet", str(source), "-o", str(out), "--bundle", str(bundles[1]), "--memory-budget", enough]) == 0
    assert out.exists()
    # Just above the smallest plan's need, that plan ran, and the user is told which.
    assert f"Mode: {needed.group(1)}, estimated peak memory" in capsys.readouterr().out


def test_budget_sizes_parse():
    assert parse_budget("512MB") == 512 * 2**20
    assert parse_budget("2GB") == 2 * 2**30
    assert parse_budget("1.5G") == int(1.5 * 2**30)
    assert parse_budget("4096") == 4096
    for bad in ("lots", "-1GB", "0", "2XB"):
        with pytest.raises(ValueError, match="512MB"):
            parse_budget(bad)


def test_train_unet_command_writes_a_bundle(tmp_path, capsys):
    data = write_tiny_cases(tmp_path / "cases", [1, 2])
    out = tmp_path / "bundle"
    assert main(["train", "unet", str(data), "-o", str(out), "--steps", "3", "--patch", "16", "--batch", "1",
                 "--widths", "4,8", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "unet: step 3/3" in printed and "Bundle updated" in printed
    manifest = load_bundle(out).manifest
    assert manifest["components"]["unet"]["config"]["widths"] == [4, 8]
    assert manifest["training"]["unet"]["steps"] == 3 and manifest["training"]["unet"]["patch"] == 16
    # By default with presence flags (any set of contrasts); --no-presence-flags: four contrasts, as bundles before.
    assert manifest["components"]["unet"]["config"]["in_channels"] == 8
    assert manifest["components"]["unet"]["config"]["presence_flags"] is True
    assert "contrast_dropout" in manifest["training"]["unet"]
    assert main(["train", "unet", str(data), "-o", str(tmp_path / "four"), "--steps", "2", "--patch", "16", "--batch",
                 "1", "--widths", "4,8", "--device", "cpu", "--no-presence-flags"]) == 0
    four = load_bundle(tmp_path / "four").manifest
    assert four["components"]["unet"]["config"] == {"in_channels": 4, "out_channels": 4, "widths": [4, 8]}
    assert "contrast_dropout" not in four["training"]["unet"]


def test_train_with_bad_widths_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "cascade", str(tmp_path), "-o", str(tmp_path / "b"), "--widths", "8"])
    assert "at least two positive widths" in capsys.readouterr().err
