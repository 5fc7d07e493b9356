"""A 2D model on a colour photo loaded in Slicer (a vector volume of one slice): the skin-lesion case."""

import numpy as np
import pytest

from R2UNetSegmentLib.inference import normalise, segment
from R2UNetSegmentLib.logic import LESION, R2UNetSegmentCore, volumes_ml
from R2UNetSegmentLib.r2unet import R2UNet
from R2UNetSegmentLib.r2unet_bundle import save_r2unet_bundle
from SAMBACore import bridge
from SAMBACore.inputs import InputError

CONFIG = {"in_channels": 3, "out_channels": 2, "spatial_dims": 2, "base_width": 4, "depth": 2, "attention": True}


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory, reseed):
    reseed()  # conftest.py
    model = R2UNet(**CONFIG).eval()
    folder = tmp_path_factory.mktemp("photo") / "bundle"
    save_r2unet_bundle(folder, {"r2unet": (model, CONFIG)})
    return folder, model


def test_a_photo_is_segmented_as_one_2d_image_on_its_own_grid(scene, photo_bundle):
    folder, model = photo_bundle
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 255, (1, 45, 60, 3)).astype(np.uint8)
    matrix = np.diag([0.05, 0.05, 1.0, 1.0])  # 0.05 mm pixels, as a dermoscope's
    matrix[:3, 3] = (3.0, -2.0, 0.0)
    photo = bridge.volume_from_array(scene, rgb, matrix, "lesion photo")
    assert photo.IsA("vtkMRMLVectorVolumeNode")

    core = R2UNetSegmentCore()
    request = core.prepare(scene, photo, bundle=str(folder), model="r2unet", mode="full")
    assert request.image.shape == (3, 1, 45, 60) and request.flat
    assert request.spacing is None  # a 2D model runs on the photo's own pixels: its 0.05 mm grid is not resampled
    result = core.compute(request)
    expected, _, _ = segment(normalise(np.moveaxis(rgb[0], -1, 0).astype(np.float32)), model=model, mode="full")
    np.testing.assert_array_equal(result.labels, expected[None])

    segmentation = core.finish(scene, result, photo)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == LESION[1].name
    back = bridge.labels_from_segmentation(segmentation, photo, {LESION[1].key: 1})
    np.testing.assert_array_equal(back, result.labels)
    # Its size is the lesion's (not a BraTS region's): pixels x 0.05 x 0.05 x 1 mm, in mL.
    assert volumes_ml(result.labels, result.classes, photo) == {
        "lesion": pytest.approx(np.count_nonzero(result.labels) * 0.0025 / 1000)}


def test_a_2d_model_refuses_a_volume_of_many_slices(scene, photo_bundle):
    folder, _ = photo_bundle
    stack = bridge.volume_from_array(scene, np.random.default_rng(1).random((5, 20, 20, 3), np.float32), np.eye(4), "a stack")
    with pytest.raises(InputError, match="2D .*5 slices: select a single-slice image"):
        R2UNetSegmentCore().prepare(scene, stack, bundle=str(folder), model="r2unet", mode="full")
