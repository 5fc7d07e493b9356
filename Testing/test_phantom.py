"""Phantom cases: determinism, label geometry, per-modality contrasts, low-field look, files."""

import numpy as np
import pytest
from scipy import ndimage

from SAMBACore import brats, phantom

SEEDS = range(5)


@pytest.fixture(scope="module")
def cases():
    return {seed: phantom.make_case(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def lowres():
    return phantom.make_case(0, lowres=True)


def _normal(case, tissue, threshold):
    """Voxels almost purely of one healthy tissue, away from the tumour."""
    far = ~ndimage.binary_dilation(case.labels > 0, iterations=3)
    return (getattr(phantom._anatomy(), tissue) > threshold) & far


def test_shapes_dtypes_and_geometry(cases):
    case = cases[0]
    assert set(case.images) == set(brats.MODALITIES)
    for image in case.images.values():
        assert image.shape == phantom.SHAPE == (155, 240, 240)
        assert image.dtype == np.float32
        assert image.min() >= 0 and image[0, 0, 0] == 0  # skull-stripped: background exactly 0
        assert 300 < np.median(image[image > 0]) < 1000  # BraTS-like scale
    assert case.labels.dtype == np.uint8 and case.labels.shape == phantom.SHAPE
    assert set(np.unique(case.labels)) <= {0, 1, 2, 3}
    assert case.spacing == (1.0, 1.0, 1.0) and case.origin == (0.0, -239.0, 0.0)


def test_same_seed_is_bit_identical(cases):
    again = phantom.make_case(1)
    np.testing.assert_array_equal(again.labels, cases[1].labels)
    for key in brats.MODALITIES:
        np.testing.assert_array_equal(again.images[key], cases[1].images[key])


def test_seeds_give_different_tumours(cases):
    centroids = [np.argwhere(c.labels > 0).mean(axis=0) for c in cases.values()]
    volumes = [(c.labels > 0).sum() / 1000 for c in cases.values()]  # mL at 1 mm
    for i in range(len(centroids)):
        for j in range(i):
            assert np.linalg.norm(centroids[i] - centroids[j]) > 5
    assert all(8 <= v <= 160 for v in volumes), volumes
    assert max(volumes) > 2 * min(volumes), volumes
    # Label mix varies too: some cores almost without necrosis, some largely necrotic.
    necrotic = [(c.labels == brats.NETC).sum() / np.isin(c.labels, (1, 3)).sum() for c in cases.values()]
    assert min(necrotic) < 0.1 and max(necrotic) > 0.2, necrotic


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_are_nested_inside_the_brain(cases, seed):
    labels = cases[seed].labels
    assert (cases[seed].images["t1"][labels > 0] > 0).all()  # tumour only where there is brain
    assert (labels == brats.ET).sum() > 500 and (labels == brats.SNFH).sum() > 2000
    core = np.isin(labels, (brats.NETC, brats.ET))
    ring = ndimage.binary_dilation(core) & ~core
    assert (labels[ring] == 0).mean() < 0.25  # edema surrounds the core
    # Necrosis sits inside the enhancing rim: it rarely touches edema or background.
    necrosis = labels == brats.NETC
    if necrosis.sum() > 200:
        around = ndimage.binary_dilation(necrosis) & ~necrosis
        assert (labels[around] == brats.ET).mean() > 0.7


@pytest.mark.parametrize("seed", SEEDS)
def test_relative_contrasts(cases, seed):
    case = cases[seed]
    mean = {k: lambda mask, k=k: float(case.images[k][mask].mean()) for k in brats.MODALITIES}
    wm, gm, csf = _normal(case, "wm", 0.95), _normal(case, "gm", 0.8), _normal(case, "csf", 0.95)
    edema, et, netc = (case.labels == v for v in (brats.SNFH, brats.ET, brats.NETC))
    assert mean["t1"](wm) > mean["t1"](gm) > mean["t1"](csf)
    assert mean["t1ce"](et) > 1.15 * mean["t1ce"](wm)
    assert mean["t2"](csf) > mean["t2"](gm) > mean["t2"](wm)
    assert mean["t2"](edema) > mean["t2"](wm)
    assert mean["flair"](edema) > 1.3 * mean["flair"](wm)
    assert mean["flair"](csf) < mean["flair"](wm)
    if netc.sum() > 1000:
        assert mean["t1ce"](et) > mean["t1ce"](netc)
        assert mean["t1"](netc) < mean["t1"](wm)


def _z_over_x_gradient(image, mask):
    dz = np.abs(np.diff(image, axis=0))[mask[1:] & mask[:-1]].mean()
    dx = np.abs(np.diff(image, axis=2))[mask[:, :, 1:] & mask[:, :, :-1]].mean()
    return dz / dx, dx / image[mask].mean()


def test_lowres_is_blurred_along_z_and_noisier(cases, lowres):
    np.testing.assert_array_equal(lowres.labels, cases[0].labels)  # same anatomy and tumour
    wm = _normal(cases[0], "wm", 0.95)
    for key in brats.MODALITIES:
        z_ratio_hi, noise_hi = _z_over_x_gradient(cases[0].images[key], wm)
        z_ratio_lo, noise_lo = _z_over_x_gradient(lowres.images[key], wm)
        assert z_ratio_hi > 0.8 and z_ratio_lo < 0.5 * z_ratio_hi  # thick slices smear along z
        assert noise_lo > 1.5 * noise_hi  # in-plane voxel-to-voxel noise
    # Lower contrast: FLAIR edema stands out less from white matter.
    edema = cases[0].labels == brats.SNFH
    contrast = [c.images["flair"][edema].mean() / c.images["flair"][wm].mean() for c in (cases[0], lowres)]
    assert contrast[1] < contrast[0]


@pytest.mark.parametrize(
    "naming, suffixes, et_value",
    [("2021", ("t1", "t1ce", "t2", "flair", "seg"), 4), ("2023", ("t1n", "t1c", "t2w", "t2f", "seg"), 3)],
)
def test_write_cases(tmp_path, cases, naming, suffixes, et_value):
    sitk = pytest.importorskip("SimpleITK")
    calls = []
    folders = phantom.write_cases(tmp_path, 1, seed=2, naming=naming, progress=lambda *a: calls.append(a))
    case_id = "PHANTOM_00002" if naming == "2021" else "PHANTOM-00002-000"
    assert folders == [tmp_path / case_id] and calls == [(0, 1, folders[0])]
    sep = brats.SEPARATOR[naming]
    assert sorted(p.name for p in folders[0].iterdir()) == sorted(f"{case_id}{sep}{s}.nii.gz" for s in suffixes)
    seg = sitk.ReadImage(str(folders[0] / f"{case_id}{sep}seg.nii.gz"))
    assert seg.GetSize() == (240, 240, 155) and seg.GetSpacing() == (1.0, 1.0, 1.0)
    assert seg.GetOrigin() == (0.0, -239.0, 0.0)
    values = sitk.GetArrayFromImage(seg)
    assert set(np.unique(values)) == {0, 1, 2, et_value}
    np.testing.assert_array_equal(brats.to_internal_labels(values, naming), cases[2].labels)
    flair = sitk.ReadImage(str(folders[0] / brats.case_file_name(case_id, "flair", naming)))
    assert flair.GetSize() == (240, 240, 155)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(flair), cases[2].images["flair"])
