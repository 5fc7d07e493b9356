"""Slices per view, SAMBA's normalisation, the SAM builder and the batched box-prompted runner."""

import contextlib

import numpy as np
import pytest
import torch

from SAMBASegmentLib import sam_runner
from SAMBASegmentLib.sam_model import SMALL_DEFAULT, build_sam, count_parameters
from SAMBASegmentLib.sam_runner import (
    EmbeddingCache, decode_batched, decode_boxes, decode_logits, encode_slices, input_size, map_boxes,
    naive_segment_stack, resize_slices, segment_stack,
)
from SAMBASegmentLib.slices import VIEWS, from_view_slices, normalise_slice, normalise_slices, view_slices

TINY = {"type": "small", "img_size": 128, "embed_dim": 64, "depth": 2, "num_heads": 2,
        "prompt_embed_dim": 64, "mlp_dim": 128, "decoder_heads": 2}


@pytest.fixture(scope="module")
def sam(reseed):
    reseed()  # conftest.py
    return build_sam(TINY)


def _brain_slices(n, height, width, seed=0):
    """Normalised uint8 slices of a blurred random 'brain' inside an ellipse, zero outside."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    inside = ((y - height / 2) / (0.45 * height)) ** 2 + ((x - width / 2) / (0.45 * width)) ** 2 < 1
    noise = rng.normal(size=(n, height, width)).cumsum(axis=1).cumsum(axis=2)
    return normalise_slices(np.where(inside, noise - noise.min() + 1, 0))


# --- slices.py ---------------------------------------------------------------------------------

def test_view_round_trip_and_shapes():
    volume = np.random.default_rng(1).normal(size=(11, 17, 23)).astype(np.float32)
    expected = {"axial": (11, 17, 23), "coronal": (17, 11, 23), "sagittal": (23, 11, 17)}
    for view in VIEWS:
        stack = view_slices(volume, view)
        assert stack.shape == expected[view]
        assert np.shares_memory(stack, volume)  # a view, not a copy
        np.testing.assert_array_equal(from_view_slices(stack.copy(), view), volume)
    np.testing.assert_array_equal(view_slices(volume, "axial")[3], volume[3])
    np.testing.assert_array_equal(view_slices(volume, "coronal")[4], volume[:, 4, :])
    np.testing.assert_array_equal(view_slices(volume, "sagittal")[5], volume[:, :, 5])


def test_normalise_slice_zeros_range_and_outlier():
    rng = np.random.default_rng(2)
    image = np.zeros((40, 50))
    image[5:35, 5:45] = rng.uniform(100, 200, size=(30, 40))
    image[20, 20] = 1e6  # one hot voxel must not squash everything else towards 0
    out = normalise_slice(image)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert (out[image == 0] == 0).all()
    assert out.max() == 255 and out[20, 20, 0] == 255
    assert np.median(out[5:35, 5:45, 0]) > 100  # without clipping it would be ~0


def test_normalise_slice_degenerate_slices():
    assert not normalise_slice(np.zeros((8, 9))).any()
    constant = np.zeros((8, 9))
    constant[2:5, 3:7] = 7.0
    out = normalise_slice(constant)
    assert np.isfinite(out).all() and (out[constant == 0] == 0).all() and (out[constant != 0] > 0).all()


def test_normalise_slices_equals_per_slice():
    rng = np.random.default_rng(3)
    stack = rng.gamma(2.0, 50.0, size=(6, 21, 33)) * (rng.random((6, 21, 33)) > 0.3)
    stack[1] = 0  # empty slice
    stack[2] = np.where(stack[2] > 0, 5.0, 0)  # constant slice
    stack[3, 0, 0] = -40.0  # negative values are non-zero too
    expected = np.stack([normalise_slice(s) for s in stack])
    np.testing.assert_array_equal(normalise_slices(stack), expected)
    np.testing.assert_array_equal(normalise_slices(stack.astype(np.int16)),
                                  np.stack([normalise_slice(s) for s in stack.astype(np.int16)]))


# --- sam_model.py ------------------------------------------------------------------------------

def test_official_vit_b_parameter_count():
    with torch.device("meta"):  # structure only: no 94M random floats to initialise
        model = build_sam({"type": "vit_b"})
    assert abs(count_parameters(model) - 93.7e6) / 93.7e6 < 0.01
    assert model.image_encoder.img_size == 1024
    assert model.prompt_encoder.embed_dim == 256
    assert sam_runner.default_batch_size(model) == 1  # on the CPU: 4096 tokens per slice
    assert sam_runner.default_batch_size(build_sam(SMALL_DEFAULT)) == 16  # 256 tokens


def test_small_sam_shapes(sam):
    assert sam.image_encoder.img_size == 128
    assert sam.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert count_parameters(build_sam({"type": "small"})) == count_parameters(build_sam(SMALL_DEFAULT))
    with pytest.raises(ValueError):
        build_sam({"type": "vit_x"})


# --- geometry: the published code's non-square bug --------------------------------------------

@pytest.mark.parametrize("shape", [(60, 100), (100, 60)])
def test_boxes_stay_on_the_resized_rectangle(sam, shape):
    height, width = shape
    x0, y0, x1, y1 = (int(0.2 * width), int(0.3 * height), int(0.7 * width), int(0.8 * height))
    rectangle = np.zeros((height, width), np.uint8)
    rectangle[y0:y1 + 1, x0:x1 + 1] = 255
    resized = resize_slices(sam, np.repeat(rectangle[None, ..., None], 3, axis=-1))[0, ..., 0] > 127
    assert max(resized.shape) == 128 and resized.shape == input_size(sam, shape)
    rows, cols = np.nonzero(resized)
    mapped = map_boxes(sam, [[x0, y0, x1, y1]], shape)[0]
    assert np.allclose([cols.min(), rows.min(), cols.max(), rows.max()], mapped, atol=1.0)

    # A model-frame mask filling the mapped box comes back as the original rectangle.
    frame = torch.full((1, 1, 128, 128), -1.0)
    mx0, my0, mx1, my1 = np.rint(mapped).astype(int)
    frame[..., my0:my1 + 1, mx0:mx1 + 1] = 1.0
    back = (sam.postprocess_masks(frame, input_size(sam, shape), shape) > 0)[0, 0].numpy()
    truth = rectangle > 0
    assert (back & truth).sum() / (back | truth).sum() > 0.95


# --- sam_runner.py -----------------------------------------------------------------------------

@pytest.mark.parametrize("multimask", [False, True])
def test_batched_decoder_equals_per_image_decoder(sam, multimask):
    slices = _brain_slices(3, 48, 80)
    boxes = np.array([[10, 8, 50, 30], [20, 5, 70, 40], [0, 0, 79, 47]], float)
    embeddings = encode_slices(sam, slices, batch_size=2)
    with torch.inference_mode():
        logits, iou = decode_logits(sam, embeddings, boxes, (48, 80), multimask)
        for b in range(3):
            box = torch.as_tensor(map_boxes(sam, boxes[b:b + 1], (48, 80)), dtype=torch.float)
            sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
            ref_logits, ref_iou = sam.mask_decoder(
                image_embeddings=embeddings[b:b + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            torch.testing.assert_close(logits[b:b + 1], ref_logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[b:b + 1], ref_iou, rtol=1e-4, atol=1e-4)
    assert logits.shape == (3, 3 if multimask else 1, 32, 32)
    # the four-token form really differs per image (no embedding was silently shared)
    all_logits, _ = decode_batched(sam, embeddings, *sam.prompt_encoder(None, torch.zeros(3, 4), None))
    assert not torch.allclose(all_logits[0], all_logits[1])


@pytest.mark.parametrize("shape,multimask", [((48, 80), False), ((80, 48), True)])
def test_segment_stack_equals_naive_predictor(sam, shape, multimask, monkeypatch):
    monkeypatch.setattr(sam_runner, "DECODE_CHUNK", 2)  # exercise decoding in several chunks
    height, width = shape
    slices = _brain_slices(5, height, width, seed=4)
    boxes = {0: (5, 6, width - 10, height - 12), 2: (width // 3, height // 4, width - 3, height - 2),
             3: (1, 2, width // 2, height // 2)}
    fast = segment_stack(sam, slices, boxes, EmbeddingCache(), key=("case", "flair", "axial"),
                         batch_size=2, multimask=multimask)
    naive = naive_segment_stack(sam, slices, boxes, multimask=multimask)
    assert fast.shape == naive.shape == ((5, 3, height, width) if multimask else (5, height, width))
    assert 0.02 < naive[list(boxes)].mean() < 0.98  # non-trivial masks, or the comparison is empty
    assert (fast == naive).mean() >= 0.999
    assert not fast[[1, 4]].any()


def test_cache_reuses_embeddings_and_skips_unboxed_slices(sam):
    slices = _brain_slices(6, 40, 64, seed=5)
    encoded = []
    hook = sam.image_encoder.register_forward_hook(lambda module, args, out: encoded.append(out.shape[0]))
    try:
        cache = EmbeddingCache()
        first = segment_stack(sam, slices, {1: (5, 5, 40, 30), 4: (10, 3, 60, 35)}, cache, key=("v", "t1"))
        assert sum(encoded) == 2 and cache.misses == 2 and cache.hits == 0 and len(cache) == 2
        second = segment_stack(sam, slices, {1: (2, 2, 30, 20), 4: (0, 0, 63, 39)}, cache, key=("v", "t1"))
        assert sum(encoded) == 2 and cache.hits == 2  # no new encoder call
        assert not np.array_equal(first[1], second[1])  # the new boxes were really used
        segment_stack(sam, slices, {1: (5, 5, 40, 30), 5: (5, 5, 40, 30)}, cache, key=("v", "t1"))
        assert sum(encoded) == 3 and cache.misses == 3  # only slice 5 was new
        segment_stack(sam, slices, {1: (5, 5, 40, 30)}, cache, key=("v", "t2"))
        assert sum(encoded) == 4  # another modality is another key
    finally:
        hook.remove()


def test_decode_boxes_masks_in_slice_pixels(sam):
    slices = _brain_slices(2, 30, 50, seed=6)
    masks, iou = decode_boxes(sam, encode_slices(sam, slices), [[1, 1, 20, 20], [5, 5, 40, 25]], (30, 50), True)
    assert masks.shape == (2, 3, 30, 50) and masks.dtype == torch.bool and iou.shape == (2, 3)


# --- out of memory: smaller batches, then a clear error --------------------------------------

class FullDeviceStandIn(torch.nn.Module):
    """Stand-in for a GPU that is nearly full: wraps a real module and raises the allocator's
    out-of-memory error when a batch is larger than `fits` (no real device runs out here)."""

    def __init__(self, module, fits, error=torch.OutOfMemoryError):
        super().__init__()
        self.module, self.fits, self.error, self.batches = module, fits, error, []

    def forward(self, x, *args, **kwargs):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.fits:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        return self.module(x, *args, **kwargs)


@contextlib.contextmanager
def full_device(parent, name, fits, error=torch.OutOfMemoryError):
    """parent.<name> behind a FullDeviceStandIn, restored afterwards (pytest's monkeypatch cannot
    restore nn.Module children: they live in _modules, not in the instance __dict__)."""
    original = getattr(parent, name)
    stand_in = FullDeviceStandIn(original, fits, error)
    setattr(parent, name, stand_in)
    try:
        yield stand_in
    finally:
        setattr(parent, name, original)


def test_encoder_out_of_memory_halves_the_batch_and_gives_the_same_embeddings(sam, caplog):
    slices = _brain_slices(7, 40, 56, seed=7)
    reference = encode_slices(sam, slices, batch_size=8)
    with full_device(sam.image_encoder, "patch_embed", fits=2) as stand_in, \
            caplog.at_level("WARNING", logger=sam_runner.__name__):
        constrained = encode_slices(sam, slices, batch_size=8)
    torch.testing.assert_close(constrained, reference, rtol=1e-5, atol=1e-5)
    assert stand_in.batches == [7, 4, 2, 2, 2, 1]  # 7 and 4 fail; 2 fits and is kept for the rest
    messages = [r.getMessage() for r in caplog.records]
    assert "The SAM image encoder ran out of memory on cpu with 7 slices at once; retrying with 4." in messages


def test_decoder_out_of_memory_falls_back_and_masks_are_identical(sam, caplog):
    slices = _brain_slices(6, 40, 56, seed=8)
    boxes = {i: (4 + i, 5, 50 - i, 35) for i in range(6)}
    reference = segment_stack(sam, slices, boxes)
    # The CPU allocator's wording (a plain RuntimeError), not CUDA's.
    def cpu_error(message):
        return RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    with full_device(sam.mask_decoder, "output_upscaling", fits=1, error=cpu_error), \
            caplog.at_level("WARNING", logger=sam_runner.__name__):
        constrained = segment_stack(sam, slices, boxes)
    np.testing.assert_array_equal(constrained, reference)
    assert 0.02 < reference.mean() < 0.98
    assert any("SAM mask decoder ran out of memory" in r.getMessage() for r in caplog.records)


def test_one_slice_that_does_not_fit_is_a_clear_error(sam):
    with full_device(sam.image_encoder, "patch_embed", fits=0), pytest.raises(
            sam_runner.SamOutOfMemory, match="even with one slice at a time: use device cpu, close other"):
        encode_slices(sam, _brain_slices(3, 20, 30), batch_size=4)
    # Other errors are not mistaken for memory and pass through unchanged.
    with full_device(sam.image_encoder, "patch_embed", fits=0, error=ValueError), pytest.raises(ValueError, match="stand-in"):
        encode_slices(sam, _brain_slices(1, 20, 30))
