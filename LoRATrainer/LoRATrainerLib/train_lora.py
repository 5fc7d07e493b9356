"""Training a LoRA adapter on SAM's image encoder (and, if asked, its mask decoder in full).

Data as SAMBA's SAM training (sam_training): every slice that shows tumour, per modality and
view, with the whole tumour's box jittered by up to 19 px per side; Dice loss on the sigmoid of
the mask logits, taken in each slice's own pixel frame. The encoder learns, so nothing can be
cached: each step runs the encoder with its LoRA layers.

Validation, before training (the base) and after every epoch: whole-tumour Dice over held-out
slices, SAM prompted with each slice's exact tumour box (no jitter), pooled over all those
slices (2|A∩B| / (|A|+|B|)). It measures what the adapter changes, SAM's mask inside a good
box, quickly; the full pipeline (YOLO boxes, voting) is measured by `slicer-samba evaluate`.

Resumable: after each epoch rank 0 writes ADAPTER_DIR/.checkpoint (checkpoints.py: the trained
tensors in safetensors, the optimiser state, progress.json last); a re-run with the same
settings continues from it. Every epoch's shuffling, box jitter and
dropout are seeded from (seed, epoch, rank), so a resumed run ends with the same weights as
an uninterrupted one. The adapter itself is written once, at the end, atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import DistributedSampler

from SAMBACore import adapters
from LoRATrainerLib import checkpoints
from LoRATrainerLib.distributed import World, sum_over_ranks, wrap
from LoRATrainerLib.training_data import Case, check_has_tumour
from SAMBACore.brats import MODALITIES
from SAMBASegmentLib.sam_runner import decode_batched, decode_boxes, encode_slices, input_size, map_boxes, resize_slices
from SAMBASegmentLib.sam_training import SamSample, jitter_box, samples_from_case
from SAMBASegmentLib.samba_bundle import load_samba_models
from SAMBASegmentLib.slices import VIEWS, views_and_contrasts

VALIDATION_METRIC = ("whole-tumour Dice pooled over held-out slices, SAM prompted with each slice's "
                     "exact tumour box (no jitter); measures SAM's mask inside a good box, not YOLO or voting")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    targets: tuple[str, ...] = adapters.SAM_ENCODER_TARGETS
    with_decoder: bool = False
    epochs: int = 5
    batch: int = 8
    lr: float = 1e-4
    seed: int = 0
    steps_per_epoch: int | None = None  # None: one pass over this rank's share of the slices
    # None: the stacks SAMBA Segment's default preset runs with this base on this device (default_stacks)
    views: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None
    # The (modality, view) pairs trained on, when neither views nor modalities was chosen: the default preset's
    # own (balanced's three are not each of its contrasts in each of its views). None: views x modalities.
    stacks: tuple[tuple[str, str], ...] | None = None
    val_slices: int = 300  # at most, spread evenly over the held-out slices: a quick check each epoch

    def __post_init__(self):
        for name in ("epochs", "batch", "val_slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.lr <= 0:
            raise ValueError(f"The learning rate must be positive, not {self.lr}.")
        views = set(self.views or ()) | {v for _, v in self.stacks or ()}
        modalities = set(self.modalities or ()) | {m for m, _ in self.stacks or ()}
        unknown = sorted(views - set(VIEWS)) + sorted(modalities - set(MODALITIES))
        if unknown:
            raise ValueError(f"Unknown views or modalities {unknown}: choose from {', '.join(VIEWS + MODALITIES)}.")

    @property
    def spec(self) -> adapters.LoraSpec:
        return adapters.LoraSpec(tuple(self.targets), self.rank, self.alpha, self.dropout)

    def record(self) -> dict:
        return {k: _listed(v) for k, v in asdict(self).items()}


def _listed(value):
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


def stacks_from_text(views: str | None, modalities: str | None) -> dict[str, tuple[str, ...]]:
    """LoraSettings' views / modalities from comma-separated text ("axial, coronal"), as the command line
    and the widget take them; an empty field is left out (default_stacks then chooses)."""
    stacks = {}
    for key, text in (("views", views), ("modalities", modalities)):
        names = tuple(name.strip().lower() for name in (text or "").split(",") if name.strip())
        if names:
            stacks[key] = names
    return stacks


def default_stacks(sam, device) -> tuple[tuple[str, str], ...]:
    """The (modality, view) stacks that SAMBA Segment's default preset runs with this SAM on this device
    (pipeline.choose_preset): an adapter learns the slices it will see. LiteMedSAM on a CPU: FLAIR
    axial only; on a GPU FLAIR axial and coronal and T1CE axial (the preset balanced's); the small phantom
    SAM: all four contrasts in all three views."""
    from SAMBASegmentLib.pipeline import PRESETS, choose_preset

    return tuple(PRESETS[choose_preset("auto", sam, str(device))])


def with_default_stacks(settings: LoraSettings, sam, device) -> LoraSettings:
    """`settings` with what was left out filled in from default_stacks: neither views nor modalities chosen,
    the preset's own stacks; one of them chosen, the other from the preset's (each in each)."""
    if settings.views is not None and settings.modalities is not None:
        return settings
    stacks = settings.stacks or default_stacks(sam, device)
    views, modalities = views_and_contrasts(stacks)
    if settings.views is None and settings.modalities is None:
        return replace(settings, views=views, modalities=modalities, stacks=stacks)
    return replace(settings, views=settings.views or views, modalities=settings.modalities or modalities)


class BoxPromptedSam(nn.Module):
    """SAM from preprocessed images and model-frame boxes to low-res single-mask logits: the one
    forward DistributedDataParallel wraps, so every trained parameter is used in it."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        embeddings = self.sam.image_encoder(images)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = decode_batched(self.sam, embeddings, sparse, dense)
        return logits[:, :1]


def _slices(cases: list[Case], settings: LoraSettings) -> list[SamSample]:
    return [s for c in cases
            for s in samples_from_case(c.images, c.labels, settings.views, settings.modalities, stacks=settings.stacks)]


def _model_inputs(sam, samples: list[SamSample], boxes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slice resized and padded on its own (shapes differ between views), boxes mapped alike."""
    images, mapped = [], []
    for sample, box in zip(samples, boxes):
        resized = torch.as_tensor(resize_slices(sam, sample.image[None])[0], device=sam.device)
        images.append(sam.preprocess(resized.permute(2, 0, 1)[None].float()))
        mapped.append(map_boxes(sam, box[None], sample.image.shape[:2]))
    return torch.cat(images), torch.as_tensor(np.concatenate(mapped), dtype=torch.float32, device=sam.device)


def _batch_loss(model: nn.Module, sam, samples: list[SamSample], rng: np.random.Generator, loss_fn) -> torch.Tensor:
    boxes = [jitter_box(s.box, s.image.shape[:2], rng) for s in samples]
    images, mapped = _model_inputs(sam, samples, boxes)
    logits = model(images, mapped)
    total = 0.0
    for size in sorted({s.image.shape[:2] for s in samples}):  # postprocess_masks maps one size at a time
        chosen = [i for i, s in enumerate(samples) if s.image.shape[:2] == size]
        masks = sam.postprocess_masks(logits[chosen], input_size(sam, size), size)
        target = torch.as_tensor(np.stack([samples[i].target for i in chosen]), dtype=torch.float32, device=sam.device)
        total = total + loss_fn(masks, target[:, None]) * len(chosen)
    return total / len(samples)


def validation_dice(sam, samples: list[SamSample], world: World) -> float:
    """VALIDATION_METRIC on `samples`, shared out over the ranks and summed."""
    sam.eval()
    counts = [0.0, 0.0]  # 2 * intersection, |prediction| + |truth|
    mine = samples[world.rank::world.size]
    for size in sorted({s.image.shape[:2] for s in mine}):
        group = [s for s in mine if s.image.shape[:2] == size]
        embeddings = encode_slices(sam, np.stack([s.image for s in group]))
        masks, _ = decode_boxes(sam, embeddings, np.stack([s.box for s in group]), size)
        predicted = masks[:, 0].cpu().numpy()
        truth = np.stack([s.target for s in group])
        counts[0] += 2.0 * np.logical_and(predicted, truth).sum()
        counts[1] += predicted.sum() + truth.sum()
    overlap, total = sum_over_ranks(counts, world)
    return float(overlap / total) if total else 1.0


def _spread(samples: list, n: int) -> list:
    """At most n items, evenly spaced, so every case and view stays represented."""
    if len(samples) <= n:
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, n).round().astype(int)]


def train_lora(
    base,
    out_dir,
    train_cases: list[Case],
    val_cases: list[Case],
    settings: LoraSettings = LoraSettings(),
    world: World | None = None,
    command: str = "",
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train and write the adapter for the SAM of bundle `base` to `out_dir`; returns adapter.json's
    content. `progress(fraction, message)` is called every step on rank 0 and may raise
    background.Cancelled: the run stops, the previous adapter in `out_dir` stays as it was.
    `on_epoch({"epoch", "loss", "dice"})` gets each epoch's mean loss and validation Dice (rank 0),
    for live curves."""
    started = time.perf_counter()
    world = world or World()
    out_dir = Path(out_dir)
    report = progress if (progress and world.main) else (lambda fraction, message: None)
    say = log if world.main else (lambda message: None)
    check_has_tumour(train_cases, "training")
    check_has_tumour(val_cases, "validation")
    models = load_samba_models(base, world.device)
    sam, bundle = models.sam, models.bundle
    base_sha = bundle.component("sam").sha256
    if settings.views is None or settings.modalities is None:
        settings = with_default_stacks(settings, sam, world.device)
        trained = (", ".join(f"{m.upper()} {v}" for m, v in settings.stacks) if settings.stacks else
                   f"{', '.join(settings.modalities)} in the {', '.join(settings.views)} view(s)")
        say(f"Training on {trained}: what SAMBA Segment's default preset runs with this base on {world.device}")
    train, val = _slices(train_cases, settings), _spread(_slices(val_cases, settings), settings.val_slices)
    say(f"{len(train_cases)} training case(s), {len(train)} slices; {len(val_cases)} validation case(s), {len(val)} slices")

    sam.requires_grad_(False)
    torch.manual_seed(settings.seed)  # LoRA's A matrices start random: same seed, same start
    adapters.add_lora(sam.image_encoder, settings.spec)
    if settings.with_decoder:
        # Only what shapes the single-mask output learns: the IoU head and the three multimask
        # hypernetworks get no gradient from this loss (DDP would wait for theirs forever).
        sam.mask_decoder.requires_grad_(True)
        sam.mask_decoder.iou_prediction_head.requires_grad_(False)
        sam.mask_decoder.output_hypernetworks_mlps[1:].requires_grad_(False)
    trainable = list(checkpoints.trained_parameters(sam).values())
    optimiser = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    record = checkpoints.EpochRecord(out_dir / checkpoints.FOLDER, sam, optimiser, settings.record(), base_sha,
                                     lambda: validation_dice(sam, val, world), started, say, write=world.main)
    model = wrap(BoxPromptedSam(sam), world)
    loss_fn = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    sampler = DistributedSampler(train, num_replicas=world.size, rank=world.rank, shuffle=True, seed=settings.seed)
    steps = settings.steps_per_epoch or math.ceil(sampler.num_samples / settings.batch)
    for epoch in range(record.first, settings.epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        rng = np.random.default_rng([settings.seed, epoch, world.rank])
        torch.manual_seed(settings.seed * 100003 + epoch * 101 + world.rank)  # LoRA dropout
        adapters.train_with_frozen_batch_norm(sam)
        epoch_losses = []
        for step in range(steps):
            chosen = [train[order[(step * settings.batch + j) % len(order)]] for j in range(settings.batch)]
            loss = _batch_loss(model, sam, chosen, rng, loss_fn)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch_losses.append(loss.item())
            report((epoch + (step + 1) / steps) / settings.epochs,
                   f"epoch {epoch + 1}/{settings.epochs} step {step + 1}/{steps} loss {loss.item():.3f}")
        record.end_epoch(epoch, float(np.mean(epoch_losses)), validation_dice(sam, val, world), on_epoch)
    curve = record.curve
    info = {
        "data": {"train_cases": [c.name for c in train_cases], "val_cases": [c.name for c in val_cases],
                 "train_slices": len(train), "val_slices": len(val)},
        "validation": {"metric": VALIDATION_METRIC, "base": curve[0], "curve": curve[1:], "final": curve[-1]},
        "training": {"command": command, **settings.record(), "steps_per_epoch": steps, "loss_curve": record.losses,
                     "world_size": world.size, "device": world.device, "resumed_from_epoch": record.first,
                     "trainable_parameters": sum(p.numel() for p in trainable), "seconds": round(record.seconds(), 1)},
    }
    if world.main:
        modules = {"mask_decoder": sam.mask_decoder.state_dict()} if settings.with_decoder else None
        adapters.save_adapter(out_dir, sam.image_encoder, settings.spec,
                              adapters.base_record(bundle, "sam", "image_encoder"), info, modules)
        say(f"Adapter written: {out_dir} (validation WT Dice {curve[0]:.3f} -> {curve[-1]:.3f})")
    return info
