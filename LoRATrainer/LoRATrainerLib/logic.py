"""LoRATrainer's logic without Qt: training data from a folder or the scene, an adapter out.

The base is a SAMBA bundle (LoRA on SAM's image encoder) or an R2UNetSegment bundle (LoRA on the
Conv layers of its U-Net, R2U-Net or cascade stage 2); the target names which.

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
from typing import TYPE_CHECKING, Callable

from SAMBACore.atomic import replacing_folder
from SAMBACore.bundle_names import DEFAULT_BUNDLE
from SAMBACore.inputs import InputError
from LoRATrainerLib.training_data import Case, cases_from_folder, split_cases

if TYPE_CHECKING:  # SAMBACore.bundles imports torch: the module file must load without it
    from SAMBACore.bundles import Bundle

Progress = Callable[[float, str], None]
SOURCES = ("folder", "scene")
# Target -> what it trains. A U-Net target is the name of the bundle component it adapts.
TARGETS = {"sam": "SAM image encoder (LoRA on attention qkv)",
           "sam+decoder": "SAM image encoder LoRA and SAM's mask decoder",
           "unet": "U-Net LoRA: every Conv layer of the bundle's U-Net",
           "r2unet": "U-Net LoRA: every Conv layer of the bundle's attention R2U-Net",
           "cascade_stage2": "U-Net LoRA: every Conv layer of stage 2 of the bundle's U-Net cascade"}
ADAPTABLE = ("sam", "unet", "r2unet", "cascade_stage2")  # bundle components LoRA Trainer adapts


def resolve_base(name_or_path) -> Path:
    """A base bundle from a folder, or from the name of one SAMBASegment or R2UNetSegment ships."""
    from R2UNetSegmentLib import r2unet_bundle
    from SAMBACore.bundles import MANIFEST, BundleError

    if (Path(name_or_path) / MANIFEST).is_file():
        return Path(name_or_path)
    if str(name_or_path) in r2unet_bundle.BUNDLED:
        return r2unet_bundle.resolve_bundle(name_or_path)
    from SAMBASegmentLib import samba_bundle  # after the U-Nets': it needs segment-anything

    if str(name_or_path) in samba_bundle.BUNDLED:
        return samba_bundle.resolve_bundle(name_or_path)
    raise BundleError(f"No model bundle at {name_or_path}: give a bundle folder (with {MANIFEST}) or a bundled "
                      f"name ({', '.join(samba_bundle.BUNDLED + r2unet_bundle.BUNDLED)}).")


def choose_component(bundle: Bundle, asked: str | None = None) -> str:
    """The bundle component to adapt: `asked` (checked to be there), or else the only adaptable one."""
    have = [c for c in ADAPTABLE if c in bundle.components]
    where = f"Bundle '{bundle.manifest.get('name', bundle.path.name)}' at {bundle.path}"
    if asked is None:
        if len(have) == 1:
            return have[0]
        raise InputError(f"{where} has " + (
            f"{', '.join(have)}: choose which to adapt (--component)." if have else
            f"no component LoRA can adapt (it has {', '.join(bundle.components)}; LoRA adapts {', '.join(ADAPTABLE)})."))
    if asked not in have:
        hint = f"a SAMBA bundle such as {DEFAULT_BUNDLE}" if asked == "sam" else "an R2UNetSegment bundle such as phantom-r2unet"
        raise InputError(f"{where} has no '{asked}' to adapt (it has {', '.join(bundle.components)}): "
                         f"choose {hint}, or another component.")
    return asked


@dataclass
class Request:
    train: list[Case]
    val: list[Case]
    base: str
    settings: object  # train_lora.LoraSettings, or train_unet_lora.UnetLoraSettings for a U-Net target
    device: str = "cpu"
    command: str = "LoRATrainer module"


@dataclass
class Trained:
    folder: Path  # the work folder holding adapter.safetensors + adapter.json
    info: dict
    curve: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, dice


class LoRATrainerCore:
    def prepare(self, scene=None, source: str = "folder", folder=None, base: str = DEFAULT_BUNDLE,
                target: str = "sam", rank: int = 4, alpha: float = 4.0, lr: float = 1e-4, epochs: int = 5,
                batch: int = 8, val_fraction: float = 0.2, seed: int = 0, device: str = "cpu",
                log: Callable[[str], None] = print, **options) -> Request:
        """`options`: further settings fields: LoraSettings' for SAM (steps_per_epoch, views, modalities,
        val_slices, ...), UnetLoraSettings' for a U-Net target (steps_per_epoch, patch, ...)."""
        from SAMBACore.bundles import load_bundle

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
        bundle = resolve_base(base)
        common = dict(rank=rank, alpha=alpha, lr=lr, epochs=epochs, batch=batch, seed=seed, **options)
        if target.startswith("sam"):
            from LoRATrainerLib.train_lora import LoraSettings

            choose_component(load_bundle(bundle), "sam")
            settings = LoraSettings(with_decoder=target == "sam+decoder", **common)
        else:
            from LoRATrainerLib.train_unet_lora import UnetLoraSettings  # needs no segment-anything

            settings = UnetLoraSettings(component=choose_component(load_bundle(bundle), target), **common)
        return Request(train, val, str(bundle), settings, device)

    def compute(self, request: Request, progress: Progress | None = None,
                on_epoch: Callable[[dict], None] | None = None) -> Trained:
        """Train into a fresh work folder; `on_epoch(record)` gets each epoch's loss and validation Dice."""
        from LoRATrainerLib.distributed import World
        from LoRATrainerLib.train_unet_lora import UnetLoraSettings, train_unet_lora

        work = Path(tempfile.mkdtemp(prefix="lora-")) / "adapter"
        curve: list[dict] = []

        def record(entry: dict) -> None:
            curve.append(entry)
            if on_epoch:
                on_epoch(entry)

        common = dict(world=World(device=request.device), command=request.command, progress=progress, on_epoch=record,
                      log=lambda message: None)
        try:
            if isinstance(request.settings, UnetLoraSettings):
                info = train_unet_lora(request.base, work, request.train, request.val, request.settings, **common)
            else:
                from LoRATrainerLib.train_lora import train_lora

                info = train_lora(request.base, work, request.train, request.val, request.settings, **common)
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
