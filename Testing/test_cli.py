"""`slicer-samba` end to end, as a user runs it: phantom, segment, evaluate and bad input (phantom, help and
benchmark in a new interpreter; segment and evaluate through cli.main in this one). The demo: test_demo.py."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import slicerio
from tiny_bundles import write_tiny_samba_bundle

from SAMBACore import cli
from SAMBACore.brats import LABEL_SEGMENTS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "SAMBACore.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def run_main(capsys):
    """The command in this process (cli.main, what the slicer-samba script calls): the same result as
    run_cli without a new interpreter's imports (torch, MONAI: about 15 s each time on 2 cores)."""
    def run(*args):
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


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
    for command in ("phantom", "demo", "segment", "train", "bench", "evaluate", "train sam"):
        result = run_cli(*command.split(), "--help")
        assert result.returncode == 0 and "usage: slicer-samba " + command in result.stdout


def test_help_imports_neither_torch_nor_slicer():
    # `--help` must stay instant, and the benchmarks must start where slicer-core is not
    # installed (a GPU machine with torch only): the CLI's own imports are light.
    code = ("import sys; from SAMBACore.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'slicer', 'vtkmodules', 'SimpleITK'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_s_torch_free_copies_of_the_choices_match_the_pipeline_s():
    from SAMBASegmentLib import commands, core_outline, pipeline

    assert commands.CORE_METHODS == core_outline.CORE_METHODS
    assert commands.DEFAULT_CORE == core_outline.DEFAULT_CORE
    assert set(commands.PRESET_CHOICES) == {"auto", *pipeline.PRESETS}
    assert set(commands.PROMPT_CHOICES) == set(pipeline.PROMPTS) - {"mask"}


def test_the_module_s_core_field_offers_the_pipeline_s_methods_and_default():
    """SAMBASegment.py cannot import the Lib at load (torch may not be installed yet): its copies are checked here."""
    import ast
    from pathlib import Path

    from SAMBASegmentLib import core_outline

    tree = ast.parse((Path(__file__).parents[1] / "SAMBASegment" / "SAMBASegment.py").read_text())
    field = next(s for c in tree.body if isinstance(c, ast.ClassDef) for s in c.body
                 if isinstance(s, ast.AnnAssign) and getattr(s.target, "id", None) == "core")
    choices = ast.literal_eval(field.annotation.slice.elts[1].args[0])  # Annotated[str, Choice([...])]
    assert set(choices) == set(core_outline.CORE_METHODS) and ast.literal_eval(field.value) == core_outline.DEFAULT_CORE


BLOCK_SLICER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"slicer", "vtk", "vtkmodules", "SimpleITK", "slicerio"}:
            raise ImportError("not installed on this machine: " + name)
sys.meta_path.insert(0, Block())
"""


def test_benchmarks_run_without_slicer_core(tmp_path):
    # What a lent GPU machine has: torch and the model libraries, no slicer-core (vtk alone is
    # larger than what can be carried there). A sitecustomize makes those imports fail.
    (tmp_path / "sitecustomize.py").write_text(BLOCK_SLICER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "SAMBACore.cli", "bench", "memory", "--shape", "24,32,32", "--modes", "full,cascade",
         "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["modes"]) == {"full", "cascade"} and report["measure"] == "both"
    assert all(mode["peak_bytes"] >= 0 and mode["tensor_peak_bytes"] > 0 for mode in report["modes"].values())
    blocked = subprocess.run([sys.executable, "-c", "import slicer"], capture_output=True, text=True, env=env)
    assert "not installed on this machine" in blocked.stderr  # the block was in force


@pytest.fixture(scope="module")
def tiny_bundle_and_case(tmp_path_factory):
    """A tiny random SAMBA bundle (untrained YOLO) and one phantom case: for the plumbing, not the quality."""
    from SAMBACore.phantom import write_case

    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_samba_bundle(folder / "bundle")
    return folder / "bundle", write_case(folder / "cases", "CASE", seed=3)


def test_segment_with_a_bundle_and_an_roi(tiny_bundle_and_case, tmp_path, run_main):
    bundle, case = tiny_bundle_and_case
    out = tmp_path / "out.seg.nrrd"
    # BraTS voxel (i, j, k) sits at LPS (i, j - 239, k), i.e. RAS (-i, 239 - j, k).
    result = run_main("segment", str(case), "-o", str(out), "--bundle", str(bundle),
                     "--roi=-80,150,40,-120,100,80", "--agreement", str(tmp_path / "agree.nrrd"),
                     "--volumes", str(tmp_path / "volumes.csv"))
    assert result.returncode == 0, result.stderr
    assert out.exists() and (tmp_path / "agree.nrrd").exists()
    assert "Volumes (mL)" in result.stdout and "Time per stage" in result.stdout
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == [s.name for s in LABEL_SEGMENTS.values()]
    # The volume table (Slicer's table format: .csv plus .schema.csv) agrees with the segmentation.
    with open(tmp_path / "volumes.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert list(row) == ["Case", "NETC (mL)", "SNFH (mL)", "ET (mL)", "TC (mL)", "WT (mL)"]
    assert row["Case"] == case.name and (tmp_path / "volumes.schema.csv").exists()
    voxel_ml = float(np.prod(np.abs(np.diag(seg["ijkToLPS"][:3, :3])))) / 1000  # the phantom's grid is axis-aligned
    for segment in seg["segments"]:
        count = int(np.count_nonzero(seg["voxels"] == segment["labelValue"]))
        assert float(row[f"{segment['id']} (mL)"]) == pytest.approx(count * voxel_ml, rel=1e-5, abs=1e-3)  # 6 digits
    wt = sum(float(row[f"{region} (mL)"]) for region in ("NETC", "SNFH", "ET"))
    assert float(row["WT (mL)"]) == pytest.approx(wt, rel=1e-5)
    bad_table = run_main("segment", str(case), "-o", str(out), "--bundle", str(bundle), "--volumes", "v.txt")
    assert bad_table.returncode == 2 and ".csv or .tsv" in bad_table.stderr

    bad = run_main("segment", str(case), "-o", str(out), "--bundle", str(bundle), "--roi", "1,2,3")
    assert bad.returncode == 2 and "six numbers" in bad.stderr
    missing = run_main("segment", str(case), "-o", str(out), "--bundle", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "No model bundle" in missing.stderr


def test_segment_a_folder_of_cases_goes_on_past_a_broken_one(tiny_bundle_and_case, tmp_path, run_main):
    bundle, case = tiny_bundle_and_case
    data = tmp_path / "data"
    for name in ("A", "B"):
        shutil.copytree(case, data / name)
    shutil.copytree(case, data / "C-broken")
    broken = next((data / "C-broken").glob("*t2w*"))  # cut short, as by an interrupted copy (a missing
    broken.write_bytes(broken.read_bytes()[:1000])     # contrast is no longer an error: test_contrast_subsets)
    out = tmp_path / "out"
    # --preset fast (FLAIR axial votes): this is about the batch, not about the votes.
    result = run_main("segment", str(data), "-o", str(out), "--bundle", str(bundle), "--preset", "fast", "--prompt", "yolo",
                     "--volumes", str(tmp_path / "volumes.csv"), "--agreement", str(tmp_path / "agreement"))
    assert result.returncode == 2  # not all done: said so, after doing the rest
    assert "Skipped C-broken" in result.stderr and "1 of 3 case(s) were skipped (C-broken)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["A.seg.nrrd", "B.seg.nrrd"]
    assert sorted(p.name for p in (tmp_path / "agreement").iterdir()) == ["A-agreement.nrrd", "B-agreement.nrrd"]
    with open(tmp_path / "volumes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["Case"] for row in rows] == ["A", "B"]
    assert rows[0]["WT (mL)"] == rows[1]["WT (mL)"]  # the same images give the same volumes

    single_output = run_main("segment", str(data), "-o", str(tmp_path / "x.seg.nrrd"), "--bundle", str(bundle))
    assert single_output.returncode == 2 and "give a folder for -o" in single_output.stderr
    roi = run_main("segment", str(data), "-o", str(out), "--bundle", str(bundle), "--roi=1,2,3,4,5,6")
    assert roi.returncode == 2 and "one case's box" in roi.stderr
    case_a = data / "A"
    both = run_main("segment", str(case_a), "-o", str(tmp_path / "a.seg.nrrd"), "--bundle", str(bundle),
                    "--roi=1,2,3,4,5,6", "--prompt", "cascade")
    assert both.returncode == 2 and "for --prompt roi" in both.stderr and "not --prompt cascade" in both.stderr
    assert not (tmp_path / "a.seg.nrrd").exists()


def test_evaluate_scores_every_case(tiny_bundle_and_case, run_main):
    bundle, case = tiny_bundle_and_case
    result = run_main("evaluate", str(case.parent), "--bundle", str(bundle), "--prompt", "roi", "--preset", "fast",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cases"] == 1 and set(report["mean"]) == {"ET", "TC", "WT"}
    assert 0 <= report["mean"]["WT"]["dice"] <= 1 and report["roi_margin"] == 5
    tight = run_main("evaluate", str(case.parent), "--bundle", str(bundle), "--prompt", "roi", "--roi-margin", "0",
                     "--preset", "fast", "--json")
    assert tight.returncode == 0 and json.loads(tight.stdout.strip().splitlines()[-1])["roi_margin"] == 0
    wrong = run_main("evaluate", str(case.parent), "--bundle", str(bundle), "--roi-margin", "3")
    assert wrong.returncode == 2 and "--roi-margin grows the true box of --prompt roi" in wrong.stderr
