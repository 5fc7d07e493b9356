"""Receptive field of a segmentation network, measured exactly with gradients.

Walking the layers of a U-Net by hand is error-prone (skips, recurrence, alignment of the
pooling grid), so the field is measured instead: the gradient of one output voxel with respect
to the input is non-zero exactly on the input voxels that voxel depends on.

Method. On a copy of the model in eval mode (BatchNorm is then a per-voxel affine map) and in
float64 (the gradient at the edge of the field is a product of dozens of small weights, which
float32 can round to exactly 0):
- max-pooling is replaced by average pooling with the same kernel and stride, and ReLU by a
  leaky ReLU: both keep which input reaches which output, but send a gradient to every voxel
  of a window and through every unit (a max-pool sends it to the window maximum only, a ReLU
  nothing through an inactive unit, which would shrink the field by accident);
- weights are random and the input random with a small amplitude, and the result is the union
  over `trials` draws, so that no gradient cancels to zero by accident;
- each axis is probed on its own with an input long along that axis and `thin` voxels along
  the others: a path along the axis exists whatever the other axes' sizes, and thin probes keep
  the cost low enough for the default 3D networks;
- with down-sampling, what an output voxel sees depends on where it falls on the pooling grid,
  so every output position of one grid period (model.size_multiple for the networks here) is
  measured and the largest extent kept.

Limits: only nn.MaxPool*d and nn.ReLU modules are swapped (functional calls in forward are not;
a dead unit there could hide part of the field, which the random weights and the union over
trials make unlikely, not impossible). An operation that mixes the whole input (global pooling,
self-attention, instance or group normalisation) has a field as large as the probe: that is
reported as an error, because the probe would be too small whatever its size. The cost grows
with the probe and the widths, not the field: measure a thin twin (same depth, kernels and t,
widths of 1 or 2) of a wide network, the field does not depend on the widths.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

_MAX_PROBE = 4096


def _measurable_copy(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A float64, eval-mode copy with average pooling, leaky ReLUs and random weights."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
                pool = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
                setattr(parent, name, pool[type(child)](child.kernel_size, child.stride, child.padding))
            elif isinstance(child, nn.ReLU):
                setattr(parent, name, nn.LeakyReLU(0.1))
    model = model.double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        for p in model.parameters():
            # Weights scaled by fan-in keep the activations (and the sigmoids of attention gates)
            # away from float64 overflow or saturation; a zero gradient would read as "outside".
            std = 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
    return model


class _ProbeTooSmall(Exception):
    pass


def _spans(model, spatial_dims, in_channels, probe_size, period, thin, trials, seed):
    """Per axis, per output position of one period: (first, last) input voxel it depends on,
    and the output's size along that axis (to tell same-size outputs from strided ones)."""
    generator = torch.Generator().manual_seed(seed)
    spans = [[None] * period for _ in range(spatial_dims)]
    out_sizes = [None] * spatial_dims
    for _ in range(trials):
        probe_model = _measurable_copy(model, generator)
        for axis in range(spatial_dims):
            shape = [thin] * spatial_dims
            shape[axis] = probe_size
            # One batch element per output position: in eval mode they do not interact, so one
            # backward pass gives the gradient of every position, each in its own element.
            x = 0.1 * torch.randn([period, in_channels] + shape, generator=generator, dtype=torch.float64)
            x.requires_grad_(True)
            out = probe_model(x)
            out_sizes[axis] = out.shape[2 + axis]
            # Positions start on a multiple of the period so that positions and grid line up.
            start = (out.shape[2 + axis] // 2) // period * period
            centre = [size // 2 for size in out.shape[2:]]
            picked = []
            for k in range(period):
                centre[axis] = start + k
                picked.append(out[(k, slice(None), *centre)].sum())
            (grad,) = torch.autograd.grad(torch.stack(picked).sum(), x)
            other = [d for d in range(1, grad.dim()) if d != 2 + axis]
            reached = grad.abs().amax(dim=other) > 0  # (period, probe_size)
            for k in range(period):
                hit = torch.nonzero(reached[k]).flatten()
                if len(hit) == 0:
                    raise RuntimeError("the output does not depend on the input")
                first, last = int(hit[0]), int(hit[-1])
                if first == 0 or last == probe_size - 1:
                    raise _ProbeTooSmall
                old = spans[axis][k]
                spans[axis][k] = (first, last) if old is None else (min(old[0], first), max(old[1], last))
    return spans, out_sizes


def _measure(model, spatial_dims, in_channels, probe_size, period, thin, trials, seed):
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, not {spatial_dims}")
    period = period or getattr(model, "size_multiple", 1)
    # The networks here pad every axis to size_multiple anyway; others need room to pool.
    thin = thin or getattr(model, "size_multiple", 8)
    size = probe_size or 64
    while True:
        try:
            return _spans(model, spatial_dims, in_channels, size, period, thin, trials, seed), size, period
        except _ProbeTooSmall:
            if probe_size or size >= _MAX_PROBE:
                raise ValueError(
                    f"the receptive field reaches the border of a {size}-voxel probe: "
                    "give a larger probe_size, or the network mixes the whole input"
                ) from None
            size *= 2


def receptive_field(
    model: nn.Module,
    spatial_dims: int,
    in_channels: int = 1,
    probe_size: int | None = None,
    *,
    period: int | None = None,
    thin: int | None = None,
    trials: int = 2,
    seed: int = 0,
) -> tuple[int, ...]:
    """Receptive field in voxels per axis: the largest span of input voxels an output voxel
    depends on, over the output positions of one pooling-grid period.

    probe_size: probe length along the measured axis; None doubles it from 64 until the field
    fits (a given size that is too small raises ValueError). period: output positions to try,
    by default model.size_multiple (1 for models without one). thin: probe size along the
    other axes, by default model.size_multiple (8 without one). The model is not modified.
    """
    (spans, _), _, _ = _measure(model, spatial_dims, in_channels, probe_size, period, thin, trials, seed)
    return tuple(max(last - first + 1 for first, last in axis) for axis in spans)


def required_margin(
    model: nn.Module,
    spatial_dims: int,
    in_channels: int = 1,
    probe_size: int | None = None,
    *,
    period: int | None = None,
    thin: int | None = None,
    trials: int = 2,
    seed: int = 0,
) -> tuple[int, ...]:
    """Context in voxels per axis that patch-wise inference must add around a patch so that its
    output equals the full-volume output: the farthest an output voxel looks to either side.

    For a field centred on its voxel this is half the field, (field - 1) / 2; with pooling the
    field of most positions is off-centre, so the measured reach (which can exceed half the
    field) is returned. It holds when patches start on multiples of model.size_multiple, so
    that their pooling grid matches the full volume's. Needs an output of the input's size.
    """
    (spans, out_sizes), size, period = _measure(
        model, spatial_dims, in_channels, probe_size, period, thin, trials, seed
    )
    if any(out != size for out in out_sizes):
        raise ValueError("required_margin needs a network whose output has the input's size")
    start = (size // 2) // period * period
    return tuple(
        max(max(start + k - first, last - start - k) for k, (first, last) in enumerate(axis)) for axis in spans
    )
