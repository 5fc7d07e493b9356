"""The plain U-Net of the memory-efficiency study, and the helpers the R2U-Net shares with it.

Stages of two (3x3x3 conv + BN + ReLU), max-pool down, transposed conv up, skip connections by
concatenation, logits out (the softmax belongs to the loss or to inference).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def nd_layers(spatial_dims: int) -> SimpleNamespace:
    """The 2D or 3D variants of the layers the networks are built from."""
    if spatial_dims == 2:
        return SimpleNamespace(conv=nn.Conv2d, bn=nn.BatchNorm2d, pool=nn.MaxPool2d, up=nn.ConvTranspose2d)
    if spatial_dims == 3:
        return SimpleNamespace(conv=nn.Conv3d, bn=nn.BatchNorm3d, pool=nn.MaxPool3d, up=nn.ConvTranspose3d)
    raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial axes of x (N, C, *spatial) at their high end to a multiple of `multiple`.

    Each max-pool halves the size, and the transposed conv must double it back to the size of the
    skip it is concatenated with; padding at the high end keeps voxel i of the input at index i,
    so cropping the output back is a plain slice.
    """
    pads = []
    for size in reversed(x.shape[2:]):  # F.pad lists the last axis first
        pads += [0, -size % multiple]
    return F.pad(x, pads) if any(pads) else x


def crop_to(x: torch.Tensor, spatial_shape) -> torch.Tensor:
    """The low corner of x with the given spatial shape (undoes pad_to_multiple)."""
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial_shape)]


class ConvStage(nn.Module):
    """Two (3x3 conv + BN + ReLU); the conv has no bias because BN's shift replaces it."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        nd = nd_layers(spatial_dims)
        self.block = nn.Sequential(
            nd.conv(in_channels, out_channels, 3, padding=1, bias=False),
            nd.bn(out_channels, momentum=0.1),
            nn.ReLU(inplace=True),
            nd.conv(out_channels, out_channels, 3, padding=1, bias=False),
            nd.bn(out_channels, momentum=0.1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet3D(nn.Module):
    """U-Net with one stage per entry of `widths` (len(widths) - 1 down-samplings).

    Any input size works: the input is zero-padded to a multiple of 2**depth and the output
    cropped back, so the logits (N, out_channels, *spatial) have the input's spatial shape.
    `spatial_dims=2` builds the same network in 2D (for comparisons with 2D models).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        widths: tuple[int, ...] = (32, 64, 128, 256, 512),
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError("widths needs at least two stages (one down-sampling)")
        nd = nd_layers(spatial_dims)
        self.size_multiple = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            [ConvStage(c_in, c_out, spatial_dims) for c_in, c_out in zip((in_channels,) + widths[:-1], widths)]
        )
        self.pool = nd.pool(2)
        # Decoder level i brings the features of level i + 1 up to level i.
        self.up = nn.ModuleList([nd.up(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1)])
        self.decoder = nn.ModuleList(
            [ConvStage(2 * widths[i], widths[i], spatial_dims) for i in range(len(widths) - 1)]
        )
        self.head = nd.conv(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unet_forward(self, x)


def unet_forward(model: nn.Module, x: torch.Tensor, gates: nn.ModuleList | None = None) -> torch.Tensor:
    """The U-Net pass shared by UNet3D and R2UNet: pad, encode, decode with skips (optionally
    through attention gates), crop back. `model` has encoder, pool, up, decoder, head, size_multiple."""
    shape = x.shape[2:]
    x = pad_to_multiple(x, model.size_multiple)
    skips = []
    for level, stage in enumerate(model.encoder):
        if level:
            x = model.pool(x)
        x = stage(x)
        skips.append(x)
    x = skips.pop()
    for level in reversed(range(len(model.up))):
        x = model.up[level](x)
        skip = skips[level] if gates is None else gates[level](x, skips[level])
        x = model.decoder[level](torch.cat([skip, x], dim=1))
    return crop_to(model.head(x), shape)
