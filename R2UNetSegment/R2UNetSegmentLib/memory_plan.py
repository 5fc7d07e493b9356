"""Which inference mode and patch size a run uses, from an estimate of its peak memory.

Peak memory is estimated from a measurement, not a formula: the model runs once on two small
probes under memory.AllocationTracker, which gives live tensor bytes per voxel (plus a constant);
the estimate scales that to the real volume or window and adds the buffers of each mode.
Mode "auto" takes the fastest plan whose estimate fits the budget.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import psutil
import torch
from torch import nn

from .cascade_inputs import low_resolution_shape
from .memory import AllocationTracker
from .model_facts import in_channels, model_margin, probabilities, size_multiple, spatial_dims, structure

MODES = ("full", "patch", "cascade")
_FLOAT = 4  # bytes per float32


class MemoryBudgetError(ValueError):
    """No inference mode fits the memory budget; the message names the smallest that would
    (`needed_bytes`, its estimate; `budget_bytes`, the budget), so that a caller can word its own."""

    def __init__(self, message: str, needed_bytes: int = 0, budget_bytes: int = 0):
        super().__init__(message)
        self.needed_bytes, self.budget_bytes = needed_bytes, budget_bytes


_PER_VOXEL: dict[tuple, tuple[float, float, int]] = {}


def _activation_model(model: nn.Module) -> tuple[float, float, int]:
    """(bytes per voxel, constant bytes, classes K) of one no-grad pass with its softmax.

    Measured with AllocationTracker on two cubic probes (2 and 4 pooling periods a side);
    the line through the two peaks separates what grows with the volume from what does not.
    """
    key = structure(model, widths=True)
    if key not in _PER_VOXEL:
        dims, channels, multiple = spatial_dims(model), in_channels(model), size_multiple(model)
        parameter = next(model.parameters())
        peaks, voxels = [], []
        model.eval()
        for side in (2 * max(multiple, 4), 4 * max(multiple, 4)):
            x = torch.zeros((1, channels) + (side,) * dims, dtype=parameter.dtype, device=parameter.device)
            with torch.no_grad(), AllocationTracker(existing=[x, *model.parameters(), *model.buffers()]) as tracker:
                classes = probabilities(model, x).shape[1]
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
    return int(per_voxel * _padded_voxels(shape, size_multiple(model)) + constant)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _largest_window(spatial, patch_size: int, margin, multiple: int) -> tuple[int, ...]:
    """Largest grown window: patch + margin each side + up to multiple - 1 from the snap."""
    return tuple(min(s, min(patch_size, s) + 2 * m + multiple - 1) for s, m in zip(spatial, margin))


def _patch_bytes(model: nn.Module, spatial, patch_size: int, window_channels: int) -> int:
    """Patch-wise inference: blending buffers (K + 1 floats a voxel) + one grown window's pass."""
    classes = _activation_model(model)[2]
    window = _largest_window(spatial, patch_size, model_margin(model, len(spatial)), size_multiple(model))
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


def format_bytes(n: int) -> str:
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
        f"a memory budget of {format_bytes(budget_bytes)} is too small for an image of shape {tuple(image_shape)}: "
        f"the smallest, {smallest.describe()}, needs about {format_bytes(smallest.estimate_bytes)}. "
        "Raise the budget to at least that.",
        smallest.estimate_bytes,
        budget_bytes,
    )


def plan_for(shape, model, cascade, mode, budget_bytes, patch_size, device) -> Plan:
    """The plan for the networks' input shape (C, *S): `mode` and `patch_size` as given, or for
    "auto" the fastest plan whose estimate fits `budget_bytes` (default: memory available now)."""
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
