"""R2U-Net and attention R2U-Net (R2AttU-Net), 2D or 3D.

A U-Net whose stages are recurrent residual convolutional units (RRCU): recurrence deepens a
stage (and widens its receptive field) without adding weights, the residual keeps it trainable.
The attention variant gates every skip connection with a one-channel map in [0, 1] computed from
the skip and the coarser decoder features, so the decoder can suppress irrelevant regions.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet3d import nd_layers, unet_forward


class RecurrentBlock(nn.Module):
    """One 3x3 conv, applied t + 1 times, each time to x + the previous output (then BN, ReLU).

    The same conv is reused at every step: that is the recurrence, and why the block has the
    weights of a single conv however large t is. Each step has its own BatchNorm, as in
    recurrent batch normalisation: x, x + out_1, x + out_2 have different statistics, and one
    shared BN would average them into running statistics that fit no step, so that a network
    that segments well in training mode fails in eval mode.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, t: int = 2) -> None:
        super().__init__()
        nd = nd_layers(spatial_dims)
        self.conv = nd.conv(channels, channels, 3, padding=1, bias=False)  # BN's shift replaces the bias
        self.norms = nn.ModuleList([nd.bn(channels) for _ in range(t + 1)])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norms[0](self.conv(x)))
        for norm in self.norms[1:]:
            out = self.relu(norm(self.conv(x + out)))
        return out


class RRCU(nn.Module):
    """Recurrent residual convolutional unit: 1x1 conv to the width, two recurrent blocks, residual.

    The 1x1 conv makes the residual addable: its output has the block width and is added to the
    output of the recurrent blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, t: int = 2) -> None:
        super().__init__()
        nd = nd_layers(spatial_dims)
        self.project = nd.conv(in_channels, out_channels, 1)
        self.recurrent = nn.Sequential(
            RecurrentBlock(out_channels, spatial_dims, t),
            RecurrentBlock(out_channels, spatial_dims, t),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.recurrent(x)


class AttentionGate(nn.Module):
    """Multiplies a skip connection by a one-channel coefficient map in [0, 1].

    The map comes from the skip (what is there) and the gating signal, the decoder features one
    level coarser brought to the skip's size (what the deeper, wider context says matters).
    `coefficients` is its own module so that hooks can read the map.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inner_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        nd = nd_layers(spatial_dims)
        self.gate = nn.Sequential(nd.conv(gate_channels, inner_channels, 1), nd.bn(inner_channels))
        self.skip = nn.Sequential(nd.conv(skip_channels, inner_channels, 1), nd.bn(inner_channels))
        self.relu = nn.ReLU(inplace=True)
        self.coefficients = nn.Sequential(nd.conv(inner_channels, 1, 1), nd.bn(1), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        alpha = self.coefficients(self.relu(self.gate(gate) + self.skip(skip)))
        return skip * alpha  # the one channel broadcasts over the skip's channels


class R2UNet(nn.Module):
    """R2U-Net (attention=False) or R2AttU-Net (attention=True); returns logits.

    Stage widths are base_width * 2**level for level 0..depth. Any input size works: the input
    is zero-padded to a multiple of 2**depth and the output cropped back to the input's shape.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        spatial_dims: int = 2,
        base_width: int = 16,
        depth: int = 4,
        attention: bool = False,
        t: int = 2,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        nd = nd_layers(spatial_dims)
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.size_multiple = 2**depth
        self.encoder = nn.ModuleList(
            [RRCU(c_in, c_out, spatial_dims, t) for c_in, c_out in zip([in_channels] + widths[:-1], widths)]
        )
        self.pool = nd.pool(2)
        # Index i of the decoder lists brings level i + 1 up to level i.
        self.up = nn.ModuleList([nd.up(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.gates = (
            nn.ModuleList([AttentionGate(w, w, max(w // 2, 1), spatial_dims) for w in widths[:-1]])
            if attention
            else None
        )
        self.decoder = nn.ModuleList([RRCU(2 * widths[i], widths[i], spatial_dims, t) for i in range(depth)])
        self.head = nd.conv(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unet_forward(self, x, self.gates)
