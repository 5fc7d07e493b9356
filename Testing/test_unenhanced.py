"""Unenhanced copies: an enhancing phantom made non-enhancing, for voting-net training (unenhanced.py)."""

import json

import numpy as np
import pytest

from SAMBACore.brats import ET, NETC, SNFH
from SAMBACore.phantom import make_case, write_cases
from SAMBASegmentLib import training
from SAMBASegmentLib.unenhanced import T1, T1CE, can_erase, erase_enhancement
from SAMBASegmentLib.voting import image_channels


@pytest.fixture(scope="module")
def case():
    phantom = make_case(seed=3)
    return image_channels(phantom.images, phantom.labels.shape), phantom.labels


def _excess(channels, where, slope, intercept):
    """How much brighter T1CE is than the healthy brain's T1 -> T1CE line predicts, on average over `where`."""
    return float((channels[T1CE][where] - (intercept + slope * channels[T1][where])).mean())


def test_the_copy_has_no_enhancing_tumour_and_leaves_the_rest_alone(case):
    channels, labels = case
    assert can_erase(channels, labels)
    copied, copied_labels = erase_enhancement(channels, labels)
    assert not (copied_labels == ET).any()
    assert (copied_labels[labels == ET] == NETC).all()
    assert np.array_equal(copied_labels[labels != ET], labels[labels != ET])
    core = np.isin(labels, (NETC, ET))
    assert np.array_equal(copied[:, ~core], channels[:, ~core])
    assert np.array_equal(copied[[0, 2, 3]], channels[[0, 2, 3]])  # only T1CE changes
    assert (labels == ET).any() and not np.array_equal(copied, channels)  # the inputs are kept as they were


def test_the_enhancement_is_gone_on_t1ce(case):
    """On the phantom, ET is T1CE-bright beyond what its T1 predicts; in the copy it is not."""
    channels, labels = case
    healthy = (channels[T1] != 0) & (labels == 0)
    slope, intercept = np.polyfit(channels[T1][healthy], channels[T1CE][healthy], 1)
    enhancing = labels == ET
    assert _excess(channels, enhancing, slope, intercept) > 1.0
    copied, _ = erase_enhancement(channels, labels)
    assert abs(_excess(copied, enhancing, slope, intercept)) < 0.05
    assert copied[T1CE][enhancing].mean() < channels[T1CE][enhancing].mean() - 1.0


def test_no_copy_without_t1_or_without_enhancing_tumour(case):
    channels, labels = case
    no_t1 = channels.copy()
    no_t1[T1] = 0
    not_enhancing = np.where(labels == ET, SNFH, labels)
    for args in ((no_t1, labels), (channels, not_enhancing)):
        assert not can_erase(*args)
        with pytest.raises(ValueError, match="needs T1 and enhancing tumour"):
            erase_enhancement(*args)


def test_training_records_which_cases_were_copied(tmp_path):
    folder = tmp_path / "cases"
    write_cases(folder, 2, seed=0)
    bundle_dir = tmp_path / "bundle"
    training.train_voting(folder, bundle_dir, steps=1, patch=32, votes="simulated", unenhanced_copies=1.0,
                          log=lambda s: None)
    record = json.loads((bundle_dir / "manifest.json").read_text())["training"]["voting"]
    names = sorted(p.name for p in folder.iterdir())
    assert record["unenhanced_copies"].endswith(f"2 copies: {', '.join(names)}")
    with pytest.raises(ValueError, match="add --votes simulated"):
        training.train_voting(folder, tmp_path / "sam", steps=1, unenhanced_copies=0.5, log=lambda s: None)
    assert not (tmp_path / "sam").exists()
