"""`slicer-samba` end to end, as a user runs it: phantom, demo, and bad input."""

import json
import subprocess
import sys

import slicerio

from SAMBACore.brats import LABEL_SEGMENTS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "SAMBACore.cli", *args], capture_output=True, text=True, timeout=600)


def test_demo_writes_a_named_seg_nrrd_and_scores_it(tmp_path):
    result = run_cli("demo", "-o", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    seg = slicerio.read_segmentation(report["segmentation"])
    assert [s["name"] for s in seg["segments"]] == [s.name for s in LABEL_SEGMENTS.values()]
    assert seg["voxels"].shape == (240, 240, 155)
    assert set(report["metrics"]) == {"ET", "TC", "WT"}
    assert report["metrics"]["WT"]["dice"] > 0.6  # the threshold baseline on the demo phantom
    assert "Dice" in result.stdout and "Time per stage" in result.stdout


def test_phantom_command_writes_n_cases_in_2021_naming(tmp_path):
    result = run_cli("phantom", str(tmp_path), "1", "--seed", "5", "--naming", "2021")
    assert result.returncode == 0, result.stderr
    case = next(tmp_path.iterdir())
    names = sorted(p.name for p in case.iterdir())
    assert [n.split("_")[-1] for n in names] == ["flair.nii.gz", "seg.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    result = run_cli("phantom", str(tmp_path), "0")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "at least 1" in result.stderr


def test_every_subcommand_has_help():
    for command in ("phantom", "demo"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage: slicer-samba " + command in result.stdout
