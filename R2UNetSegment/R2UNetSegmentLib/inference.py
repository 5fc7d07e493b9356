"""Inference for the U-Net, R2U-Net and U-Net cascade: full volume, patch-wise, cascade, and auto.

Images are (C, *S) float32 arrays, 2D (C, H, W) or 3D (C, D, H, W), normalised with `normalise`
(the same function training uses). Outputs are class probabilities (K, *S): softmax over the
K classes (background included), or a sigmoid for a one-channel (binary) model.

Patch-wise inference runs MONAI's sliding_window_inference with Gaussian blending. Each window is
grown by the network's required margin (its measured reach, receptive_field.required_margin) on
every side, with the grown window's low corner snapped down to a multiple of model.size_multiple,
and the output cropped back to the window: every window's output then equals the full-volume
output there, and blending equal values changes nothing, so patch-wise equals full-volume output
while only one grown window's activations are in memory at a time.

Peak memory is estimated from a measurement, not a formula: the model runs once on two small
probes under memory.AllocationTracker, which gives live tensor bytes per voxel (plus a constant);
the estimate scales that to the real volume or window and adds the buffers of each mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import psutil
import torch
from torch import nn

from .cascade_inputs import (
    downsample,
    low_resolution_shape,
    stage2_inputs,
    upsample_labels,
)
from .memory import AllocationTracker
from .r2unet import R2UNet
from .receptive_field import required_margin
from .unet3d import UNet3D

MODES = ("full", "patch", "cascade")
_FLOAT = 4  # bytes per float32


class MemoryBudgetError(ValueError):
    """No inference mode fits the memory budget; the message names the smallest that would."""


@dataclass
class Cascade:
    """The two-stage cascade of the memory-efficiency study."""

    stage1: nn.Module  # in: C image channels at low resolution; out: K classes
    stage2: nn.Module  # in: C + K channels (image + one-hot upsampled stage-1 labels); out: K
    factor: float = 0.3


def normalise(image: np.ndarray) -> np.ndarray:
    """Z-score each channel over its non-zero voxels (the brain); zero voxels stay zero.

    Training and inference both call this, so the networks see the same intensities.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite values: check the input volumes.")
    out = np.zeros_like(image)
    for c, channel in enumerate(image):
        inside = channel != 0
        if inside.any():
            values = channel[inside]
            out[c][inside] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return out


def brain_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the voxels non-zero in some channel (the skull-stripped brain).

    Training draws every patch inside it, so the networks never learned what a large empty
    border looks like (stage 1 of the cascade called much of it tumour); inference runs inside
    it too, and the border is background. An all-zero image gives the whole grid."""
    inside = np.zeros(image.shape[1:], bool)
    for channel in image:  # channel by channel: no image-sized temporaries (memory-bounded modes)
        inside |= channel != 0
    if not inside.any():
        return tuple(slice(0, size) for size in image.shape[1:])
    box = []
    for axis in range(inside.ndim):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


# ---------------------------------------------------------------- model facts


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


def spatial_dims(model: nn.Module) -> int:
    return 3 if isinstance(_convs(model)[0], nn.Conv3d) else 2


def _in_channels(model: nn.Module) -> int:
    return _convs(model)[0].in_channels


def _multiple(model: nn.Module) -> int:
    return int(getattr(model, "size_multiple", 1))


def _structure(model: nn.Module, widths: bool) -> tuple:
    """What a measurement depends on: layer types, kernels, strides (and channels if `widths`)."""
    keys = ("kernel_size", "stride", "padding", "dilation") + (
        ("in_channels", "out_channels", "num_features") if widths else ()
    )
    return (_multiple(model),) + tuple(
        (type(m).__name__,) + tuple(getattr(m, k, None) for k in keys) for m in model.modules()
    )


def _thin_twin(model: nn.Module, spatial_dims: int) -> nn.Module:
    """A one- or two-channel copy of a known architecture: same field, far cheaper to probe."""
    if isinstance(model, UNet3D):
        return UNet3D(1, 1, (2,) * len(model.encoder), spatial_dims)
    if isinstance(model, R2UNet):
        t = len(model.encoder[0].recurrent[0].norms) - 1
        return R2UNet(1, 1, spatial_dims, base_width=1, depth=len(model.up), attention=model.gates is not None, t=t)
    return model


_MARGINS: dict[tuple, tuple[int, ...]] = {}


def model_margin(model: nn.Module, spatial_dims: int) -> tuple[int, ...]:
    """Context (voxels per axis) a patch needs so its output equals the full-volume output.

    Measured once per architecture (widths do not change the field) on a thin twin of a
    UNet3D or R2UNet, on the model itself otherwise.
    """
    key = (_structure(model, widths=False), spatial_dims)
    if key not in _MARGINS:
        twin = _thin_twin(model, spatial_dims)
        _MARGINS[key] = required_margin(twin, spatial_dims, in_channels=_in_channels(twin))
    return _MARGINS[key]


# ---------------------------------------------------------------- inference


def _check_image(model: nn.Module, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    dims = spatial_dims(model)
    if image.ndim != dims + 1:
        raise ValueError(
            f"the image has shape {image.shape} but the model is {dims}D: give (channels, "
            + ("D, H, W)" if dims == 3 else "H, W)")
        )
    if image.shape[0] != _in_channels(model):
        raise ValueError(
            f"the model takes {_in_channels(model)} channel(s) but the image has {image.shape[0]}: "
            "give the images the model was trained on"
        )
    return np.asarray(image, dtype=np.float32)  # a view stays a view: windows read what they need


def _probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


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
        probs = _probabilities(model, torch.from_numpy(image)[None].to(device))
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
    multiple = _multiple(model)
    total = _window_count(spatial, roi, overlap)
    done = [0]

    def predictor(_window_data, coordinates):
        outputs = []
        for coords in coordinates:
            window = tuple(coords[2:])
            grown = _grown(window, margin, multiple, spatial)
            probs = _probabilities(model, window_input(grown).to(device))
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
    if _in_channels(cascade.stage2) != image.shape[0] + classes:
        raise ValueError(
            f"stage 2 takes {_in_channels(cascade.stage2)} channels but needs the image's {image.shape[0]} plus "
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


# ---------------------------------------------------------------- memory estimate


_PER_VOXEL: dict[tuple, tuple[float, float, int]] = {}


def _activation_model(model: nn.Module) -> tuple[float, float, int]:
    """(bytes per voxel, constant bytes, classes K) of one no-grad pass with its softmax.

    Measured with AllocationTracker on two cubic probes (2 and 4 pooling periods a side);
    the line through the two peaks separates what grows with the volume from what does not.
    """
    key = _structure(model, widths=True)
    if key not in _PER_VOXEL:
        dims, channels, multiple = spatial_dims(model), _in_channels(model), _multiple(model)
        parameter = next(model.parameters())
        peaks, voxels = [], []
        model.eval()
        for side in (2 * max(multiple, 4), 4 * max(multiple, 4)):
            x = torch.zeros((1, channels) + (side,) * dims, dtype=parameter.dtype, device=parameter.device)
            with torch.no_grad(), AllocationTracker(existing=[x, *model.parameters(), *model.buffers()]) as tracker:
                classes = _probabilities(model, x).shape[1]
            peaks.append(tracker.peak)
            voxels.append(side**dims)
        slope = (peaks[1] - peaks[0]) / (voxels[1] - voxels[0])
        _PER_VOXEL[key] = (slope, max(0.0, peaks[0] - slope * voxels[0]), classes)
    return _PER_VOXEL[key]


def _padded_voxels(shape, multiple: int) -> int:
    return math.prod(-(-s // multiple) * multiple for s in shape)


def _pass_bytes(model: nn.Module, shape) -> int:
    """Peak live bytes of one pass on `shape` (the input itself excluded)."""
    per_voxel, constant, _ = _activation_model(model)
    return int(per_voxel * _padded_voxels(shape, _multiple(model)) + constant)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _largest_window(spatial, patch_size: int, margin, multiple: int) -> tuple[int, ...]:
    """Largest grown window: patch + margin each side + up to multiple - 1 from the snap."""
    return tuple(min(s, min(patch_size, s) + 2 * m + multiple - 1) for s, m in zip(spatial, margin))


def _patch_bytes(model: nn.Module, spatial, patch_size: int, window_channels: int) -> int:
    """Patch-wise inference: blending buffers (K + 1 floats a voxel) + one grown window's pass."""
    classes = _activation_model(model)[2]
    window = _largest_window(spatial, patch_size, model_margin(model, len(spatial)), _multiple(model))
    # The window's input: stage 2 builds it (one-hot, image copy, concatenation: about twice).
    window_input = window_channels * math.prod(window) * _FLOAT
    return (classes + 1) * math.prod(spatial) * _FLOAT + window_input + _pass_bytes(model, window)


# Memory a kernel allocates privately (oneDNN scratchpads on the CPU) and allocator slack are
# invisible to the tensor-level measurement; on the 4x155x240x240 benchmark phantom with the
# committed 8-wide bundle, peak RSS was 1.12-1.32 x the tensor estimate (full 1.32, patch 1.27,
# cascade 1.12-1.20), so the estimate carries that allowance: `auto` should not pick a mode
# that then overruns the budget.
PRIVATE_ALLOWANCE = 1.35


def estimate_peak_bytes(models, image_shape, mode: str, patch_size: int = 64) -> int:
    """Peak bytes an inference run adds to the image it is given (weights included), with
    PRIVATE_ALLOWANCE for what no tensor shows.

    models: the network for "full" and "patch", a Cascade for "cascade"; image_shape: (C, *S).
    On a GPU the blending buffers are on the CPU, so for patch and cascade this is an upper bound.
    """
    return int(PRIVATE_ALLOWANCE * _tensor_peak_bytes(models, image_shape, mode, patch_size))


def _tensor_peak_bytes(models, image_shape, mode: str, patch_size: int) -> int:
    channels, spatial = image_shape[0], tuple(image_shape[1:])
    if mode == "full":
        return _weight_bytes(models) + _pass_bytes(models, spatial)
    if mode == "patch":
        return _weight_bytes(models) + _patch_bytes(models, spatial, patch_size, 0)
    if mode == "cascade":
        low = low_resolution_shape(spatial, models.factor)
        classes = _activation_model(models.stage1)[2]
        stage1 = channels * math.prod(low) * _FLOAT + _pass_bytes(models.stage1, low)
        # Full-resolution labels: float interpolation, rounding, uint8 (upsample_labels).
        labels = math.prod(spatial) * (2 * _FLOAT + 1)
        stage2 = math.prod(spatial) + _patch_bytes(models.stage2, spatial, patch_size, 2 * (channels + classes))
        weights = _weight_bytes(models.stage1) + _weight_bytes(models.stage2)
        return weights + max(stage1, labels, stage2)
    raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


def _format(n: int) -> str:
    return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


class Plan(NamedTuple):
    """How segment() runs: the mode, its patch size and the estimated peak bytes (auto's choice, or as asked)."""

    mode: str
    patch_size: int
    estimate_bytes: int

    def describe(self) -> str:
        return self.mode if self.mode == "full" else f"{self.mode} ({self.patch_size}-voxel patches)"


SMALLEST_AUTO_PATCH = 16  # auto halves the patch size down to this when nothing fits


def _patch_sizes(patch_size: int) -> list[int]:
    sizes = [patch_size]
    while sizes[-1] // 2 >= SMALLEST_AUTO_PATCH:
        sizes.append(sizes[-1] // 2)
    return sizes


def choose_mode(model_or_none, cascade_or_none, image_shape, budget_bytes: int, patch_size: int = 64) -> Plan:
    """The fastest plan that fits: full, then patch, then cascade with `patch_size`; then patch and
    cascade with the patch size halved (smaller windows, more recomputed margin: slower), down to
    SMALLEST_AUTO_PATCH."""
    plans = [("full", patch_size, model_or_none)] if model_or_none is not None else []
    for size in _patch_sizes(patch_size):
        plans += [(mode, size, models) for mode, models in (("patch", model_or_none), ("cascade", cascade_or_none))
                  if models is not None]
    if not plans:
        raise ValueError("no model to run: give a model (full or patch mode) or a cascade")
    estimates = [Plan(mode, size, estimate_peak_bytes(models, image_shape, mode, size)) for mode, size, models in plans]
    for plan in estimates:
        if plan.estimate_bytes <= budget_bytes:
            return plan
    smallest = min(estimates, key=lambda plan: plan.estimate_bytes)
    raise MemoryBudgetError(
        f"a memory budget of {_format(budget_bytes)} is too small for an image of shape {tuple(image_shape)}: "
        f"the smallest, {smallest.describe()}, needs about {_format(smallest.estimate_bytes)}. "
        "Raise the budget to at least that."
    )


def plan_run(image, model=None, cascade=None, mode: str = "auto", budget_bytes=None, patch_size: int = 64,
             device="cpu") -> Plan:
    """The plan segment() follows: `mode` and `patch_size` as given, or for "auto" the fastest
    plan whose estimated peak on the brain's box fits `budget_bytes` (default: memory available now)."""
    shape = (image.shape[0],) + tuple(s.stop - s.start for s in brain_box(image))
    return _plan(shape, model, cascade, mode, budget_bytes, patch_size, device)


def _plan(shape, model, cascade, mode, budget_bytes, patch_size, device) -> Plan:
    """plan_run for the networks' input shape (C, *brain box)."""
    if mode not in ("auto",) + MODES:
        raise ValueError(f"unknown mode {mode!r}: choose auto, {', '.join(MODES)}")
    if mode in ("full", "patch") and model is None:
        raise ValueError(f"mode {mode} needs a model; give one or use mode cascade")
    if mode == "cascade" and cascade is None:
        raise ValueError("mode cascade needs a Cascade; give one or use mode full or patch")
    if mode != "auto":
        return Plan(mode, patch_size, estimate_peak_bytes(cascade if mode == "cascade" else model, shape, mode, patch_size))
    budget = available_bytes(device) if budget_bytes is None else budget_bytes
    return choose_mode(model, cascade, shape, budget, patch_size)


def available_bytes(device="cpu") -> int:
    """Memory free for inference now: the GPU's free memory, or the system's available RAM."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


def segment(image, model=None, cascade=None, mode="auto", budget_bytes=None, patch_size=64, device="cpu",
            progress=None, probabilities=False):
    """(labels uint8 (*S), probabilities (K, *S) or None, mode used) for a normalised (C, *S) image.

    The networks run on the brain's bounding box (brain_box) only; outside it is background.
    The whole-grid probabilities are made only when asked for (probabilities=True): at K float32
    per voxel they would be the largest array of a cascade run.

    mode "auto" follows plan_run: the fastest mode (and patch size) whose estimated peak fits
    `budget_bytes` (default: the memory available now). progress(fraction, message) may raise to cancel.
    """
    image = np.asarray(image)
    box = (slice(None),) + brain_box(image)
    inside = image[box]
    plan = _plan(inside.shape, model, cascade, mode, budget_bytes, patch_size, device)
    if progress:
        progress(0.0, f"{plan.describe()} inference")
    if plan.mode == "full":
        inner = predict_full(model, inside, device)
    elif plan.mode == "patch":
        inner = predict_patches(model, inside, plan.patch_size, device=device, progress=progress)
    else:
        inner = predict_cascade(cascade, inside, plan.patch_size, device=device, progress=progress)
    labels = np.zeros(image.shape[1:], np.uint8)  # outside the brain: background (0)
    labels[box[1:]] = labels_from(inner)
    probs = None
    if probabilities:
        probs = np.zeros((inner.shape[0],) + image.shape[1:], np.float32)
        if inner.shape[0] > 1:
            probs[0] = 1.0
        probs[box] = inner
    if progress:
        progress(1.0, "done")
    return labels, probs, plan.mode
