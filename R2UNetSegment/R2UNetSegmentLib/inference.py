"""Inference for the U-Net, R2U-Net and U-Net cascade: full volume, patch-wise, cascade, and auto.

Images are (C, *S) float32 arrays, 2D (C, H, W) or 3D (C, D, H, W), normalised with `normalise`
(the same function training uses). Outputs are class probabilities (K, *S): softmax over the
K classes (background included), or a sigmoid for a one-channel (binary) model.

Patch-wise inference runs MONAI's sliding_window_inference with Gaussian blending. Each window is
grown by the network's required margin (its measured reach, model_facts.model_margin) on every
side, with the grown window's low corner snapped down to a multiple of model.size_multiple, and
the output cropped back to the window: every window's output then equals the full-volume output
there, and blending equal values changes nothing, so patch-wise equals full-volume output while
only one grown window's activations are in memory at a time.

Which mode and patch size a run uses (mode "auto": the fastest that fits a memory budget) is
memory_plan's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from SAMBACore.brats import MODALITIES

from .cascade_inputs import downsample, stage2_inputs, upsample_labels
from .memory_plan import Plan, plan_for
from .model_facts import in_channels, model_margin, probabilities, size_multiple, spatial_dims
from .presence import check_contrasts, has_flags, with_flags
from .spacing import TRAINING_SPACING_MM, resample, training_shape


@dataclass
class Cascade:
    """The two-stage cascade of the memory-efficiency study."""

    stage1: nn.Module  # in: C image channels at low resolution; out: K classes
    stage2: nn.Module  # in: C + K channels (image + one-hot upsampled stage-1 labels); out: K
    factor: float = 0.3
    min_piece_fraction: float = 0.0  # drop_small_pieces on its labels; chosen per bundle on tuning phantoms
    min_core_mm3: float = 0.0  # drop_small_cores on its BraTS labels (SAMBA's rule); per bundle, on tuning phantoms


def normalise(image: np.ndarray) -> np.ndarray:
    """Z-score each channel over its voxels that are not background (the brain); background becomes 0.

    The background is the value filling the channel's border (inputs.background_value), 0 for
    BraTS: a channel stored scaled, or shifted by a constant (+1000, or below 0), gives the same
    result. Training and inference both call this, so the networks see the same intensities.
    """
    from SAMBACore.inputs import background_value

    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite values: check the input volumes.")
    out = np.zeros_like(image)
    for c, channel in enumerate(image):
        inside = channel != background_value(channel)
        if inside.any():
            values = channel[inside]
            out[c][inside] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return out


def _non_zero(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in some channel of a (C, *S) image (the normalised brain)."""
    inside = np.zeros(image.shape[1:], bool)
    for channel in image:  # channel by channel: no image-sized temporaries (memory-bounded modes)
        inside |= channel != 0
    return inside


def brain_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the voxels non-zero in some channel (the skull-stripped brain).

    Training draws every patch inside it, so the networks never learned what a large empty
    border looks like (stage 1 of the cascade called much of it tumour); inference runs inside
    it too, and the border is background. An all-zero image gives the whole grid."""
    inside = _non_zero(image)
    if not inside.any():
        return tuple(slice(0, size) for size in image.shape[1:])
    box = []
    for axis in range(inside.ndim):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Where some channel of a normalised (C, *S) image is not background (0), holes filled.

    Normalising makes the background 0, which is also the brain's mean: a network that sees one
    contrast cannot tell empty space from average tissue, and the cascade called slabs of empty
    space at the top of the brain's box tumour (a real FLAIR-only case: two thirds of its whole
    tumour). Tumour is inside the (skull-stripped) brain, so labels outside it are background.
    Holes are filled so that a voxel inside the brain that happens to be 0 is not left out."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(_non_zero(image))


def drop_small_pieces(labels: np.ndarray, fraction: float) -> np.ndarray:
    """SAMBACore.pieces.drop_small_pieces: the cascade leaves small false pieces away from the tumour on
    real scans (bright vessels on T1CE, periventricular FLAIR)."""
    from SAMBACore.pieces import drop_small_pieces as drop  # scipy: loaded when a cascade needs it, as in brain_mask

    return drop(labels, fraction)


def _check_image(model: nn.Module, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    dims = spatial_dims(model)
    if image.ndim != dims + 1:
        raise ValueError(
            f"the image has shape {image.shape} but the model is {dims}D: give (channels, "
            + ("D, H, W)" if dims == 3 else "H, W)")
        )
    if image.shape[0] != in_channels(model):
        raise ValueError(
            f"the model takes {in_channels(model)} channel(s) but the image has {image.shape[0]}: "
            "give the images the model was trained on"
        )
    return np.asarray(image, dtype=np.float32)  # a view stays a view: windows read what they need


def labels_from(probs: np.ndarray) -> np.ndarray:
    """Class per voxel: argmax over classes, or probability > 0.5 for a one-channel model.

    Slab by slab along the first spatial axis: argmax's int64 result for the whole volume would
    be the largest array of a memory-bounded run."""
    labels = np.empty(probs.shape[1:], np.uint8)
    for start in range(0, probs.shape[1], 8):
        slab = probs[:, start:start + 8]
        labels[start:start + 8] = slab[0] > 0.5 if probs.shape[0] == 1 else slab.argmax(0)
    return labels


def predict_full(model: nn.Module, image: np.ndarray, device="cpu") -> np.ndarray:
    """The whole image in one pass: (C, *S) -> probabilities (K, *S) float32."""
    image = _check_image(model, image)
    model.eval()
    with torch.no_grad():
        probs = probabilities(model, torch.from_numpy(image)[None].to(device))
    return probs[0].cpu().numpy()


def _window_count(spatial, roi, overlap: float) -> int:
    """Windows MONAI visits (same scan rule: interval = roi * (1 - overlap), one window on a full axis)."""
    count = 1
    for size, r in zip(spatial, roi):
        interval = r if r == size else max(int(r * (1 - overlap)), 1)
        count *= math.ceil(max(size - r, 0) / interval) + 1
    return count


def _grown(window, margin, multiple: int, spatial) -> tuple[slice, ...]:
    """The window plus `margin` on each side, inside the volume, low corner on the pooling grid."""
    return tuple(
        slice(max(0, (s.start - m) // multiple * multiple), min(size, s.stop + m))
        for s, m, size in zip(window, margin, spatial)
    )


def _sliding_window(model, image, window_input, patch_size, margin, overlap, device, progress, message):
    """MONAI's Gaussian-blended sliding window; the model sees each window grown by `margin`.

    window_input(grown slices) -> (1, C', *grown) CPU tensor: the model's input there.
    Blending accumulates on the CPU, so only one window's activations are on `device`.
    """
    from monai.inferers import sliding_window_inference

    spatial = image.shape[1:]
    roi = tuple(min(patch_size, size) for size in spatial)  # MONAI would pad a smaller axis off-centre
    multiple = size_multiple(model)
    total = _window_count(spatial, roi, overlap)
    done = [0]

    def predictor(_window_data, coordinates):
        outputs = []
        for coords in coordinates:
            window = tuple(coords[2:])
            grown = _grown(window, margin, multiple, spatial)
            probs = probabilities(model, window_input(grown).to(device))
            inner = tuple(slice(w.start - g.start, w.stop - g.start) for w, g in zip(window, grown))
            outputs.append(probs[(slice(None), slice(None)) + inner])
            done[0] += 1
            if progress:
                progress(min(done[0] / total, 1.0), f"{message}: window {done[0]} of {total}")
        return torch.cat(outputs)

    model.eval()
    with torch.no_grad():
        probs = sliding_window_inference(
            torch.from_numpy(image)[None], roi, 1, predictor, overlap=overlap, mode="gaussian",
            sw_device=device, device="cpu", with_coord=True,
        )
    return probs[0].numpy()


def _margin_tuple(margin, spatial_dims: int) -> tuple[int, ...]:
    margin = (margin,) * spatial_dims if isinstance(margin, int) else tuple(margin)
    if len(margin) != spatial_dims or min(margin) < 0:
        raise ValueError(f"margin must be a non-negative int or {spatial_dims} of them, not {margin}")
    return margin


def predict_patches(model, image, patch_size=64, margin=None, overlap=0.25, device="cpu", progress=None) -> np.ndarray:
    """Patch-wise (K, *S) probabilities; margin None measures the one that makes them equal full-volume."""
    image = _check_image(model, image)
    if patch_size < 1:
        raise ValueError(f"the patch size must be at least 1 voxel, not {patch_size}")
    dims = image.ndim - 1
    margin = model_margin(model, dims) if margin is None else _margin_tuple(margin, dims)
    x = torch.from_numpy(image)[None]
    return _sliding_window(
        model, image, lambda grown: x[(slice(None), slice(None)) + grown], patch_size, margin, overlap,
        device, progress, "patches",
    )


def predict_cascade(cascade: Cascade, image, patch_size=64, device="cpu", progress=None) -> np.ndarray:
    """Stage 1 on the down-sampled image, then stage 2 patch-wise on image + one-hot stage-1 labels.

    Stage 2's input is built per grown window (stage2_inputs on the window), so the
    (C + K)-channel full-resolution array never exists: it would cost more than the windows.
    """
    image = _check_image(cascade.stage1, image)
    if progress:
        progress(0.0, "cascade stage 1 (low resolution)")
    low_probs = predict_full(cascade.stage1, downsample(image, cascade.factor), device)
    classes = low_probs.shape[0]
    if in_channels(cascade.stage2) != image.shape[0] + classes:
        raise ValueError(
            f"stage 2 takes {in_channels(cascade.stage2)} channels but needs the image's {image.shape[0]} plus "
            f"stage 1's {classes} classes: the two stages do not belong together"
        )
    labels = upsample_labels(labels_from(low_probs), image.shape[1:])
    del low_probs
    spatial_dims = image.ndim - 1

    def stage2_window(grown):
        window = stage2_inputs(image[(slice(None),) + grown], labels[grown], classes)
        return torch.from_numpy(window)[None]

    def stage2_progress(fraction, message):
        progress(0.1 + 0.9 * fraction, message)

    return _sliding_window(
        cascade.stage2, image, stage2_window, patch_size, model_margin(cascade.stage2, spatial_dims), 0.25,
        device, stage2_progress if progress else None, "cascade stage 2",
    )


def usable_networks(model, cascade, present):
    """(model, cascade) left usable for a case with contrasts `present` (None: all four): a network
    without presence flags is dropped for a subset, so mode auto picks one that can run it."""
    if present is None or len(present) == len(MODALITIES):
        return model, cascade
    model = model if model is not None and has_flags(model) else None
    cascade = cascade if cascade is not None and has_flags(cascade.stage1) else None
    return model, cascade


def _input_shape(image, model, cascade, spacing=None) -> tuple[int, ...]:
    """The networks' input shape on the brain's box (presence flags add four channels), on the 1 mm grid
    segment() resamples a grid with `spacing` to."""
    flags = any(n is not None and has_flags(n) for n in (model, cascade and cascade.stage1))
    box = tuple(s.stop - s.start for s in brain_box(image))
    return (image.shape[0] + (len(MODALITIES) if flags else 0),) + (training_shape(box, spacing) or box)


def plan_run(image, model=None, cascade=None, mode: str = "auto", budget_bytes=None, patch_size: int = 64,
             device="cpu", present=None, spacing=None) -> Plan:
    """The plan segment() follows: `mode` and `patch_size` as given, or for "auto" the fastest
    plan whose estimated peak on the brain's box fits `budget_bytes` (default: memory available now).
    `present`, `spacing`: as for segment (a subset leaves out the networks without presence flags; a grid
    far from 1 mm is planned for as resampled to it)."""
    if mode == "auto":
        model, cascade = usable_networks(model, cascade, present)
    return plan_for(_input_shape(image, model, cascade, spacing), model, cascade, mode, budget_bytes, patch_size,
                    device)


def network_input(network, image: np.ndarray, present=None) -> np.ndarray:
    """What `network` takes for the (C, *S) image: with presence flags, the four contrasts (those not in
    `present` zeroed; None: all four) and their flags; without, the image as it is (InputError for a subset)."""
    present = MODALITIES if present is None else tuple(present)
    check_contrasts(network, present)
    return with_flags(image, present) if has_flags(network) else image


def segment(image, model=None, cascade=None, mode="auto", budget_bytes=None, patch_size=64, device="cpu",
            progress=None, probabilities=False, present=None, spacing=None):
    """(labels uint8 (*S), probabilities (K, *S') or None, mode used) for a normalised (C, *S) image.

    `spacing`: the grid's voxel size in mm, one per spatial axis (None: taken as the networks' 1 mm). A grid
    more than 10% off 1 mm is resampled to 1 mm for the networks and the labels back (spacing.py); the
    probabilities, where asked for, are then on the 1 mm grid (S'). Otherwise S' is S.

    The networks run on the brain's bounding box (brain_box) only; outside it, and outside the brain
    itself within it (brain_mask), is background. A cascade with min_piece_fraction drops the small
    pieces of its labels (drop_small_pieces); one with min_core_mm3 makes core pieces smaller than that
    edema (drop_small_cores, by the voxels' volume in mm^3).
    The whole-grid probabilities are made only when asked for (probabilities=True): at K float32
    per voxel they would be the largest array of a cascade run.

    mode "auto" follows plan_run: the fastest mode (and patch size) whose estimated peak fits
    `budget_bytes` (default: the memory available now). progress(fraction, message) may raise to cancel.

    `present`: the contrasts of a four-channel BraTS image that are there (None: all four; the others
    are zeros). A network trained with presence flags gets them appended (presence.with_flags) after
    the crop; one without refuses a subset (InputError), and mode auto leaves it out.
    """
    image = np.asarray(image)
    original_shape = image.shape[1:]
    fine = training_shape(original_shape, spacing)
    if fine is not None:
        image, spacing = resample(image, fine, order=1), (TRAINING_SPACING_MM,) * len(fine)
    voxel_mm3 = float(np.prod(spacing)) if spacing is not None else 1.0
    if mode == "auto":
        model, cascade = usable_networks(model, cascade, present)
    box = (slice(None),) + brain_box(image)
    inside = image[box]
    brain = brain_mask(inside)  # before the presence flags, which are 1 everywhere
    plan = plan_for(_input_shape(image, model, cascade), model, cascade, mode, budget_bytes, patch_size, device)
    inside = network_input(cascade.stage1 if plan.mode == "cascade" else model, inside, present)
    if progress:
        progress(0.0, f"{plan.describe()} inference")
    if plan.mode == "full":
        inner = predict_full(model, inside, device)
    elif plan.mode == "patch":
        inner = predict_patches(model, inside, plan.patch_size, device=device, progress=progress)
    else:
        inner = predict_cascade(cascade, inside, plan.patch_size, device=device, progress=progress)
    labels = np.zeros(image.shape[1:], np.uint8)  # outside the brain: background (0)
    labels[box[1:]] = np.where(brain, labels_from(inner), 0)
    if plan.mode == "cascade" and cascade.min_piece_fraction > 0:
        labels[box[1:]] = drop_small_pieces(labels[box[1:]], cascade.min_piece_fraction)
    if plan.mode == "cascade" and cascade.min_core_mm3 > 0:
        from SAMBACore.pieces import drop_small_cores  # scipy: loaded when a cascade needs it, as drop_small_pieces

        labels[box[1:]] = drop_small_cores(labels[box[1:]], voxel_mm3, cascade.min_core_mm3)
    probs = None
    if probabilities:
        background = np.zeros(inner.shape[0], np.float32)  # what a voxel outside the brain gets
        if inner.shape[0] > 1:
            background[0] = 1.0
        probs = np.empty((inner.shape[0],) + image.shape[1:], np.float32)
        probs[:] = background.reshape((-1,) + (1,) * brain.ndim)
        inner[:, ~brain] = background[:, None]
        probs[box] = inner
    if fine is not None:
        labels = resample(labels, original_shape, order=0)
    if progress:
        progress(1.0, "done")
    return labels, probs, plan.mode
