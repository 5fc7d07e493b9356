"""R2UNetSegment's logic without Qt: a volume node (and its BraTS siblings) in, a segmentation out.

As in SAMBASegment, the work is split so the GUI can run the middle part on a worker thread:
  prepare  (main thread)  nodes -> checked channels and the models' input, in plain arrays
  compute  (any thread)   arrays -> labels, with progress and cancel; touches no MRML
  finish   (main thread)  labels -> segmentation node in the scene
Everything that can fail happens before `finish`, so a failure or cancel leaves the scene as it was.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import ALL_REGIONS, MODALITIES, Segment
from SAMBACore.brats import segments_for as brats_segments
from SAMBACore.contrasts import NAMES, regions_of
from SAMBACore.inputs import InputError
from R2UNetSegmentLib.channels import brats_present, gather_channels
from R2UNetSegmentLib.presence import check_contrasts, has_flags, stack
from R2UNetSegmentLib.r2unet_bundle import R2UNetModels, load_r2unet_models, resolve_bundle

Progress = Callable[[float, str], None]
MODELS = ("unet", "r2unet")
MODES = ("auto", "full", "patch", "cascade")
# A two-class model (a single MRI, a skin photo) finds one lesion; a four-class one the BraTS sub-regions.
LESION = {1: Segment("lesion", "Lesion", (0.90, 0.35, 0.25), "SCT^52988006^Lesion")}
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_budget(text) -> int | None:
    """'512MB', '2GB', '1.5G', '2GiB' or plain bytes -> bytes (K, M, G, T are powers of 1024);
    None or '' -> no budget (auto mode then uses the memory free at the time)."""
    if text is None or str(text).strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"Memory budget {text!r} is not a size: write it like 512MB, 2GB or 1.5G.")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def segments_for(classes: int, regions=ALL_REGIONS) -> dict[int, Segment]:
    """The segments a result's labels stand for: the BraTS labels (or the whole tumour alone, made
    without T1CE) for a four-class model, the lesion for a binary one."""
    if classes == 4:
        return brats_segments(regions)
    if classes == 2:
        return LESION
    raise InputError(f"The model predicts {classes} classes; R2UNetSegment shows 2 (lesion) or 4 (BraTS) classes.")


def volumes_ml(labels: np.ndarray, classes: int, reference, regions=ALL_REGIONS) -> dict[str, float]:
    """Volumes in mL on the reference's voxel size: the BraTS regions (NETC, SNFH, ET, TC, WT) for a
    four-class model (WT alone for a whole-tumour-only result), the lesion for a binary one (for a
    photo, its area in mm^2 / 1000)."""
    from SAMBACore import metrics

    spacing = bridge.spacing_kji(reference)
    if classes == 4 and tuple(regions) == ("WT",):
        return {"WT": float(np.count_nonzero(labels)) * float(np.prod(spacing)) / 1000.0}
    if classes == 4:
        return metrics.volumes_ml(labels, spacing)
    return {LESION[1].key: float(np.count_nonzero(labels == 1)) * float(np.prod(spacing)) / 1000.0}


def _mode_using(adapted: str, model: str, mode: str, adapter) -> str:
    """The mode to run when an adapter adapts the bundle's `adapted` network: the one using it,
    or an InputError saying what to choose (an adapter that runs unused would mislead)."""
    if adapted in MODELS:
        if model != adapted or mode == "cascade":
            raise InputError(f"The adapter {adapter} adapts the bundle's {adapted}: choose network {adapted} with mode "
                             "auto, full or patch, or leave the adapter out.")
        return mode
    if mode not in ("auto", "cascade"):
        raise InputError(f"The adapter {adapter} adapts the bundle's cascade ({adapted}): choose mode cascade or auto, "
                         "or leave the adapter out.")
    return "cascade"


@dataclass
class Request:
    image: np.ndarray  # (C, *spatial) float32, as the channels are in the scene
    names: list[str]
    classes: int
    bundle: str = "phantom-r2unet"
    model: str = "unet"
    mode: str = "auto"
    budget_bytes: int | None = None
    patch_size: int = 64
    device: str = "cpu"
    flat: bool = False  # a 2D model on a single-slice image: the slice axis is dropped for the model
    adapter: str | None = None  # a LoRA adapter folder merged into one of the bundle's networks
    present: tuple[str, ...] | None = None  # the BraTS contrasts `image` holds (None: not a BraTS input)
    spacing: tuple[float, ...] | None = None  # (k, j, i) mm of the volume's grid: off 1 mm, resampled for the networks


@dataclass
class Result:
    labels: np.ndarray  # (*spatial) uint8, on the input grid
    classes: int
    mode: str  # the mode that ran (auto resolved)
    seconds: float
    estimate_bytes: int  # the estimated peak memory of that mode
    patch_size: int  # the patch edge it used (auto may halve the one asked for to fit the budget)
    regions: tuple[str, ...] = ALL_REGIONS  # ("WT",): made without T1CE, label 1 is the whole tumour
    present: tuple[str, ...] | None = None  # the BraTS contrasts it was made from

    @property
    def segments(self) -> dict[int, Segment]:
        return segments_for(self.classes, self.regions)

    def describe(self) -> str:
        from R2UNetSegmentLib.memory_plan import Plan

        return Plan(self.mode, self.patch_size, self.estimate_bytes).describe()


class R2UNetSegmentCore:
    """Keeps the loaded bundle between runs."""

    def __init__(self):
        self._models: dict[tuple, R2UNetModels] = {}

    def models(self, bundle: str, device: str, adapter=None) -> R2UNetModels:
        key = (str(resolve_bundle(bundle)), device, str(adapter) if adapter else None)
        if key not in self._models:
            # one bundle in memory at a time
            self._models = {key: load_r2unet_models(key[0], device, adapter=key[2])}
        return self._models[key]

    def prepare(self, scene, volume, bundle: str = "phantom-r2unet", model: str = "unet", mode: str = "auto",
                budget=None, patch_size: int = 64, device: str = "cpu", adapter=None) -> Request:
        """`adapter`: a LoRA adapter folder for one of the bundle's networks (LoRATrainer); the mode
        and network must then be those it adapts (mode auto is narrowed to them)."""
        if model not in MODELS:
            raise ValueError(f"Unknown model {model!r}: choose one of {', '.join(MODELS)}.")
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
        if volume is None:
            raise ValueError("Select an input volume.")
        models = self.models(bundle, device, adapter or None)
        image, names = gather_channels(scene, volume)
        expected = models.contrast_channels
        present = brats_present(names) if expected == len(MODALITIES) else None
        if present is not None and len(present) < expected:  # a BraTS case lacking some contrasts
            request = self._prepare_subset(image, names, present, models, bundle, model, mode, budget, patch_size,
                                           device, adapter)
            request.spacing = bridge.spacing_kji(volume)
            return request
        if image.shape[0] != expected:
            need = "the four BraTS volumes (T1, T1CE, T2, FLAIR) on one grid" if expected == 4 else \
                f"{expected} channel(s)"
            raise InputError(f"Wrong channel count: the input gives {image.shape[0]} channel(s) ({', '.join(names)}) "
                             f"but the bundle's models take {expected}: load {need}, or choose a bundle "
                             "trained for this input.")
        if models.adapted:
            mode = _mode_using(models.adapted, model, mode, adapter)
        # A cascade-only bundle (phantom-cascade-any) in mode auto: auto plans the cascade alone, in the budget
        cascade_only = mode == "auto" and getattr(models, model) is None and models.cascade is not None
        if mode == "cascade" and models.cascade is None:
            raise InputError(f"The bundle {bundle} has no cascade; choose mode full, patch or auto.")
        if mode != "cascade" and not cascade_only and getattr(models, model) is None:
            raise InputError(f"The bundle {bundle} has no {model} model; choose another model or mode cascade.")
        segments_for(models.classes)
        from R2UNetSegmentLib.model_facts import spatial_dims

        network = models.cascade.stage1 if mode == "cascade" or cascade_only else getattr(models, model)
        flat = spatial_dims(network) == 2
        if flat and image.shape[1] != 1:
            raise InputError(f"The bundle's model is 2D (for photos and single slices), but {volume.GetName()} has "
                             f"{image.shape[1]} slices: select a single-slice image, or choose a 3D bundle.")
        return Request(image, names, models.classes, bundle, model, mode, parse_budget(budget), patch_size, device, flat,
                       str(adapter) if adapter else None, present, None if flat else bridge.spacing_kji(volume))

    def _prepare_subset(self, image, names, present, models, bundle, model, mode, budget, patch_size, device,
                        adapter) -> Request:
        """A BraTS input with some of the four contrasts: the network asked for (mode auto: one that takes
        any set) must have presence flags; an InputError naming what is missing otherwise."""
        missing = ", ".join(NAMES[m] for m in MODALITIES if m not in present)
        if adapter:
            raise InputError(f"Missing {missing}: segmenting with an adapter needs the four contrasts; load them, or "
                             "leave the adapter out.")
        networks = {"cascade": models.cascade and models.cascade.stage1, "unet": models.unet, "r2unet": models.r2unet}
        flagged = [name for name, network in networks.items() if network is not None and has_flags(network)]
        # mode auto with a model that cannot take a subset: auto plans the cascade alone (inference.usable_networks)
        cascade_only = mode == "auto" and "cascade" in flagged and model not in flagged
        chosen = "cascade" if mode == "cascade" or cascade_only else model
        if networks.get(chosen) is None:
            raise InputError(f"The bundle {bundle} has no {chosen}; choose another model or mode.")
        if chosen not in flagged:
            if flagged:
                raise InputError(f"Missing {missing}: the bundle's {chosen} was trained on the four contrasts only; "
                                 f"its {' and '.join(flagged)} take any set: choose "
                                 + ("mode cascade" if "cascade" in flagged else f"model {flagged[0]}")
                                 + ", or load the missing contrast(s).")
            check_contrasts(networks[chosen], present, f"bundle {bundle}")
        return Request(image, names, models.classes, bundle, model, mode, parse_budget(budget), patch_size, device,
                       False, None, present)

    def compute(self, request: Request, progress: Progress | None = None) -> Result:
        from R2UNetSegmentLib.inference import normalise, plan_run, segment

        models = self.models(request.bundle, request.device, request.adapter)
        model = getattr(models, request.model)
        # With an adapter on a single network, mode auto must not fall back to the unadapted cascade.
        cascade = None if models.adapted in MODELS else models.cascade
        image = request.image[:, 0] if request.flat else request.image
        present = request.present
        if present is not None:  # the four BraTS channels, a missing one zeros (presence.stack)
            image, _ = stack(dict(zip(present, image)))
        started = time.perf_counter()
        image = normalise(image)
        plan = plan_run(image, model, cascade, request.mode, request.budget_bytes, request.patch_size, request.device,
                        present=present, spacing=request.spacing)
        labels, _, _ = segment(image, model=model, cascade=cascade, mode=plan.mode, patch_size=plan.patch_size,
                               device=request.device, progress=progress, present=present, spacing=request.spacing)
        labels = labels[None] if request.flat else labels  # back to the volume's (k, j, i)
        regions = regions_of(present) if present is not None else ALL_REGIONS
        if regions == ("WT",):  # without T1CE the sub-regions are not known: the whole tumour, label 1
            labels = labels > 0
        return Result(labels.astype(np.uint8), request.classes, plan.mode, time.perf_counter() - started,
                      plan.estimate_bytes, plan.patch_size, regions, present)

    def finish(self, scene, result: Result, reference, output=None, name: str = "R2U-Net segmentation"):
        """Add (or fill `output`) the segmentation on the reference volume's grid."""
        return bridge.segmentation_from_labels(scene, result.labels, reference, result.segments, name, into=output)

    def process(self, scene, volume, output=None, name: str = "R2U-Net segmentation",
                progress: Progress | None = None, **options):
        """prepare + compute + finish in one call (the Python console, the self-test)."""
        request = self.prepare(scene, volume, **options)
        return self.finish(scene, self.compute(request, progress), volume, output, name)
