"""scripts/thick_slices.py, which makes the real cases' thick-slice versions measured in docs/results.md."""

import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "thick_slices.py"
spec = importlib.util.spec_from_file_location("thick_slices", SCRIPT)
thick_slices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(thick_slices)


def _image(array, spacing=(0.9, 0.8, 1.0), origin=(10.0, -20.0, 30.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # not the identity: the origin must follow it
    return image


def test_thick_grid_averages_slabs_and_puts_them_where_they_were_scanned():
    array = np.broadcast_to(np.arange(12, dtype=np.int16)[:, None, None] * 10, (12, 3, 4)).copy()
    image = _image(array)
    thick = thick_slices.thick_image(image, 5, "thick", labels=False)
    np.testing.assert_allclose(sitk.GetArrayFromImage(thick)[:, 0, 0], [20.0, 70.0])  # slices 0-4, 5-9; 10-11 left out
    assert thick.GetSpacing() == (0.9, 0.8, 5.0) and thick.GetDirection() == image.GetDirection()
    # the first slab's centre is slice 2's centre: the same point in both grids
    np.testing.assert_allclose(thick.TransformIndexToPhysicalPoint((1, 2, 0)),
                               image.TransformIndexToPhysicalPoint((1, 2, 2)))
    labels = thick_slices.thick_image(_image(array.astype(np.uint8)), 5, "thick", labels=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels)[:, 0, 0], [20, 70])  # the centre slices' labels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)  # the input is unchanged


def test_fine_grid_interpolates_between_slab_centres_on_the_original_grid():
    array = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None] ** 2, (12, 2, 2)).copy()
    image = _image(array)
    fine = thick_slices.thick_image(image, 5, "fine", labels=False)
    values = sitk.GetArrayFromImage(fine)[:, 0, 0]
    means = [np.mean(np.arange(0, 5) ** 2), np.mean(np.arange(5, 10) ** 2)]
    np.testing.assert_allclose(values[[2, 7]], means, rtol=1e-6)  # slab centres: the slab means
    np.testing.assert_allclose(values[4], means[0] + 0.4 * (means[1] - means[0]), rtol=1e-6)  # linear between
    np.testing.assert_allclose(values[:2], means[0]) and np.testing.assert_allclose(values[8:], means[1])  # held at the ends
    assert fine.GetSpacing() == image.GetSpacing() and fine.GetOrigin() == image.GetOrigin()
    assert thick_slices.thick_image(image, 5, "fine", labels=True) is image  # labels stay as they were
