"""Fine-tuning SAM on box-prompted slices: the decoder alone (as the paper), or the whole small model.

As in the SAMBA paper: the box is the whole tumour's box on the slice, jittered by up to 19
pixels per side so the model does not learn to trust a perfect box; the loss is Dice on the
sigmoid of the mask logits; with a frozen encoder the image embeddings are computed once and
cached. Unlike the published code the loss is taken in the slice's own pixel frame (logits
mapped back with sam.postprocess_masks), so non-square slices are trained exactly as they are
segmented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceLoss
from segment_anything.modeling import Sam

from SAMBACore.brats import MODALITIES, region_masks
from SAMBASegmentLib.prompts import box_of_mask
from SAMBASegmentLib.sam_runner import decode_logits, encode_slices, input_size, resize_slices
from SAMBASegmentLib.slices import VIEWS, normalise_slices, view_slices, views_and_contrasts

MAX_JITTER = 19  # pixels per side, as the paper
ENCODE_PART = 64  # slices encoded per call when caching embeddings
# The mask decoder's "head": what turns the decoder's tokens into mask pixels. Training only these
# (~0.2M of LiteMedSAM's 4M decoder parameters) adapts the outline to new data while the two-way
# transformer keeps what pretraining learned, and a bundle stores under 1 MB of them.
DECODER_HEAD = ("output_upscaling", "output_hypernetworks_mlps")


@dataclass
class SamSample:
    image: np.ndarray  # (H, W, 3) uint8, normalised as at inference
    box: np.ndarray  # (4,) whole-tumour box on this slice, x0 y0 x1 y1
    target: np.ndarray  # (H, W) bool whole tumour, or (3, H, W) WT, TC, ET for SAMBA-mc


def samples_from_case(images: dict[str, np.ndarray], labels: np.ndarray, views=VIEWS, modalities=MODALITIES,
                      multimask: bool = False, stacks=None) -> list[SamSample]:
    """One sample per (modality, view, slice) that shows tumour. `stacks`: only these (modality, view)
    pairs (a preset's, which is not every modality in every view); None: each of `modalities` in each of `views`."""
    if stacks is not None:
        views, modalities = views_and_contrasts(stacks)
    wanted = set(stacks) if stacks is not None else {(m, v) for m in modalities for v in views}
    masks = region_masks(labels)
    regions = np.stack([masks["WT"], masks["TC"], masks["ET"]])
    samples = []
    for view in views:
        whole = view_slices(masks["WT"], view)
        with_tumour = np.flatnonzero(whole.reshape(whole.shape[0], -1).any(axis=1))
        region_stack = np.stack([view_slices(region, view) for region in regions], axis=1)  # (N, 3, H, W)
        for modality in (m for m in modalities if (m, view) in wanted):
            stack = normalise_slices(view_slices(images[modality], view)[with_tumour])
            for image, n in zip(stack, with_tumour):
                target = region_stack[n] if multimask else whole[n]
                samples.append(SamSample(image, box_of_mask(whole[n]), target.copy()))
    return samples


def jitter_box(box: np.ndarray, size, rng: np.random.Generator, max_px: int = MAX_JITTER) -> np.ndarray:
    """Move each side by up to max_px pixels, in or out, keeping a valid box inside the slice."""
    height, width = size
    x0, y0, x1, y1 = np.asarray(box) + rng.integers(-max_px, max_px + 1, 4)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = max(min(x1, width), x0 + 1), max(min(y1, height), y0 + 1)
    return np.array([x0, y0, x1, y1], np.float32)


def _groups_by_size(samples: list[SamSample]) -> list[list[int]]:
    # postprocess_masks maps one batch to one original size, so batches never mix slice shapes.
    groups: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(sample.image.shape[:2], []).append(index)
    return list(groups.values())


def train_sam(
    sam: Sam,
    samples: list[SamSample],
    steps: int,
    batch: int = 8,
    lr: float = 1e-4,
    train_encoder: bool = False,
    multimask: bool = False,
    jitter: int = MAX_JITTER,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    head_only: bool = False,
) -> list[float]:
    """Adam on Dice loss; returns the loss per step. `progress(step, loss)` may raise to cancel.

    train_encoder False: only the mask decoder learns (image and prompt encoders frozen) and the
    embeddings are computed once. True: the image encoder and decoder learn (for the small SAM
    trained from scratch); the prompt encoder stays frozen as in the paper. BatchNorm layers stay in
    eval mode either way. head_only (with a frozen encoder): only the decoder's DECODER_HEAD learns.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for name, module in (("image_encoder", sam.image_encoder), ("prompt_encoder", sam.prompt_encoder)):
        module.requires_grad_(name == "image_encoder" and train_encoder)
    sam.mask_decoder.requires_grad_(not head_only)
    if head_only:
        if train_encoder:
            raise ValueError("head_only trains part of the decoder: the encoder must be frozen (train_encoder False).")
        for name in DECODER_HEAD:
            getattr(sam.mask_decoder, name).requires_grad_(True)
    trainable = [p for p in sam.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=lr)
    loss_fn = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    groups = _groups_by_size(samples)
    cached = None
    if not train_encoder:  # frozen encoder: embed every sample once
        sam.eval()
        cached = {}
        for group in groups:
            # In parts: one call for a whole group held its embeddings up to three times at once (20 GB
            # for LiteMedSAM on 1,122 slices, 4 MB each).
            for start in range(0, len(group), ENCODE_PART):
                part = group[start:start + ENCODE_PART]
                embeddings = encode_slices(sam, np.stack([samples[i].image for i in part]))
                cached.update({i: embeddings[k] for k, i in enumerate(part)})
    from SAMBACore.adapters import train_with_frozen_batch_norm  # imports peft: only when training

    # BatchNorms (LiteMedSAM's TinyViT; SAM's ViT has none) keep their pretrained statistics: a few
    # slices' batch statistics would skew the loss and overwrite them, as for LoRA.
    train_with_frozen_batch_norm(sam)
    losses = []
    for step in range(steps):
        group = groups[rng.integers(len(groups))]
        chosen = rng.choice(group, size=min(batch, len(group)), replace=False)
        size = samples[chosen[0]].image.shape[:2]
        boxes = np.stack([jitter_box(samples[i].box, size, rng, jitter) for i in chosen])
        if cached is not None:
            embeddings = torch.stack([cached[i] for i in chosen])
        else:
            images = torch.as_tensor(resize_slices(sam, np.stack([samples[i].image for i in chosen])), device=sam.device)
            embeddings = sam.image_encoder(sam.preprocess(images.permute(0, 3, 1, 2).float()))
        # SAMBA-mc trains all four mask tokens: 0 on the whole tumour too, so that binary mode
        # (token 0) and the voting net trained on its votes keep working with the same decoder.
        logits, _ = decode_logits(sam, embeddings, boxes, size, tokens=slice(0, 4) if multimask else slice(0, 1))
        logits = sam.postprocess_masks(logits, input_size(sam, size), size)
        target = torch.as_tensor(np.stack([samples[i].target for i in chosen]), dtype=torch.float32, device=sam.device)
        target = torch.cat([target[:, :1], target], dim=1) if multimask else target[:, None]
        loss = loss_fn(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
    sam.eval()
    return losses
