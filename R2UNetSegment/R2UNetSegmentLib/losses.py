"""Dice (MONAI's) and the hybrid Dice + weighted BCE loss, on logits, binary or multi-class.

Binary: one logit channel, target (N, 1, ...) of 0/1, probability sigmoid(logit).
Multi-class: C >= 2 logit channels, softmax probabilities, target one-hot (N, C, ...) or a label
map (N, 1, ...) of class indices.

include_background decides what the Dice term scores on a patch with no tumour (the case the
cascade study met with patch-wise training):
- True: the background channel is scored too (for binary, 1 - sigmoid), so a correct empty
  prediction gets a Dice term near 0, and a patch without tumour still teaches something;
- False: only foreground channels. On an empty target a channel scores
  sum(p) / (sum(p) + smooth): finite, never NaN thanks to the smoothing, but near 1 unless the
  prediction is almost exactly empty. Use it where every patch contains tumour.
smooth defaults to 1 (not MONAI's 1e-5) so that an empty channel predicted nearly empty scores
near 0 instead of near 1; on tumours of hundreds of voxels its effect is negligible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


def one_hot_target(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A one-hot float target (N, C, ...) from a label map (N, 1, ...); one-hot targets pass."""
    if target.shape[1] == num_classes and num_classes > 1:
        return target.float()
    labels = target[:, 0].long()
    return F.one_hot(labels, num_classes).movedim(-1, 1).float()


def positive_weight(target: torch.Tensor, max_pos_weight: float = 100.0) -> torch.Tensor:
    """Per channel, negative / positive voxel count of the batch, clipped to [1, max_pos_weight].

    The BCE term multiplies its positive voxels by this, so a small tumour weighs as much as the
    background around it; the clip keeps a patch with a handful of positives (or none) from
    blowing up the loss. Returns a tensor of shape (C,).
    """
    dims = [0] + list(range(2, target.dim()))
    positives = target.float().sum(dims)
    negatives = target[:, :1].numel() - positives
    return (negatives / positives.clamp(min=1)).clamp(1.0, max_pos_weight)


class HybridLoss(nn.Module):
    """dice_weight * Dice + bce_weight * BCE with pos_weight = positive_weight(target).

    The BCE is per channel on the same probabilities the Dice scores (sigmoid for one channel,
    softmax for several), each channel with its own pos_weight, averaged over voxels.
    bce_weight=0 gives the plain Dice loss (MONAI's DiceLoss, softmax) with the background
    handling described above, binary included.
    """

    def __init__(
        self,
        include_background: bool = True,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        max_pos_weight: float = 100.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.dice_weight, self.bce_weight, self.max_pos_weight = dice_weight, bce_weight, max_pos_weight
        self.include_background = include_background
        # Always softmax over >= 2 channels: a binary logit z becomes the pair (0, z), whose
        # softmax is exactly (1 - sigmoid(z), sigmoid(z)), so one Dice serves both cases.
        self.dice = DiceLoss(include_background=include_background, softmax=True, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            target = target.float()
            log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
            dice = self.dice(torch.cat([torch.zeros_like(logits), logits], 1), torch.cat([1 - target, target], 1))
        else:
            target = one_hot_target(target, logits.shape[1])
            log_p = F.log_softmax(logits, dim=1)
            # log(1 - p) without log(0) when a class takes all the probability.
            log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
            dice = self.dice(logits, target)
        weight = positive_weight(target, self.max_pos_weight).view(1, -1, *[1] * (logits.dim() - 2))
        bce = -(weight * target * log_p + (1 - target) * log_not_p).mean()
        return self.dice_weight * dice + self.bce_weight * bce
