"""LoRA adapters (peft) on our models: inject, save as an adapter folder, load onto their base, merge.

An adapter folder holds adapter.safetensors (only the LoRA A and B matrices) and adapter.json:
which bundle component it adapts (with that component's sha256, so an adapter is never applied
to another base), which sub-module (SAM's "image_encoder", or "" for a whole U-Net), the LoRA
settings, and whatever the trainer records (data, validation metrics, how it was trained).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from SAMBACore.bundles import Bundle, BundleError, sha256_file

WEIGHTS = "adapter.safetensors"
INFO = "adapter.json"
SAM_ENCODER_TARGETS = ("qkv",)  # the attention projections of every ViT block, as SAMed does
FORMAT_VERSION = 1


class AdapterError(BundleError):
    """An adapter cannot be saved or used; the message names the files and says what to do."""


@dataclass(frozen=True)
class LoraSpec:
    targets: tuple[str, ...]
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {self.rank}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module name")

    def as_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict) -> "LoraSpec":
        return cls(tuple(values["targets"]), values["rank"], values["alpha"], values.get("dropout", 0.0))


def conv_targets(model: nn.Module) -> tuple[str, ...]:
    """Names of the Conv2d/Conv3d layers of a U-Net (peft adapts those; transposed convs it cannot)."""
    return tuple(name for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Conv3d))


def add_lora(module: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap the target layers of `module` in place with peft LoRA layers (B starts at zero, so the
    output is unchanged) and freeze everything but the LoRA matrices. Returns `module`."""
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.targets))
    try:
        inject_adapter_in_model(config, module)
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise ValueError(f"LoRA targets {list(spec.targets)} do not match layers of this model: {error}") from None
    for name, parameter in module.named_parameters():
        parameter.requires_grad = "lora_" in name
    return module


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices only (what an adapter file stores), as contiguous float32 CPU tensors."""
    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(module).items()}


def base_record(bundle: Bundle, component: str, target: str) -> dict:
    """What adapter.json says about the base: enough to refuse any other base, by name."""
    part = bundle.component(component)
    return {"bundle": bundle.manifest.get("name", bundle.path.name), "bundle_path": str(bundle.path),
            "component": component, "sha256": part.sha256, "target": target}


def save_adapter(folder, module: nn.Module, spec: LoraSpec, base: dict, extra: dict | None = None) -> Path:
    """Write the adapter folder atomically: the new folder is complete before it replaces the old one,
    so a failure (disk full, cancel) leaves the previous adapter as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        partial.mkdir()
        save_file(lora_state(module), str(partial / WEIGHTS))
        info = {"format_version": FORMAT_VERSION, "base": base, "lora": spec.as_dict(),
                "sha256": sha256_file(partial / WEIGHTS), **(extra or {})}
        (partial / INFO).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            os.replace(folder, old)
        os.replace(partial, folder)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise AdapterError(f"Could not write the adapter to {folder} ({error.strerror or error}); "
                           "the previous adapter there is unchanged. Free disk space or choose another folder.") from None
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_adapter(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(info, LoRA tensors) after checking the weight file against the sha256 in adapter.json."""
    folder = Path(folder)
    if not (folder / INFO).is_file() or not (folder / WEIGHTS).is_file():
        raise AdapterError(f"{folder}: not an adapter folder (it needs {INFO} and {WEIGHTS}); "
                           "train one with `slicer-samba train lora`.")
    try:
        info = json.loads((folder / INFO).read_text())
        expected = info["sha256"]
        spec = LoraSpec.from_dict(info["lora"])
        base = info["base"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise AdapterError(f"{folder / INFO}: unreadable adapter description ({error}).") from None
    actual = sha256_file(folder / WEIGHTS)
    if actual != expected:
        raise AdapterError(f"{folder / WEIGHTS}: checksum mismatch (sha256 {actual[:12]}..., adapter.json says "
                           f"{expected[:12]}...): the file is corrupt or was replaced; train or copy it again.")
    info["lora"], info["base"] = spec, base
    return info, load_file(str(folder / WEIGHTS))


def check_base(info: dict, bundle: Bundle, folder="the adapter") -> None:
    """Refuse an adapter made for another base, naming both."""
    base = info["base"]
    components = bundle.components
    mine = components.get(base["component"])
    if mine is None or mine.sha256 != base["sha256"]:
        have = f"its '{base['component']}' has sha256 {mine.sha256[:12]}..." if mine else f"it has no '{base['component']}'"
        raise AdapterError(
            f"{folder} was made for bundle '{base['bundle']}' ({base['component']} sha256 {base['sha256'][:12]}...), "
            f"not for bundle '{bundle.manifest.get('name', bundle.path.name)}' at {bundle.path} ({have}). "
            "Choose the base bundle it was trained on, or train an adapter for this one.")


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weights (W0 + BA) and put the plain layer back:
    inference then costs exactly what the base model costs."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    for parameter in module.parameters():
        parameter.requires_grad = True
    return module


def apply_adapter(model: nn.Module, folder, bundle: Bundle, merge: bool = True) -> nn.Module:
    """Load the adapter in `folder` onto `model` (the bundle component it names), checked against
    the bundle; merged into the base weights unless merge=False (to go on training it)."""
    info, state = read_adapter(folder)
    check_base(info, bundle, folder)
    target = info["base"].get("target", "")
    module = model.get_submodule(target) if target else model
    add_lora(module, info["lora"])
    result = set_peft_model_state_dict(module, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if result.unexpected_keys or missing:
        raise AdapterError(f"{folder}: the adapter's tensors do not fit the model "
                           f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]}).")
    if merge:
        merge_lora(module)
    return model
