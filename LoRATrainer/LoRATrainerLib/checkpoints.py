"""Resumable adapter training: the per-epoch checkpoint that train_lora and train_unet_lora share.

ADAPTER_DIR/.checkpoint holds the trained tensors (safetensors), the optimiser state (for
torch.load(weights_only=True)) and progress.json, which names both with their sha256 and is
replaced last. A re-run with the same settings continues from it; one with other settings is
refused, never silently mixed with the unfinished training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from SAMBACore.bundles import sha256_file

FOLDER = ".checkpoint"  # inside the adapter folder; LoRATrainerCore.save leaves it out of saved adapters
PROGRESS = "progress.json"


def trained_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes (and a checkpoint stores): the parameters that require a gradient."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def write_checkpoint(folder: Path, module: nn.Module, optimiser, progress: dict) -> None:
    """Files named by epoch, progress.json (which names them) replaced last: a crash at any
    moment leaves the previous complete checkpoint. `progress` needs "epoch", "settings" and
    "base_sha256"; the rest (curves, seconds) comes back from `resume` as it was written."""
    folder.mkdir(parents=True, exist_ok=True)
    epoch = progress["epoch"]
    files = {"state": f"state-{epoch:04d}.safetensors", "optimiser": f"optimiser-{epoch:04d}.pt"}
    state = {k: v.detach().float().cpu().contiguous() for k, v in trained_parameters(module).items()}
    save_file(state, str(folder / files["state"]))
    torch.save(optimiser.state_dict(), folder / files["optimiser"])
    progress = {**progress, "files": {k: {"file": f, "sha256": sha256_file(folder / f)} for k, f in files.items()}}
    partial = folder / f".{PROGRESS}.partial"
    partial.write_text(json.dumps(progress, indent=2) + "\n")
    os.replace(partial, folder / PROGRESS)
    for old in folder.iterdir():
        if old.name not in (*files.values(), PROGRESS):
            old.unlink()


def resume(folder: Path, module: nn.Module, optimiser, settings: dict, base_sha256: str) -> dict | None:
    """Load the last complete checkpoint into `module` and `optimiser` and return its progress
    record, or None when there is none. `settings` (all but "epochs", which may grow on a re-run)
    and the base's sha256 must be those it was made with."""
    if not (folder / PROGRESS).is_file():
        return None
    progress = json.loads((folder / PROGRESS).read_text())
    mine = {**settings, "epochs": None}
    theirs = {**progress["settings"], "epochs": None}
    if theirs != mine or progress["base_sha256"] != base_sha256:
        changed = sorted(k for k in mine if mine[k] != theirs.get(k)) or ["base bundle"]
        raise ValueError(f"{folder} holds an unfinished training with other settings ({', '.join(changed)} differ): "
                         "re-run with the same settings to continue it, or delete that folder to start over.")
    for entry in progress["files"].values():
        if sha256_file(folder / entry["file"]) != entry["sha256"]:
            raise ValueError(f"{folder / entry['file']} does not match {PROGRESS}: delete {folder} to start over.")
    result = module.load_state_dict(load_file(str(folder / progress["files"]["state"]["file"])), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: its tensors do not fit this model; delete it to start over.")
    optimiser.load_state_dict(torch.load(folder / progress["files"]["optimiser"]["file"], weights_only=True))
    return progress


class EpochRecord:
    """One training's record: validation Dice per epoch (the base's first), mean loss per epoch,
    seconds over all runs. Resumed from the checkpoint in `folder` when there is one (loading the
    module and optimiser), otherwise started with `baseline()`, the base's validation Dice; after
    each epoch, end_epoch records it and (when `write`, i.e. on the main process) checkpoints."""

    def __init__(self, folder: Path, module: nn.Module, optimiser, settings: dict, base_sha256: str,
                 baseline: Callable[[], float], started: float, say: Callable[[str], None], write: bool = True):
        self.folder, self.module, self.optimiser = folder, module, optimiser
        self.settings, self.base_sha256, self.started, self.say, self.write = settings, base_sha256, started, say, write
        resumed = resume(folder, module, optimiser, settings, base_sha256)
        if resumed:
            self.curve, self.losses, self.first = resumed["curve"], resumed["losses"], resumed["epoch"]
            self.started -= resumed.get("seconds", 0.0)  # time is counted over all runs of one training
            say(f"resuming after epoch {self.first} from {folder}")
        else:
            self.curve, self.losses, self.first = [baseline()], [], 0
            say(f"base: validation WT Dice {self.curve[0]:.3f}")

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def end_epoch(self, epoch: int, loss: float, dice: float, on_epoch: Callable[[dict], None] | None = None) -> None:
        """Epoch `epoch` (0-based) is done: note it, tell `on_epoch`, write the checkpoint."""
        self.curve.append(dice)
        self.losses.append(loss)
        self.say(f"epoch {epoch + 1}/{self.settings['epochs']}: loss {loss:.3f}, validation WT Dice {dice:.3f}")
        if not self.write:
            return
        if on_epoch:
            on_epoch({"epoch": epoch + 1, "loss": loss, "dice": dice})
        write_checkpoint(self.folder, self.module, self.optimiser,
                         {"epoch": epoch + 1, "curve": self.curve, "losses": self.losses, "settings": self.settings,
                          "base_sha256": self.base_sha256, "seconds": self.seconds()})
