"""Phantom cases: deterministic, BraTS-shaped, nested labels inside the brain, plausible contrasts."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SAMBACore.brats import ET, NETC, SNFH, find_case_files, region_masks
from SAMBACore.phantom import SHAPE, make_case, write_case


@pytest.fixture(scope="module")
def cases():
    return {seed: make_case(seed) for seed in (0, 1, 2)}


@pytest.fixture(scope="module")
def lowres():
    return make_case(0, lowres=True)


def test_same_seed_same_case_other_seed_other_tumour(cases):
    again = make_case(0)
    np.testing.assert_array_equal(again.labels, cases[0].labels)
    for m in again.images:
        np.testing.assert_array_equal(again.images[m], cases[0].images[m])
    centres = [np.argwhere(c.labels > 0).mean(axis=0) for c in cases.values()]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]) > 5
    volumes_ml = [np.count_nonzero(c.labels) / 1000 for c in cases.values()]
    assert all(5 <= v <= 250 for v in volumes_ml), volumes_ml
    assert len({round(v) for v in volumes_ml}) == 3


def test_shapes_types_and_labels(cases):
    for case in cases.values():
        assert case.labels.shape == SHAPE and case.labels.dtype == np.uint8
        assert set(np.unique(case.labels)) <= {0, NETC, SNFH, ET}
        for image in case.images.values():
            assert image.shape == SHAPE and image.dtype == np.float32 and np.isfinite(image).all()


def test_tumour_is_inside_the_brain_and_nested(cases):
    for case in cases.values():
        brain = case.images["t1"] > 0
        assert not (case.labels.astype(bool) & ~brain).any()
        masks = region_masks(case.labels)
        # The core (NETC + ET) is wrapped by edema: most of its outer surface touches SNFH, not brain.
        core = masks["TC"]
        shell = ndimage.binary_dilation(core) & ~core
        assert np.mean(case.labels[shell] == SNFH) > 0.7
        assert masks["ET"].any()


def test_relative_contrasts_per_modality(cases):
    for case in cases.values():
        im, lab = case.images, case.labels
        brain = im["t1"] > 0
        healthy = brain & (lab == 0)
        # Normal white matter: the brightest healthy tissue on T1.
        wm = healthy & (im["t1"] > np.percentile(im["t1"][healthy], 80))
        assert im["flair"][lab == SNFH].mean() > 1.3 * im["flair"][wm].mean()
        assert im["t1ce"][lab == ET].mean() > 1.2 * im["t1ce"][wm].mean()
        if np.count_nonzero(lab == NETC) > 1000:  # a core of a few voxels is all partial volume
            assert im["t1ce"][lab == ET].mean() > 2 * im["t1ce"][lab == NETC].mean()
        csf_on_t1 = healthy & (im["t1"] < np.percentile(im["t1"][healthy], 5))
        assert im["t2"][csf_on_t1].mean() > im["t2"][wm].mean()


def test_lowres_is_blurrier_along_z_and_noisier(cases, lowres):
    def z_detail(image):  # energy of slice-to-slice change inside the brain
        return np.abs(np.diff(image, axis=0))[(image[1:] > 0) & (image[:-1] > 0)].mean()

    def in_plane_noise(image):  # high-frequency residual within slices
        smooth = ndimage.uniform_filter(image, size=(1, 3, 3))
        inside = ndimage.binary_erosion(image > 0, iterations=3)
        return np.abs(image - smooth)[inside].mean() / image[inside].mean()

    normal = cases[0].images["flair"]
    low = lowres.images["flair"]
    assert z_detail(low) / in_plane_noise(low) < z_detail(normal) / in_plane_noise(normal)
    assert in_plane_noise(low) > in_plane_noise(normal)
    np.testing.assert_array_equal(lowres.labels, cases[0].labels)  # the truth stays on the 1 mm grid


@pytest.mark.parametrize("naming, et_value", [("2023", 3), ("2021", 4)])
def test_written_case_follows_brats_naming(tmp_path, naming, et_value):
    folder = write_case(tmp_path, "CASE", seed=0, naming=naming)
    files = find_case_files(folder, need_seg=True)
    assert files["t1ce"].name == ("CASE-t1c.nii.gz" if naming == "2023" else "CASE_t1ce.nii.gz")
    seg = sitk.ReadImage(str(files["seg"]))
    assert seg.GetSize() == (240, 240, 155) and seg.GetSpacing() == (1.0, 1.0, 1.0)
    values = set(np.unique(sitk.GetArrayFromImage(seg)).tolist())
    assert et_value in values and ({3, 4} - {et_value}).isdisjoint(values)
