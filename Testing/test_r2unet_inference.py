"""R2UNetSegment inference: patch-wise equals full-volume, the cascade's wiring, the memory estimate, auto mode."""

import numpy as np
import pytest
import torch
from R2UNetSegmentLib.bench_memory import prepare_rss_measurement
from R2UNetSegmentLib.cascade_inputs import downsample, upsample_labels
from R2UNetSegmentLib.inference import (
    brain_box,
    brain_mask,
    drop_small_pieces,
    Cascade,
    normalise,
    predict_cascade,
    predict_full,
    predict_patches,
    segment,
)
from R2UNetSegmentLib.memory import PeakMemory
from R2UNetSegmentLib.memory_plan import SMALLEST_AUTO_PATCH, MemoryBudgetError, Plan, choose_mode, estimate_peak_bytes
from R2UNetSegmentLib.r2unet import R2UNet
from R2UNetSegmentLib.spacing import training_shape
from R2UNetSegmentLib.unet3d import UNet3D
from torch import nn

from SAMBACore.background import Cancelled


def random_image(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_patch_wise_equals_full_volume_unet3d():
    model = UNet3D(2, 3, (4, 8)).eval()
    # Neither a multiple of the patch (14) nor of size_multiple (2); the margin is 9, so a grown
    # window (at most 14 + 2 * 9 + 1 voxels) is smaller than the volume on every axis.
    image = random_image((2, 34, 37, 40))
    full = predict_full(model, image)
    patches = predict_patches(model, image, patch_size=14)
    assert patches.shape == full.shape == (3, 34, 37, 40)
    np.testing.assert_allclose(patches, full, atol=1e-5)
    # Without the context the windows see zero padding at their borders instead of the volume.
    assert np.abs(predict_patches(model, image, patch_size=14, margin=0) - full).max() > 1e-3


def test_patch_wise_equals_full_image_r2unet_with_attention_2d():
    model = R2UNet(2, 3, spatial_dims=2, base_width=4, depth=1, attention=True).eval()
    image = random_image((2, 120, 133), seed=1)  # the margin is 25: windows grow to at most 32 + 51
    full = predict_full(model, image)
    patches = predict_patches(model, image, patch_size=32)
    np.testing.assert_allclose(patches, full, atol=1e-5)
    assert np.abs(predict_patches(model, image, patch_size=32, margin=0) - full).max() > 1e-3


class Threshold(nn.Module):
    """Stand-in stage 1: class 1 where channel 0 > 0.5, else background (a fixed 1x1 conv)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 20.0
            self.conv.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x):
        return self.conv(x)


class OneHotReader(nn.Module):
    """Stand-in stage 2: its logits are the one-hot channels (image channel weighted 0), times 10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 1] = self.conv.weight[1, 2] = 10.0

    def forward(self, x):
        return self.conv(x)


def test_cascade_passes_stage1_labels_to_stage2_one_hot():
    shape = (30, 41, 37)
    zz, yy, xx = np.indices(shape)
    sphere = ((zz - 14) ** 2 + (yy - 20) ** 2 + (xx - 17) ** 2 < 10**2).astype(np.float32)
    cascade = Cascade(Threshold(), OneHotReader(), factor=0.5)
    probs = predict_cascade(cascade, sphere[None], patch_size=16)
    assert probs.shape == (2,) + shape
    expected = upsample_labels((downsample(sphere[None], 0.5)[0] > 0.5).astype(np.uint8), shape)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(probs.argmax(0), expected)
    # Stage 2's image weight is 0: only the one-hot channels can put class 1 where stage 1 did.
    assert probs[1][expected == 1].min() > 0.99 and probs[1][expected == 0].max() < 0.01


def test_cascade_stages_must_fit_together():
    cascade = Cascade(Threshold(), UNet3D(2, 2, (4, 8)), factor=0.5)
    with pytest.raises(ValueError, match="stage 2 takes 2 channels"):
        predict_cascade(cascade, random_image((1, 12, 12, 12)))


def test_estimate_agrees_with_measured_peak():
    model = UNet3D(1, 2, (16, 32)).eval()
    image = random_image((1, 80, 80, 80))  # 16 channels at full size: 33 MB a tensor, beyond malloc's heap
    estimate = estimate_peak_bytes(model, image.shape, "full")
    prepare_rss_measurement()
    with PeakMemory("cpu") as peak:
        predict_full(model, image)
    assert estimate > 100 * 1024**2
    assert 0.5 < peak.peak_bytes / estimate < 2, (peak.peak_bytes, estimate)


def test_choose_mode_takes_the_fastest_that_fits():
    model = UNet3D(4, 4, (8, 16, 32))
    # Stage 2 one level shallower, as in the study's set-up: a smaller margin, smaller windows.
    cascade = Cascade(UNet3D(4, 4, (8, 16, 32)), UNet3D(8, 4, (8, 16)))
    shape = (4, 64, 96, 96)
    estimates = {
        "full": estimate_peak_bytes(model, shape, "full", 32),
        "patch": estimate_peak_bytes(model, shape, "patch", 32),
        "cascade": estimate_peak_bytes(cascade, shape, "cascade", 32),
    }
    assert estimates["full"] > estimates["patch"] > estimates["cascade"]
    for mode, estimate in estimates.items():
        assert choose_mode(model, cascade, shape, estimate, 32) == Plan(mode, 32, estimate)
    assert choose_mode(None, cascade, shape, estimates["full"], 32).mode == "cascade"

    # Nothing fits with 32-voxel patches: auto halves them (smaller windows) before giving up.
    smaller = estimate_peak_bytes(cascade, shape, "cascade", 16)
    assert smaller < estimates["cascade"]
    assert choose_mode(model, cascade, shape, estimates["cascade"] - 1, 32) == Plan("cascade", 16, smaller)
    assert SMALLEST_AUTO_PATCH == 16
    with pytest.raises(MemoryBudgetError, match=r"the smallest, cascade \(16-voxel patches\), needs about \d+ MB") \
            as error:
        choose_mode(model, cascade, shape, smaller - 1, 32)
    assert isinstance(error.value, ValueError)
    with pytest.raises(MemoryBudgetError, match=r"smallest, patch \(16-voxel patches\)"):
        choose_mode(model, None, shape, 1, 32)


def test_segment_auto_labels_and_cancel():
    model = UNet3D(2, 3, (4, 8)).eval()
    image = random_image((2, 24, 24, 64))  # 20 windows of at most 24 x 24 x 35
    budget = estimate_peak_bytes(model, image.shape, "patch", 16)
    assert budget < estimate_peak_bytes(model, image.shape, "full")
    labels, probs, mode = segment(image, model=model, budget_bytes=budget, patch_size=16)
    assert mode == "patch" and probs is None  # whole-grid probabilities only when asked for
    assert labels.dtype == np.uint8 and labels.shape == image.shape[1:]
    full = predict_full(model, image)
    np.testing.assert_array_equal(labels, full.argmax(0))
    _, probs, _ = segment(image, model=model, mode="full", probabilities=True)
    np.testing.assert_allclose(probs, full, atol=1e-6)
    seen = []

    def cancel_after_two(fraction, message):
        seen.append(fraction)
        if len(seen) > 2:
            raise Cancelled(message)

    with pytest.raises(Cancelled):
        segment(image, model=model, mode="patch", patch_size=16, progress=cancel_after_two)
    with pytest.raises(ValueError, match="takes 2 channel"):
        segment(image[:1], model=model, mode="full")
    with pytest.raises(ValueError, match="needs a Cascade"):
        segment(image, model=model, mode="cascade")


def test_normalise_z_scores_inside_the_brain():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 10, 10, 10), np.float32)
    image[:, 2:8, 2:8, 2:8] = rng.normal(300, 50, (2, 6, 6, 6))
    out = normalise(image)
    inside = out[:, 2:8, 2:8, 2:8]
    np.testing.assert_allclose(inside.reshape(2, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(inside.reshape(2, -1).std(1), 1, atol=1e-4)
    assert (out[image == 0] == 0).all()
    image[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalise(image)


def test_brain_box_is_the_box_of_voxels_non_zero_in_any_channel():
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[0, 2:5, 3:6, 4:7] = 1.0
    image[1, 7, 9, 1] = -2.0  # another channel widens the box, a negative value counts
    assert brain_box(image) == (slice(2, 8), slice(3, 10), slice(1, 7))
    assert brain_box(np.zeros((1, 3, 4, 5))) == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_nothing_is_labelled_outside_the_brain():
    """A network that calls every voxel tumour (as the cascade did with empty space on a real FLAIR-only
    case) gets labels inside the brain only; a zero voxel enclosed by brain counts as brain."""
    model = UNet3D(1, 3, (4, 8)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # class 2 everywhere
    z, y, x = np.ogrid[:16, :20, :24]
    brain = (z - 8) ** 2 / 36 + (y - 10) ** 2 / 64 + (x - 12) ** 2 / 81 <= 1  # an ellipsoid: its box's corners are empty
    image = np.where(brain, 1.0, 0.0).astype(np.float32)[None]
    image[0, 8, 10, 12] = 0.0  # inside the brain
    np.testing.assert_array_equal(brain_mask(image), brain)
    for mode in ("full", "patch"):
        labels, probs, _ = segment(image, model=model, mode=mode, patch_size=8, probabilities=True)
        np.testing.assert_array_equal(labels, np.where(brain, 2, 0))
        assert (probs[0][~brain] == 1).all() and (probs[2][brain] > 0.95).all()


def test_a_cascade_drops_pieces_smaller_than_its_fraction_of_the_largest():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 2  # 512 voxels, with a core
    labels[4:6, 4:6, 4:6] = 1
    labels[14:17, 14:17, 14:17] = 3  # 27 voxels: 5% of the largest
    labels[14:18, 2:6, 14:18] = 2  # 64 voxels: 12.5%
    np.testing.assert_array_equal(drop_small_pieces(labels, 0.0), labels)
    kept = drop_small_pieces(labels, 0.1)
    assert (kept[14:17, 14:17, 14:17] == 0).all()
    np.testing.assert_array_equal(kept[:12], labels[:12])
    np.testing.assert_array_equal(kept[14:18, 2:6, 14:18], labels[14:18, 2:6, 14:18])

    def everywhere(in_channels, label):  # a network that calls every voxel `label`
        net = UNet3D(in_channels, 3, (4, 8)).eval()
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill_(0, torch.tensor(label), 5.0))
        return net

    image = np.zeros((1, 24, 24, 24), np.float32)
    image[0, 2:14, 2:14, 2:14] = 1.0  # a large piece of brain and a small one (the labels cover the brain)
    image[0, 18:21, 18:21, 18:21] = 1.0
    for fraction, small in ((0.0, 2), (0.1, 0)):
        cascade = Cascade(everywhere(1, 1), everywhere(4, 2), factor=0.5, min_piece_fraction=fraction)
        labels, _, _ = segment(image, cascade=cascade, mode="cascade", patch_size=16)
        assert (labels[2:14, 2:14, 2:14] == 2).all() and (labels[18:21, 18:21, 18:21] == small).all()


def test_a_cascade_with_min_core_mm3_makes_small_core_pieces_edema_by_volume():
    """phantom-r2unet's cascade keeps SAMBA's rule (pieces.drop_small_cores): a core piece under 50 mm^3
    becomes edema; whether a piece is small depends on the voxel's volume."""
    def everywhere(in_channels, label):  # a network that calls every voxel `label` (here: NETC, core)
        net = UNet3D(in_channels, 4, (4, 8)).eval()
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.zeros(4).index_fill_(0, torch.tensor(label), 5.0))
        return net

    image = np.zeros((1, 24, 24, 24), np.float32)
    image[0, 2:14, 2:14, 2:14] = 1.0  # a large piece of brain and a 27-voxel one
    image[0, 18:21, 18:21, 18:21] = 1.0
    for min_core, spacing, small in ((0.0, 1.0, 1), (50.0, 1.0, 2), (50.0, 1.05, 2), (50.0, 2.0, 1)):
        cascade = Cascade(everywhere(1, 1), everywhere(5, 1), factor=0.5, min_core_mm3=min_core)
        labels, _, _ = segment(image, cascade=cascade, mode="cascade", patch_size=16, spacing=(spacing,) * 3)
        assert (labels[2:14, 2:14, 2:14] == 1).all() and (labels[18:21, 18:21, 18:21] == small).all(), (min_core, spacing)


def test_training_shape_leaves_grids_near_1_mm_alone_and_keeps_the_extent_of_others():
    assert training_shape((155, 240, 240), (1.0, 1.0, 1.0)) is None
    assert training_shape((155, 240, 240), (1.08, 0.94, 1.0)) is None  # within 10%
    assert training_shape((155, 240, 240), None) is None
    assert training_shape((31, 240, 240), (5.0, 1.0, 1.0)) == (151, 240, 240)  # first to last slice centre: 150 mm
    assert training_shape((20, 101, 101), (3.0, 0.5, 0.5)) == (58, 51, 51)  # finer than 1 mm: fewer voxels


class Recorder(nn.Module):
    """A 1x1 convolution (class 1 where channel 0 > 0.5) that records the shapes it is given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.shapes = []
        with torch.no_grad():
            self.conv.weight.fill_(0.0)
            self.conv.weight[1, 0] = 20.0
            self.conv.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_a_thick_slice_grid_is_segmented_on_1_mm_and_labelled_back_on_its_own_grid():
    """The networks learned 1 mm grids: 5 mm slices are resampled to 1 mm for them (the network sees 56 slices
    for 12), and each label comes back to the slice it belongs to."""
    image = np.zeros((1, 12, 10, 10), np.float32)
    image[0, 1:11, 1:9, 1:9] = 0.2  # the brain (its box: slices 1-10)
    image[0, 4:7, 3:6, 3:6] = 1.0  # the lesion, on three 5 mm slices
    model = Recorder()
    labels, probs, _ = segment(image, model=model, mode="full", spacing=(5.0, 1.0, 1.0), probabilities=True)
    # the brain's box on 1 mm: interpolated, slices 1-10 reach to 1 mm short of slices 0 and 11 (11 x 5 - 1)
    assert model.shapes[-1] == (54, 8, 8)
    assert labels.shape == (12, 10, 10) and probs.shape == (2, 56, 10, 10)
    np.testing.assert_array_equal(labels, image[0] > 0.5)  # back on the 5 mm slices, where the lesion is
    model.shapes.clear()
    labels_1mm, _, _ = segment(image, model=model, mode="full", spacing=(1.0, 1.0, 1.0))
    assert model.shapes[-1] == (10, 8, 8)  # a 1 mm grid is used as it is
    np.testing.assert_array_equal(labels_1mm, labels)
