"""The voting network: a small 3D U-Net that fuses the 12 SAM votes and the 4 images into sub-regions.

Inputs, 16 channels: the four images (z-scored inside the brain) and the 12 binary SAM masks
(4 modalities x 3 views). Outputs, 3 sigmoid channels: whole tumour, tumour core, enhancing
tumour, the nested BraTS regions, turned into labels NETC/SNFH/ET with the nesting enforced.
The network is MONAI's UNet at about 200,000 parameters, as in the SAMBA paper (the published
code's network had 7.8M). Inference is MONAI's sliding window with Gaussian blending, so any
volume size works and the output is on the input grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from SAMBACore.brats import ET, MODALITIES, NETC, SNFH, region_masks
from SAMBACore.contrast_curves import apply_contrast_curves
from SAMBASegmentLib.simulated_votes import drop_contrasts

CONFIG = {"channels": [20, 40, 64], "strides": [2, 2], "num_res_units": 1, "roi": [96, 96, 96]}
IN_CHANNELS = len(MODALITIES) * 4  # 4 images + 4 modalities x 3 views of SAM votes
OUT_REGIONS = ("WT", "TC", "ET")


class VotingEnsemble(torch.nn.Module):
    """Voting nets trained apart (on different data or augmentation), their logits averaged: the
    usual ensemble, for nets that err in different places (a bundle's config "members": n)."""

    def __init__(self, nets: list[UNet]):
        super().__init__()
        self.members = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x) for net in self.members]).mean(dim=0)


def build_voting_net(config: dict = CONFIG) -> torch.nn.Module:
    """One UNet, or a VotingEnsemble of config["members"] of them."""
    def one() -> UNet:
        return UNet(
            spatial_dims=3, in_channels=IN_CHANNELS, out_channels=len(OUT_REGIONS),
            channels=config["channels"], strides=config["strides"], num_res_units=config["num_res_units"],
        )
    members = int(config.get("members", 1))
    return VotingEnsemble([one() for _ in range(members)]) if members > 1 else one()


def member_states(net: torch.nn.Module) -> list[dict]:
    """The state dict of each net in `net` (one for a plain UNet)."""
    nets = net.members if isinstance(net, VotingEnsemble) else [net]
    return [{k: v.detach().float().cpu().contiguous() for k, v in m.state_dict().items()} for m in nets]


def ensemble_state(states: list[dict]) -> dict:
    """The state dict of a VotingEnsemble of nets with these `states` (a plain UNet's for one)."""
    if len(states) == 1:
        return states[0]
    return {f"members.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}


def image_channels(images: dict[str, np.ndarray], shape) -> np.ndarray:
    """(4, K, J, I) float32: each image z-scored over its non-zero (brain) voxels; a contrast the
    case does not have (None or absent) is a channel of zeros."""
    channels = []
    for m in MODALITIES:
        if images.get(m) is None:
            channels.append(np.zeros(shape, np.float32))
            continue
        image = images[m].astype(np.float32)
        brain = image != 0
        values = image[brain]
        mean, std = (values.mean(), values.std() or 1.0) if values.size else (0.0, 1.0)
        channels.append(np.where(brain, (image - mean) / std, 0.0).astype(np.float32))
    return np.stack(channels)


def voting_inputs(images: dict[str, np.ndarray], votes: np.ndarray) -> np.ndarray:
    """(16, K, J, I) float32: the four image_channels, then the 12 votes."""
    if votes.shape[0] != IN_CHANNELS - len(MODALITIES):
        raise ValueError(f"Expected {IN_CHANNELS - len(MODALITIES)} SAM vote volumes, got {votes.shape[0]}.")
    return np.concatenate([image_channels(images, votes.shape[1:]), votes.astype(np.float32)])


def within_votes(labels: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """The voting net's sub-regions inside the votes' whole tumour `whole`: nothing outside it, and
    its voxels the net left out become edema. For a SAM that knows real tumours better than the
    voting net does (a pretrained medical SAM, a net trained on phantoms): SAM says where the tumour
    is, the net only how it divides."""
    labels = np.where(whole, labels, 0).astype(np.uint8)
    labels[whole & (labels == 0)] = SNFH
    return labels


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """(3, K, J, I) booleans WT, TC, ET -> internal labels, each region clipped to the one containing it."""
    whole, core, enhancing = regions.astype(bool)
    core &= whole
    enhancing &= core
    labels = np.zeros(whole.shape, np.uint8)
    labels[whole] = SNFH
    labels[core] = NETC
    labels[enhancing] = ET
    return labels


def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    masks = region_masks(labels)
    return np.stack([masks[r] for r in OUT_REGIONS]).astype(np.float32)


@torch.inference_mode()
def predict_labels(net: torch.nn.Module, inputs: np.ndarray, roi=None, device: str = "cpu", overlap: float = 0.25) -> np.ndarray:
    """Labels on the input grid, by sliding window (patches of `roi`, Gaussian-blended)."""
    net = net.to(device).eval()
    roi = tuple(roi or CONFIG["roi"])  # a volume smaller than the roi is padded by MONAI
    x = torch.from_numpy(inputs[None]).to(device)
    logits = sliding_window_inference(x, roi, sw_batch_size=1, predictor=net, overlap=overlap, mode="gaussian")
    return regions_to_labels((logits[0] > 0).cpu().numpy())


def _random_patch(rng, shape, patch, labels: np.ndarray, tumour_fraction: float):
    """A patch corner; with probability `tumour_fraction` the patch is centred on a tumour voxel."""
    size = np.minimum(patch, shape)
    if labels.any() and rng.random() < tumour_fraction:
        voxels = np.argwhere(labels > 0)
        centre = voxels[rng.integers(len(voxels))]
        corner = centre - size // 2
    else:
        corner = rng.integers(0, np.array(shape) - size + 1)
    corner = np.clip(corner, 0, np.array(shape) - size)
    return tuple(slice(c, c + s) for c, s in zip(corner, size))


def train_voting(
    net: UNet,
    samples: list[tuple[np.ndarray, np.ndarray]],
    steps: int,
    patch=(64, 64, 64),
    batch: int = 2,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    drop: float = 0.0,
    curves: float = 0.0,
) -> list[float]:
    """Adam on random patches of (inputs, labels) pairs, two thirds centred on tumour; `drop`: the
    probability of zeroing some contrasts of a sample (simulated_votes.drop_contrasts); `curves`: the
    probability of a random contrast curve on each image of a sample (contrast_curves.py).

    The loss is Dice over the whole batch plus binary cross-entropy. Dice alone (the paper's loss)
    gives almost no gradient on a tumour-free patch, so a first demo network learned the
    sub-regions inside the tumour but called ~7% of healthy brain tumour; the cross-entropy term
    and the batch-wide Dice teach it to say "no" where no SAM vote is.
    Returns the loss per step. `progress(step, loss)` may raise to cancel.
    """
    rng = np.random.default_rng(seed)
    curves_rng = np.random.default_rng(seed + 1)  # its own stream: adding curves leaves the patches as they were
    torch.manual_seed(seed)
    net = net.to(device).train()
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            inputs, labels = samples[rng.integers(len(samples))]
            where = _random_patch(rng, labels.shape, np.array(patch), labels, tumour_fraction=2 / 3)
            x = drop_contrasts(inputs[(slice(None),) + where], rng, drop)
            xs.append(apply_contrast_curves(x, curves_rng, curves).astype(np.float32))
            ys.append(labels_to_regions(labels[where]))
        x = torch.from_numpy(np.stack(xs)).to(device)
        y = torch.from_numpy(np.stack(ys)).to(device)
        optimiser.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
    net.eval()
    return losses
