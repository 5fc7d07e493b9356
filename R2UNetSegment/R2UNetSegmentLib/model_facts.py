"""What inference needs to know about a network: its dimensions, channels, pooling period,
output meaning, and the context (margin) a patch needs, measured once per architecture."""

from __future__ import annotations

import torch
from torch import nn

from .r2unet import R2UNet
from .receptive_field import required_margin
from .unet3d import UNet3D


def convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


def spatial_dims(model: nn.Module) -> int:
    return 3 if isinstance(convs(model)[0], nn.Conv3d) else 2


def in_channels(model: nn.Module) -> int:
    return convs(model)[0].in_channels


def size_multiple(model: nn.Module) -> int:
    return int(getattr(model, "size_multiple", 1))


def structure(model: nn.Module, widths: bool) -> tuple:
    """What a measurement depends on: layer types, kernels, strides (and channels if `widths`)."""
    keys = ("kernel_size", "stride", "padding", "dilation") + (
        ("in_channels", "out_channels", "num_features") if widths else ()
    )
    return (size_multiple(model),) + tuple(
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
    key = (structure(model, widths=False), spatial_dims)
    if key not in _MARGINS:
        twin = _thin_twin(model, spatial_dims)
        _MARGINS[key] = required_margin(twin, spatial_dims, in_channels=in_channels(twin))
    return _MARGINS[key]


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes, or a sigmoid for a one-channel (binary) model."""
    logits = model(x)
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
