"""Plots of the numbers (SAMBACore/plots.py): Dice per region per case, LoRA training curves; and
`evaluate --plot --preview` on a tiny random SAMBA bundle."""

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_r2unet_training import write_tiny_cases
from tiny_bundles import write_tiny_samba_bundle

from SAMBACore.brats import REGION_SEGMENTS
from SAMBACore.cli import main
from SAMBACore.plots import plot_dice, plot_training_curve


def coloured(picture, colour, tolerance=0.1):
    return np.linalg.norm(picture[..., :3] - np.asarray(colour), axis=-1) < tolerance


def test_dice_plot_shows_every_case(tmp_path):
    per_case = [{"case": f"C{n}", "metrics": {r: {"dice": d} for r, d in zip(("ET", "TC", "WT"), dice)}}
                for n, dice in enumerate([(0.8, 0.85, 0.9), (0.7, 0.75, 0.2), (float("nan"), 0.6, 0.88)])]
    path = plot_dice(per_case, tmp_path / "dice.png")
    picture = mpimg.imread(path)
    assert picture.shape[1] > 1000
    for region in ("ET", "TC", "WT"):  # one dot per case, in the region's colour
        assert coloured(picture, REGION_SEGMENTS[region].color).sum() > 30
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_dice([], tmp_path / "none.png")


def test_training_curve_is_written_atomically(tmp_path):
    info = {"validation": {"base": 0.4, "curve": [0.45, 0.5, 0.52], "final": 0.52, "metric": "WT"},
            "training": {"loss_curve": [0.6, 0.5, 0.45]}}
    path = plot_training_curve(info, tmp_path / "curve.png")
    assert mpimg.imread(path).shape[0] > 500
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]  # no temporary file left


@pytest.fixture(scope="module")
def tiny_samba(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samba")
    write_tiny_samba_bundle(folder / "bundle")
    return folder / "bundle", write_tiny_cases(folder / "cases", [3, 4])


def test_evaluate_plots_dice_and_previews_each_case(tiny_samba, tmp_path, capsys):
    bundle, cases = tiny_samba
    assert main(["evaluate", str(cases), "--bundle", str(bundle), "--prompt", "roi", "--device", "cpu",
                 "--plot", str(tmp_path / "dice.png"), "--preview", str(tmp_path / "previews")]) == 0
    out = capsys.readouterr().out
    assert f"Dice plot: {tmp_path / 'dice.png'}" in out and mpimg.imread(tmp_path / "dice.png").shape[1] > 1000
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["TINY-00003-000.png", "TINY-00004-000.png"]
    assert main(["evaluate", str(cases), "--bundle", str(bundle), "--plot", str(tmp_path / "dice.pdf")]) == 2
    assert "must end in .png" in capsys.readouterr().err


def test_segment_preview_shows_the_truth_when_the_case_has_one(tiny_samba, tmp_path, capsys):
    bundle, cases = tiny_samba
    case = cases / "TINY-00003-000"
    assert main(["segment", str(case), "-o", str(tmp_path / "s.seg.nrrd"), "--bundle", str(bundle), "--device", "cpu",
                 "--roi=-2,-2,0,-20,-20,18", "--preview", str(tmp_path / "s.png")]) == 0
    assert f"Preview: {tmp_path / 's.png'}" in capsys.readouterr().out
    assert mpimg.imread(tmp_path / "s.png").shape[1] == 1200
