"""Training a LoRA adapter on one network of an R2UNetSegment bundle: the U-Net, the attention
R2U-Net, or stage 2 of the cascade.

LoRA goes on every Conv2d/Conv3d layer (adapters.conv_targets; peft cannot wrap the transposed
convolutions, which stay frozen with the rest). Data and loss are those the bundle's networks were
trained with (R2UNetSegmentLib.training): images z-scored by inference.normalise and cropped to the
brain's box, random patches of which tumour_fraction (two thirds by default) are centred on tumour,
the hybrid loss (Dice with background + weighted BCE). Stage 2 of the cascade sees what it sees at
inference: the image plus the one-hot labels of the bundle's own (frozen) stage 1, run on the
down-sampled brain box and brought back to full resolution (as inference.predict_cascade does).

A bundle trained with presence flags (any set of contrasts) gets its four flags, all set: the adapter
is trained on four-contrast cases, and the flags keep the inputs the network was trained on.

BatchNorm stays in eval mode throughout: its running statistics belong to the frozen base (the
adapter does not store them), so training normalises with the statistics inference will use.

Validation, before training (the base) and after every epoch: VALIDATION_METRIC.

Resumable (checkpoints.py): after each epoch rank 0 writes ADAPTER_DIR/.checkpoint; the patches
of step s of epoch e come from a generator seeded (seed, e, s), with the rank appended under
torchrun, and LoRA dropout is seeded per epoch, so a resumed run ends with the same weights as an
uninterrupted one. The adapter is written once, at the end, atomically, by rank 0.

Under torchrun (distributed.py) every rank draws its own patches and DistributedDataParallel
averages the gradients, so N ranks train on N times the patches per step; validation cases are
shared out over the ranks and the counts summed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from LoRATrainerLib import checkpoints
from LoRATrainerLib.distributed import World, sum_over_ranks, wrap
from LoRATrainerLib.training_data import Case
from R2UNetSegmentLib.cascade_inputs import downsample, stage2_inputs, upsample_labels
from R2UNetSegmentLib.inference import brain_box, brain_mask, drop_small_pieces, labels_from, normalise, predict_full
from R2UNetSegmentLib.losses import HybridLoss
from R2UNetSegmentLib.presence import with_flags
from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models
from R2UNetSegmentLib.training import CLASSES, MAX_POS_WEIGHT, TUMOUR_FRACTION, patch_batch, stage1_labels
from SAMBACore import adapters
from SAMBACore.brats import MODALITIES, region_masks
from SAMBACore.inputs import InputError

COMPONENTS = ("unet", "r2unet", "cascade_stage2")
VALIDATION_METRIC = ("whole-tumour Dice pooled over the held-out cases' voxels, the adapted network run on each "
                     "whole brain box (full-volume inference, which patch-wise inference equals; for cascade_stage2 "
                     "after the bundle's own stage 1)")


@dataclass(frozen=True)
class UnetLoraSettings:
    component: str = "unet"
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()  # layer names to adapt; () = every Conv2d/Conv3d
    epochs: int = 5
    steps_per_epoch: int = 50
    batch: int = 2  # patches per step
    patch: int = 48  # patch edge in voxels
    tumour_fraction: float = TUMOUR_FRACTION  # of the patches centred on a tumour voxel; the rest anywhere in the brain
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"U-Net LoRA adapts one of {', '.join(COMPONENTS)}, not {self.component!r}.")
        for name in ("epochs", "steps_per_epoch", "batch", "patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.lr <= 0:
            raise ValueError(f"The learning rate must be positive, not {self.lr}.")
        if not 0 <= self.tumour_fraction <= 1:
            raise ValueError(f"The tumour fraction of the patches is between 0 and 1, not {self.tumour_fraction}.")

    def spec(self, model: nn.Module) -> adapters.LoraSpec:
        """The LoRA layers for `model` (read before LoRA is added: peft's own A and B are convolutions too)."""
        return adapters.LoraSpec(tuple(self.targets) or adapters.conv_targets(model), self.rank, self.alpha, self.dropout)

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _prepared(case: Case, cascade, device: str, flags: bool) -> dict:
    """A case as the network sees it: normalised, cropped to the brain's box, with the four presence
    flags when the bundle was trained with them (`flags`; the training cases hold all four contrasts);
    for stage 2 with the upsampled labels of the bundle's stage 1 (`cascade`), computed as inference
    computes them, and the cascade's min_piece_fraction, which segment() applies to its labels."""
    image = normalise(np.stack([case.images[m] for m in MODALITIES]))
    box = brain_box(image)
    image = image[(slice(None),) + box]
    prepared = {"name": case.name, "image": np.ascontiguousarray(with_flags(image, MODALITIES) if flags else image),
                "labels": np.ascontiguousarray(case.labels[box]),
                "brain": brain_mask(image)}  # segment() labels nothing outside it; neither does validation
    if cascade is not None:
        low = stage1_labels(cascade.stage1, downsample(prepared["image"], cascade.factor), device)
        prepared["stage1"] = upsample_labels(low, prepared["image"].shape[1:])
        prepared["min_piece_fraction"] = cascade.min_piece_fraction
    return prepared


def _network_input(case: dict, where: tuple, image: np.ndarray) -> np.ndarray:
    """The network's input for `image`, the case's image or its patch at `where` (patch_batch's `extra`)."""
    if "stage1" not in case:
        return image
    return stage2_inputs(image, case["stage1"][where], CLASSES)


def validation_dice(model: nn.Module, cases: list[dict], world: World = World()) -> float:
    """VALIDATION_METRIC on prepared cases, shared out over the ranks and summed."""
    counts = [0.0, 0.0]  # 2 * intersection, |prediction| + |truth|
    for case in cases[world.rank::world.size]:
        image = _network_input(case, (...,), case["image"])
        labels = np.where(case["brain"], labels_from(predict_full(model, image, world.device)), 0)
        predicted = region_masks(drop_small_pieces(labels, case.get("min_piece_fraction", 0.0)))["WT"]
        truth = region_masks(case["labels"])["WT"]
        counts[0] += 2.0 * np.logical_and(predicted, truth).sum()
        counts[1] += float(predicted.sum() + truth.sum())
    overlap, total = sum_over_ranks(counts, world)
    return float(overlap / total) if total else 1.0


def _check_data(models, train_cases: list[Case], val_cases: list[Case], base) -> None:
    if models.contrast_channels != len(MODALITIES) or models.classes != CLASSES:
        raise InputError(f"The bundle {base} takes {models.contrast_channels} image channel(s) and predicts {models.classes} "
                         f"classes, but BraTS cases give {len(MODALITIES)} channels and {CLASSES} classes: choose a "
                         "bundle trained on BraTS cases (such as phantom-r2unet).")
    for cases, what in ((train_cases, "training"), (val_cases, "validation")):
        if not any(region_masks(c.labels)["WT"].any() for c in cases):
            raise InputError(f"The {what} cases ({', '.join(c.name for c in cases)}) have no tumour in their ground "
                             "truth, so the adapter would learn or be scored on nothing: add cases with a segmented tumour.")


def train_unet_lora(
    base,
    out_dir,
    train_cases: list[Case],
    val_cases: list[Case],
    settings: UnetLoraSettings = UnetLoraSettings(),
    world: World | None = None,
    command: str = "",
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train and write the adapter for `settings.component` of R2UNetSegment bundle `base` to
    `out_dir`; returns adapter.json's content. `progress(fraction, message)` is called every step
    on rank 0 and may raise background.Cancelled: the run stops, the previous adapter in `out_dir`
    stays as it was. `on_epoch({"epoch", "loss", "dice"})` gets each epoch's mean loss and
    validation Dice (rank 0)."""
    started = time.perf_counter()
    world = world or World()
    device = world.device
    out_dir = Path(out_dir)
    report = progress if (progress and world.main) else (lambda fraction, message: None)
    say = log if world.main else (lambda message: None)
    models = load_r2unet_models(base, device)
    bundle, component = models.bundle, settings.component
    base_sha = bundle.component(component).sha256  # a BundleError naming what the bundle has, if it lacks it
    _check_data(models, train_cases, val_cases, base)
    cascade = models.cascade if component == "cascade_stage2" else None
    model = cascade.stage2 if cascade else getattr(models, component)
    train = [_prepared(c, cascade, device, models.presence_flags) for c in train_cases]
    val = [_prepared(c, cascade, device, models.presence_flags) for c in val_cases]
    say(f"{component}: {len(train)} training case(s), {len(val)} validation case(s)")

    model.requires_grad_(False)
    torch.manual_seed(settings.seed)  # LoRA's A matrices start random: same seed, same start
    spec = settings.spec(model)
    adapters.add_lora(model, spec)
    trainable = list(checkpoints.trained_parameters(model).values())
    optimiser = torch.optim.Adam(trainable, lr=settings.lr)
    record = checkpoints.EpochRecord(out_dir / checkpoints.FOLDER, model, optimiser, settings.record(), base_sha,
                                     lambda: validation_dice(model, val, world), started, say, write=world.main)
    trained = wrap(model, world)

    sample = patch_batch(train, "image", "labels", (settings.patch,) * 3, settings.batch, extra=_network_input,
                         tumour_fraction=settings.tumour_fraction)
    loss_fn = HybridLoss(True, max_pos_weight=MAX_POS_WEIGHT)
    steps = settings.steps_per_epoch
    for epoch in range(record.first, settings.epochs):
        torch.manual_seed(settings.seed * 100003 + epoch * 101)  # LoRA dropout
        adapters.train_with_frozen_batch_norm(model)
        epoch_losses = []
        for step in range(steps):
            # Each rank its own patches; one process draws exactly what it drew before torchrun was supported.
            x, y = sample(np.random.default_rng((settings.seed, epoch, step) + ((world.rank,) if world.distributed else ())))
            loss = loss_fn(trained(x.to(device)), y.to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch_losses.append(loss.item())
            report((epoch + (step + 1) / steps) / settings.epochs,
                   f"epoch {epoch + 1}/{settings.epochs} step {step + 1}/{steps} loss {loss.item():.3f}")
        record.end_epoch(epoch, float(np.mean(epoch_losses)), validation_dice(model, val, world), on_epoch)
    curve = record.curve
    info = {
        "data": {"train_cases": [c["name"] for c in train], "val_cases": [c["name"] for c in val]},
        "validation": {"metric": VALIDATION_METRIC, "base": curve[0], "curve": curve[1:], "final": curve[-1]},
        "training": {"command": command, **settings.record(), "loss_curve": record.losses, "device": device,
                     "world_size": world.size,
                     "resumed_from_epoch": record.first, "trainable_parameters": sum(p.numel() for p in trainable),
                     "loss": "Dice (with background) + weighted BCE, as the bundle's own training",
                     "seconds": round(record.seconds(), 1)},
    }
    if world.main:
        adapters.save_adapter(out_dir, model, spec, adapters.base_record(bundle, component, ""), info)
        say(f"Adapter written: {out_dir} (validation WT Dice {curve[0]:.3f} -> {curve[-1]:.3f})")
    return info
