"""Training the U-Net, the R2U-Net and the U-Net cascade from BraTS case folders into a bundle.

`slicer-samba train unet|r2unet|cascade DATA_DIR -o BUNDLE_DIR` calls these. Each adds or
replaces its component(s) in the bundle and records in the manifest how they were trained.

What every run does: images z-scored per channel with inference.normalise (as at inference),
for a config with "presence_flags" (the defaults) contrast dropout: cases may lack contrasts, a
missing or dropped channel is zero and four presence-flag channels say which are there
(presence.py; each sample drops a random subset with probability `contrast_dropout`), optionally
random contrast curves and drops favouring the sites' sets of contrasts (Augment), random patches of
which two thirds are centred on a tumour voxel, the hybrid loss (Dice + weighted
BCE on one-hot targets; the Dice includes the background because a patch can be tumour-free),
Adam. The batch of step s is drawn from a generator seeded with (seed, s), so a run depends on
nothing but the seed and the step: that is what makes resuming exact.

Resuming: every `checkpoint_every` steps the model, the optimiser state and the step go to
BUNDLE_DIR/.checkpoints/<component>.safetensors (+ .json); running the same command again
continues from there and ends with the same weights as an uninterrupted run. A checkpoint made
with other settings (data, widths, patch, lr, seed ...) is ignored, with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from SAMBACore.brats import MODALITIES, find_training_cases, read_case
from SAMBACore.contrast_curves import apply_contrast_curves

from .cascade_inputs import downsample, stage2_inputs, upsample_labels
from .losses import HybridLoss
from .presence import CONTRAST_DROPOUT, SITE_SUBSETS, drop_contrasts, stack, with_flags
from .r2unet_bundle import DEFAULT_FACTOR, build_model, save_r2unet_bundle

Log = Callable[[str], None]
Progress = Callable[[float, str], None]  # (fraction done, message); raising cancels (a checkpoint is kept)

CLASSES = 4  # background, NETC, SNFH, ET
CHANNELS = 2 * len(MODALITIES)  # the four contrasts (missing ones zero) and their presence flags
FLAGS = {"presence_flags": True}
UNET_CONFIG = {"in_channels": CHANNELS, "out_channels": CLASSES, "widths": [16, 32, 64, 128], **FLAGS}
R2UNET_CONFIG = {"in_channels": CHANNELS, "out_channels": CLASSES, "spatial_dims": 3, "base_width": 8,
                 "depth": 3, "attention": True, **FLAGS}
STAGE1_CONFIG = {"in_channels": CHANNELS, "out_channels": CLASSES, "widths": [16, 32, 64, 128], **FLAGS}
STAGE2_CONFIG = {"in_channels": CHANNELS + CLASSES, "out_channels": CLASSES, "widths": [16, 32, 64],
                 "factor": DEFAULT_FACTOR, **FLAGS}
CHECKPOINTS = ".checkpoints"
TUMOUR_FRACTION = 2 / 3
# The BCE's positive weight (negatives / positives) is clipped lower than the loss's default 100:
# with ~1% tumour a weight of 100 moves the best probability of an uncertain voxel far towards
# tumour, and a briefly trained stage 1 on whole volumes called ten times the tumour it should.
MAX_POS_WEIGHT = 10.0


@dataclass(frozen=True)
class Augment:
    """What a run does beyond random patches and contrast dropout; off by default, so that the runs
    made before these existed are reproduced (and their checkpoints resumed)."""

    contrast_curves: float = 0.0  # per image, the probability of a random monotone curve (SAMBACore.contrast_curves)
    site_subsets: bool = False  # half of the contrast drops keep one of presence.SITE_SUBSETS

    def record(self) -> dict:
        """The manifest's (and the checkpoint signature's) entries for what is on."""
        out = {}
        if self.contrast_curves:
            out["contrast_curves"] = (f"p {self.contrast_curves:g} per image: a random monotone intensity curve "
                                      "(MONAI RandHistogramShift), the brain's mean and spread kept")
        if self.site_subsets:
            out["site_subsets"] = ("half of the contrast drops keep one of "
                                   + "; ".join("+".join(s) for s in SITE_SUBSETS))
        return out


# ---------------------------------------------------------------- data

def load_cases(data_dir, log: Log = print, factor: float | None = None, allow_missing: bool = False) -> list[dict]:
    """Each case normalised, as {"name", "image" (4, *S), "labels" (*S), "box", "present"}.

    allow_missing: cases with any of the four contrasts (a missing one is zeros; "present" names
    those there), for models with presence flags; otherwise each case needs all four.

    "box" is the brain's bounding box: patches are drawn inside it (outside is all zeros) and
    only that part is kept in memory. With `factor`, also the whole case down-sampled for the
    cascade's stage 1: "low_full" (what stage 1 sees at inference), and for training its brain
    box "low_image" and "low_labels" (labels by averaging their one-hot maps, so a small region
    is not lost between the samples of nearest-neighbour down-sampling).
    """
    from .inference import brain_box, normalise

    found, skipped = find_training_cases(data_dir, allow_missing=allow_missing)
    for reason in skipped:
        log(f"skipped {reason}")
    log(f"reading {len(found)} case(s) from {data_dir}")
    cases = []
    for files in found:
        images, labels, _ = read_case(files)
        image, present = stack(images)
        image = normalise(image)
        case = {"name": files["seg"].parent.name, "shape": labels.shape, "present": present}
        if factor is not None:
            one_hot = np.eye(CLASSES, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
            case["low_full"] = downsample(image, factor)
            low_box = brain_box(case["low_full"])
            case["low_image"] = np.ascontiguousarray(case["low_full"][(slice(None),) + low_box])
            case["low_labels"] = np.ascontiguousarray(downsample(one_hot, factor).argmax(0).astype(np.uint8)[low_box])
        case["box"] = brain_box(image)
        case["image"] = np.ascontiguousarray(image[(slice(None),) + case["box"]])
        case["labels"] = np.ascontiguousarray(labels[case["box"]])
        cases.append(case)
    return cases


def random_patch(rng: np.random.Generator, shape, patch, labels: np.ndarray, tumour_fraction: float = TUMOUR_FRACTION):
    """Slices of one patch (at most `shape`); with probability tumour_fraction centred on a tumour voxel."""
    shape = np.array(shape)
    size = np.minimum(np.array(patch), shape)
    if rng.random() < tumour_fraction and labels.any():
        voxels = np.flatnonzero(labels)
        centre = np.array(np.unravel_index(voxels[rng.integers(len(voxels))], labels.shape))
        corner = centre - size // 2
    else:
        corner = rng.integers(0, shape - size + 1)
    corner = np.clip(corner, 0, shape - size)
    return tuple(slice(int(c), int(c + s)) for c, s in zip(corner, size))


def patch_batch(cases: list[dict], image_key: str, label_key: str, patch, batch: int, extra: Callable | None = None,
                tumour_fraction: float = TUMOUR_FRACTION, contrast_dropout: float | None = None,
                augment: Augment | None = None):
    """A sampler rng -> (x, y) of `batch` random patches (random_patch); `extra(case, where, image_patch)`
    may add channels. contrast_dropout (a probability; None: no presence flags, the four channels as
    they are): each patch keeps presence.drop_contrasts of its case's contrasts, the others zeroed,
    and gets the four presence flags (presence.with_flags); `extra` then sees the kept ones as case["kept"].
    `augment`: random contrast curves on the four images, drops favouring the sites' subsets."""
    augment = augment or Augment()

    def sample(rng):
        xs, ys = [], []
        for _ in range(batch):
            case = cases[rng.integers(len(cases))]
            labels = case[label_key]
            where = random_patch(rng, labels.shape, patch, labels, tumour_fraction)
            image = case[image_key][(slice(None),) + where]
            if contrast_dropout is not None:
                kept = drop_contrasts(rng, case["present"], contrast_dropout, augment.site_subsets)
                image, case = with_flags(image, kept), {**case, "kept": kept}
            # Last, so the patch and its contrasts are those of a run without curves; zeroed channels stay zero.
            image = apply_contrast_curves(image, rng, augment.contrast_curves)
            xs.append(extra(case, where, image) if extra else image)
            ys.append(labels[where][None])
        # Patches of one batch share a size only when every case is at least `patch` large.
        shape = np.max([x.shape[1:] for x in xs], axis=0)
        xs = [_pad_to(x, shape) for x in xs]
        ys = [_pad_to(y, shape) for y in ys]
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    return sample


def _pad_to(array: np.ndarray, shape) -> np.ndarray:
    pads = [(0, 0)] + [(0, int(s) - n) for s, n in zip(shape, array.shape[1:])]
    return np.pad(array, pads) if any(p for _, p in pads) else array


# ---------------------------------------------------------------- checkpoints

def _checkpoint_paths(bundle_dir, component: str) -> tuple[Path, Path]:
    folder = Path(bundle_dir) / CHECKPOINTS
    return folder / f"{component}.safetensors", folder / f"{component}.json"


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_checkpoint(bundle_dir, component: str, model, optimiser, step: int, signature: dict, losses: list) -> None:
    """Model and Adam state as safetensors, step and settings as JSON; each file replaced atomically.

    The step is in both files: a crash between the two writes leaves files that disagree, and
    such a checkpoint is ignored rather than half-used.
    """
    weights, info = _checkpoint_paths(bundle_dir, component)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    state = optimiser.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"optimiser.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    _write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"step": str(step)}))
    record = {"step": step, "signature": signature, "param_groups": state["param_groups"], "losses": losses}
    _write_atomic(info, lambda p: p.write_text(json.dumps(record) + "\n", encoding="utf-8"))


def load_checkpoint(bundle_dir, component: str, model, optimiser, signature: dict, log: Log) -> tuple[int, list]:
    """(step to start from, losses so far); (0, []) and the model untouched when there is nothing to resume."""
    weights, info = _checkpoint_paths(bundle_dir, component)
    if not (weights.is_file() and info.is_file()):
        return 0, []
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
        with safe_open(str(weights), "pt") as f:
            step = int(f.metadata()["step"])
        tensors = load_file(str(weights))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"{component}: ignoring the unreadable checkpoint in {weights.parent} ({e}); starting over")
        return 0, []
    if record.get("signature") != signature or record.get("step") != step:
        log(f"{component}: the checkpoint in {weights.parent} was made with other settings; starting over")
        return 0, []
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimiser."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimiser.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    log(f"{component}: resuming from the checkpoint at step {step}")
    return step, list(record.get("losses", []))


def _save_keeping_checkpoints(bundle_dir, finished: list[str], **bundle_args) -> None:
    """save_r2unet_bundle replaces the whole folder: carry the other components' checkpoints over."""
    bundle_dir = Path(bundle_dir)
    checkpoints = bundle_dir / CHECKPOINTS
    aside = bundle_dir.with_name(f".{bundle_dir.name}.checkpoints-{uuid.uuid4().hex[:8]}")
    if checkpoints.is_dir():
        os.replace(checkpoints, aside)
    try:
        save_r2unet_bundle(bundle_dir, **bundle_args)
    finally:
        if aside.is_dir():
            for name in finished:
                for suffix in (".safetensors", ".json"):
                    (aside / f"{name}{suffix}").unlink(missing_ok=True)
            if any(aside.iterdir()):
                bundle_dir.mkdir(parents=True, exist_ok=True)
                os.replace(aside, checkpoints)
            else:
                shutil.rmtree(aside)


# ---------------------------------------------------------------- the loop

SCHEDULES = ("constant", "poly")


def learning_rate(lr: float, step: int, steps: int, schedule: str = "constant") -> float:
    """The rate of step `step` (0-based): constant, or nnU-Net's poly decay lr * (1 - step/steps)^0.9.

    A function of the step alone, so a resumed run continues on the same curve.
    """
    if schedule == "constant":
        return lr
    if schedule == "poly":
        return lr * (1 - step / steps) ** 0.9
    raise ValueError(f"unknown learning-rate schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def fit(model, sample: Callable, steps: int, lr: float, seed: int, device: str, loss_fn,
        component: str, bundle_dir=None, signature: dict | None = None, resume: bool = True,
        checkpoint_every: int = 25, log: Log = print, progress: Progress | None = None,
        schedule: str = "constant") -> list[float]:
    """Adam on batches sample(np.random.default_rng((seed, step))); returns the loss of every step.

    With bundle_dir, checkpoints are written every `checkpoint_every` steps and when `progress`
    cancels (raises); with resume, a matching checkpoint is continued.
    """
    learning_rate(lr, 0, steps, schedule)  # an unknown schedule fails before any work
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    signature = {**(signature or {}), "seed_lr": [seed, lr]}
    if schedule != "constant":  # checkpoints of constant-rate runs keep matching
        signature["schedule"] = [schedule, steps]
    start, losses = (0, [])
    if bundle_dir is not None and resume:
        start, losses = load_checkpoint(bundle_dir, component, model, optimiser, signature, log)
        model.to(device)
    started = time.perf_counter()
    for step in range(start, steps):
        x, y = sample(np.random.default_rng((seed, step)))
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(lr, step, steps, schedule)
        optimiser.zero_grad()
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        optimiser.step()
        losses.append(float(loss.item()))
        done = step + 1
        if bundle_dir is not None and (done % checkpoint_every == 0 or done == steps):
            save_checkpoint(bundle_dir, component, model, optimiser, done, signature, losses)
        if done % 10 == 0 or done == steps or done == start + 1:
            rate = (time.perf_counter() - started) / (done - start)
            log(f"{component}: step {done}/{steps} loss {np.mean(losses[-10:]):.3f} ({rate:.2f} s/step)")
        if progress is not None:
            try:
                progress(done / steps, f"{component}: step {done}/{steps}, loss {losses[-1]:.3f}")
            except BaseException:
                # A cancel between two steps: the state is consistent, keep it for the next run.
                if bundle_dir is not None:
                    save_checkpoint(bundle_dir, component, model, optimiser, done, signature, losses)
                    log(f"{component}: stopped at step {done}; run the same command again to continue")
                raise
    model.eval()
    return losses


def _signature(config: dict, cases: list[dict], **settings) -> dict:
    return {"config": config, "cases": [c["name"] for c in cases], "max_pos_weight": MAX_POS_WEIGHT, **settings}


def _record(command: str, cases, background: bool = True, schedule: str = "constant", dropout: float | None = None,
            **settings) -> dict:
    optimiser = "Adam" if schedule == "constant" else f"Adam, learning rate {schedule}-decayed to 0"
    if dropout is not None:
        settings["contrast_dropout"] = (f"with probability {dropout:g} a sample keeps a random non-empty proper subset "
                                        "of its contrasts (the others zero); 4 presence-flag channels")
    return {"command": command, "cases": len(cases), "case_names": [c["name"] for c in cases], "optimiser": optimiser,
            "loss": f"Dice ({'with' if background else 'without'} background) + weighted BCE, one-hot, "
                    f"pos_weight negatives/positives clipped to [1, {MAX_POS_WEIGHT:g}]", **settings}


PATCHES = f"random inside the brain's bounding box, {TUMOUR_FRACTION:.2f} of them centred on a tumour voxel"


def _dropout(config: dict, contrast_dropout: float, extra_channels: int = 0) -> float | None:
    """The patch sampler's contrast_dropout for a config: None without presence flags; the config's
    in_channels checked against what the sampler will give."""
    flags = bool(config.get("presence_flags"))
    expected = (CHANNELS if flags else len(MODALITIES)) + extra_channels
    if config["in_channels"] != expected:
        raise ValueError(f"in_channels {config['in_channels']} does not fit BraTS cases: {expected} "
                         + ("(4 contrasts + 4 presence flags)" if flags else "(4 contrasts)")
                         + (f" + {extra_channels} stage-1 classes" if extra_channels else ""))
    if not 0 <= contrast_dropout <= 1:
        raise ValueError(f"the contrast dropout is a probability, between 0 and 1, not {contrast_dropout}")
    return contrast_dropout if flags else None


def _train_patchwise(component, config, data_dir, bundle_dir, steps, patch, batch, lr, seed, device, command,
                     log, resume, progress, checkpoint_every, schedule, contrast_dropout, augment):
    dropout = _dropout(config, contrast_dropout)
    augment = augment or Augment()
    cases = load_cases(data_dir, log, allow_missing=dropout is not None)
    torch.manual_seed(seed)
    model = build_model("r2unet" if component == "r2unet" else "unet3d", config)
    signature = _signature(config, cases, patch=patch, batch=batch, **({"dropout": dropout} if dropout is not None else {}),
                           **augment.record())
    sample = patch_batch(cases, "image", "labels", (patch,) * 3, batch, contrast_dropout=dropout, augment=augment)
    log(f"{component}: {sum(p.numel() for p in model.parameters()):,} parameters, {steps} steps of "
        f"{batch} x {patch}^3 patches")
    losses = fit(model, sample, steps, lr, seed, device, HybridLoss(True, max_pos_weight=MAX_POS_WEIGHT), component,
                 bundle_dir, signature, resume, checkpoint_every, log, progress, schedule)
    record = _record(command, cases, schedule=schedule, dropout=dropout, steps=steps, patch=patch, patches=PATCHES,
                     batch=batch, lr=lr, seed=seed, final_loss=float(np.mean(losses[-20:])), **augment.record())
    _save_keeping_checkpoints(bundle_dir, [component], components={component: (model, config)},
                              training={component: record})
    return model


def train_unet(data_dir, bundle_dir, steps: int = 400, patch: int = 64, batch: int = 2, lr: float = 3e-4,
               seed: int = 0, device: str = "cpu", command: str = "", log: Log = print, resume: bool = True,
               progress: Progress | None = None, config: dict | None = None, checkpoint_every: int = 25,
               schedule: str = "constant", contrast_dropout: float = CONTRAST_DROPOUT, augment: Augment | None = None):
    """The plain 3D U-Net (for full-volume and patch-wise inference) into component "unet"."""
    return _train_patchwise("unet", dict(config or UNET_CONFIG), data_dir, bundle_dir, steps, patch, batch, lr, seed,
                            device, command, log, resume, progress, checkpoint_every, schedule, contrast_dropout, augment)


def train_r2unet(data_dir, bundle_dir, steps: int = 400, patch: int = 64, batch: int = 2, lr: float = 3e-4,
                 seed: int = 0, device: str = "cpu", command: str = "", log: Log = print, resume: bool = True,
                 progress: Progress | None = None, config: dict | None = None, checkpoint_every: int = 25,
                 schedule: str = "constant", contrast_dropout: float = CONTRAST_DROPOUT, augment: Augment | None = None):
    """The (attention) R2U-Net into component "r2unet"."""
    return _train_patchwise("r2unet", dict(config or R2UNET_CONFIG), data_dir, bundle_dir, steps, patch, batch, lr,
                            seed, device, command, log, resume, progress, checkpoint_every, schedule, contrast_dropout,
                            augment)


def stage1_labels(stage1, low_image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Stage 1's labels on its own (low-resolution) grid, computed as inference computes them."""
    from .inference import labels_from, predict_full

    return labels_from(predict_full(stage1, low_image, device=device))


def _subsets(present) -> list[tuple[str, ...]]:
    """Every non-empty subset of `present`, each in MODALITIES order (what drop_contrasts can keep)."""
    present = tuple(present)
    return [tuple(m for i, m in enumerate(present) if bits >> i & 1) for bits in range(1, 2 ** len(present))]


def upsampled_window(low: np.ndarray, shape, window) -> np.ndarray:
    """upsample_labels(low, shape)[window] without the full grid: nearest neighbour, source index
    floor(i * low / full) on each axis (what torch's "nearest" computes)."""
    index = [np.minimum(np.arange(w.start, w.stop) * n // s, n - 1) for w, n, s in zip(window, low.shape, shape)]
    return low[np.ix_(*index)]


def train_cascade(data_dir, bundle_dir, steps: int = 400, patch: int = 64, batch: int = 2, lr: float = 3e-4,
                  seed: int = 0, device: str = "cpu", command: str = "", log: Log = print, resume: bool = True,
                  progress: Progress | None = None, stage1_steps: int | None = None, factor: float = DEFAULT_FACTOR,
                  stage1_config: dict | None = None, stage2_config: dict | None = None, checkpoint_every: int = 25,
                  schedule: str = "constant", contrast_dropout: float = CONTRAST_DROPOUT, augment: Augment | None = None):
    """The two-stage cascade into components "cascade_stage1" and "cascade_stage2".

    Stage 1 learns on whole down-sampled volumes (Dice without background: each holds tumour).
    Stage 2 learns on full-resolution patches of the image plus the one-hot labels of the
    *trained* stage 1, upsampled, exactly what it gets at inference: so it learns to correct
    stage 1's real mistakes, not to copy a perfect low-resolution truth. With presence flags, stage 1's
    labels are computed for every subset of each case's contrasts, and a stage-2 patch gets those of
    the contrasts it kept. `augment` applies to both stages (stage 2's stage-1 labels are computed
    on the images as they are, as at inference).
    """
    augment = augment or Augment()
    stage1_steps = steps if stage1_steps is None else stage1_steps
    config1 = dict(stage1_config or STAGE1_CONFIG)
    config2 = {**(stage2_config or STAGE2_CONFIG), "factor": factor}
    dropout = _dropout(config1, contrast_dropout)
    if _dropout(config2, contrast_dropout, CLASSES) != dropout:
        raise ValueError("the cascade's two stages must both have presence flags, or neither")
    cases = load_cases(data_dir, log, factor=factor, allow_missing=dropout is not None)
    flagged = {**({"dropout": dropout} if dropout is not None else {}), **augment.record()}

    def stage_progress(offset):
        if progress is None:
            return None
        return lambda fraction, message: progress((offset + fraction) / 2, message)

    torch.manual_seed(seed)
    stage1 = build_model("unet3d", config1)
    low_shape = np.max([c["low_labels"].shape for c in cases], axis=0)
    log(f"cascade_stage1: {sum(p.numel() for p in stage1.parameters()):,} parameters, {stage1_steps} steps of "
        f"{batch} whole volumes down-sampled by {factor} ({' x '.join(map(str, low_shape))})")
    sample1 = patch_batch(cases, "low_image", "low_labels", tuple(low_shape), batch, contrast_dropout=dropout,
                          augment=augment)
    signature1 = _signature(config1, cases, batch=batch, factor=factor, **flagged)
    losses1 = fit(stage1, sample1, stage1_steps, lr, seed, device, HybridLoss(False, max_pos_weight=MAX_POS_WEIGHT),
                  "cascade_stage1", bundle_dir, signature1, resume, checkpoint_every, log, stage_progress(0), schedule)

    if dropout is None:
        log("cascade_stage2: stage-1 labels of every training case")
        for case in cases:
            full = upsample_labels(stage1_labels(stage1, case.pop("low_full"), device), case["shape"])
            case["stage1"] = np.ascontiguousarray(full[case["box"]])
    else:
        log("cascade_stage2: stage-1 labels of every training case, for every subset of its contrasts")
        for case in cases:
            low = case.pop("low_full")
            case["stage1_low"] = {kept: stage1_labels(stage1, with_flags(low, kept), device)
                                  for kept in _subsets(case["present"])}

    def with_stage1(case, where, image):
        if "stage1" in case:
            return stage2_inputs(image, case["stage1"][where], CLASSES)
        low = case["stage1_low"][case["kept"]]
        window = tuple(slice(b.start + w.start, b.start + w.stop) for b, w in zip(case["box"], where))
        return stage2_inputs(image, upsampled_window(low, case["shape"], window), CLASSES)

    torch.manual_seed(seed)
    stage2 = build_model("unet3d", config2)
    log(f"cascade_stage2: {sum(p.numel() for p in stage2.parameters()):,} parameters, {steps} steps of "
        f"{batch} x {patch}^3 patches")
    sample2 = patch_batch(cases, "image", "labels", (patch,) * 3, batch, extra=with_stage1, contrast_dropout=dropout,
                          augment=augment)
    # Stage 2 depends on stage 1's weights: a retrained stage 1 invalidates its checkpoint.
    stage1_digest = hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in stage1.state_dict().values())).hexdigest()
    signature2 = _signature(config2, cases, patch=patch, batch=batch, stage1=stage1_digest, **flagged)
    losses2 = fit(stage2, sample2, steps, lr, seed, device, HybridLoss(True, max_pos_weight=MAX_POS_WEIGHT),
                  "cascade_stage2", bundle_dir, signature2, resume, checkpoint_every, log, stage_progress(1), schedule)

    common = {"batch": batch, "lr": lr, "seed": seed, "factor": factor, "schedule": schedule, "dropout": dropout,
              **augment.record()}
    training = {
        "cascade_stage1": _record(command, cases, steps=stage1_steps, input="whole volume down-sampled by factor "
                                  "(trilinear), cropped to the brain; labels by averaging one-hot maps", background=False,
                                  final_loss=float(np.mean(losses1[-20:])), **common),
        "cascade_stage2": _record(command, cases, steps=steps, patch=patch, patches=PATCHES, stage1_labels="predicted by the trained "
                                  "stage 1 (as at inference), upsampled nearest-neighbour, one-hot",
                                  final_loss=float(np.mean(losses2[-20:])), **common),
    }
    _save_keeping_checkpoints(bundle_dir, ["cascade_stage1", "cascade_stage2"],
                              components={"cascade_stage1": (stage1, config1), "cascade_stage2": (stage2, config2)},
                              training=training)
    return stage1, stage2
