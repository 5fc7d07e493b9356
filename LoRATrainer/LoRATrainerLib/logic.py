"""LoRATrainer's logic without Qt: training data from a folder or the scene, an adapter out.

  prepare  (main thread)  folder or scene -> checked training and validation cases (plain arrays)
  compute  (any thread)   cases -> an adapter in a private work folder, epoch by epoch, cancellable
  save     (main thread)  the trained adapter -> the user's folder, atomically
Training never writes to the user's folder: only Save does, and Save replaces a previous adapter
there in one step, so a cancel, a failure or a full disk leaves it as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from SAMBACore.atomic import replacing_folder
from SAMBACore.inputs import InputError
from LoRATrainerLib.training_data import Case, cases_from_folder, split_cases

Progress = Callable[[float, str], None]
SOURCES = ("folder", "scene")
TARGETS = {"sam": "SAM image encoder (LoRA on attention qkv)",
           "sam+decoder": "SAM image encoder LoRA and SAM's mask decoder"}


@dataclass
class Request:
    train: list[Case]
    val: list[Case]
    base: str
    settings: object  # train_lora.LoraSettings
    device: str = "cpu"
    command: str = "LoRATrainer module"


@dataclass
class Trained:
    folder: Path  # the work folder holding adapter.safetensors + adapter.json
    info: dict
    curve: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, dice


class LoRATrainerCore:
    def prepare(self, scene=None, source: str = "folder", folder=None, base: str = "phantom-demo",
                target: str = "sam", rank: int = 4, alpha: float = 4.0, lr: float = 1e-4, epochs: int = 5,
                batch: int = 8, val_fraction: float = 0.2, seed: int = 0, device: str = "cpu",
                log: Callable[[str], None] = print, **options) -> Request:
        """`options`: further LoraSettings fields (steps_per_epoch, views, modalities, val_slices, ...)."""
        from LoRATrainerLib.train_lora import LoraSettings

        if source not in SOURCES:
            raise ValueError(f"Unknown data source {source!r}: choose one of {', '.join(SOURCES)}.")
        if target not in TARGETS:
            raise ValueError(f"Unknown training target {target!r}: choose one of {', '.join(TARGETS)}.")
        if source == "folder":
            if not folder or not Path(folder).is_dir():
                raise InputError(f"Choose a folder of BraTS cases to train on (got {folder or 'none'}).")
            cases = cases_from_folder(folder, log)
        else:
            from LoRATrainerLib.scene_data import cases_from_scene

            cases = cases_from_scene(scene)
        train, val = split_cases(cases, val_fraction, seed)
        settings = LoraSettings(rank=rank, alpha=alpha, lr=lr, epochs=epochs, batch=batch, seed=seed,
                                with_decoder=target == "sam+decoder", **options)
        return Request(train, val, base, settings, device)

    def compute(self, request: Request, progress: Progress | None = None,
                on_epoch: Callable[[dict], None] | None = None) -> Trained:
        """Train into a fresh work folder; `on_epoch(record)` gets each epoch's loss and validation Dice."""
        from LoRATrainerLib.train_lora import train_lora

        from SAMBASegmentLib.samba_bundle import resolve_bundle

        work = Path(tempfile.mkdtemp(prefix="lora-")) / "adapter"
        curve: list[dict] = []

        def record(entry: dict) -> None:
            curve.append(entry)
            if on_epoch:
                on_epoch(entry)

        try:
            info = train_lora(resolve_bundle(request.base), work, request.train, request.val, request.settings,
                              command=request.command, progress=progress, on_epoch=record, log=lambda message: None)
        except BaseException:
            shutil.rmtree(work.parent, ignore_errors=True)
            raise
        return Trained(work, info, curve)

    def save(self, trained: Trained, folder) -> Path:
        """Copy the adapter to `folder` atomically (complete copy first, then one rename)."""
        with replacing_folder(folder, "adapter", InputError) as partial:
            shutil.copytree(trained.folder, partial, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".checkpoint"))
        return Path(folder)

    def discard(self, trained: Trained | None) -> None:
        if trained is not None:
            shutil.rmtree(trained.folder.parent, ignore_errors=True)
