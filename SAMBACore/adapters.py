"""LoRA adapters (peft) on our models: inject, save as an adapter folder, load onto their base, merge.

An adapter folder holds adapter.safetensors (only the LoRA A and B matrices) and adapter.json:
which bundle component it adapts (with that component's sha256, so an adapter is never applied
to another base), which sub-module (SAM's "image_encoder", or "" for a whole U-Net), the LoRA
settings, and whatever the trainer records (data, validation metrics, how it was trained).
Sub-modules trained in full beside the LoRA matrices (SAM's mask decoder with --with-decoder)
are stored whole, one safetensors file each, listed with their sha256 under "modules".
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from SAMBACore.atomic import replacing_folder
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
    ranks: dict[str, int] | None = None  # per-layer ranks by full module name, overriding `rank` (lora-extract)

    def __post_init__(self):
        if self.rank < 1 or any(r < 1 for r in (self.ranks or {}).values()):
            raise ValueError(f"LoRA ranks must be at least 1, not {self.rank} {self.ranks or ''}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module name")

    def as_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict) -> "LoraSpec":
        return cls(tuple(values["targets"]), values["rank"], values["alpha"], values.get("dropout", 0.0),
                   values.get("ranks"))


def conv_targets(model: nn.Module) -> tuple[str, ...]:
    """Names of the Conv2d/Conv3d layers of a U-Net (peft adapts those; transposed convs it cannot)."""
    return tuple(name for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Conv3d))


def train_with_frozen_batch_norm(model: nn.Module) -> nn.Module:
    """`model.train()` (LoRA dropout on) with every BatchNorm left in eval mode: its running statistics
    belong to the frozen base (an adapter does not store them), so training normalises with the
    statistics inference will use, and a few slices' batch statistics neither replace them nor skew
    the loss. LiteMedSAM's TinyViT and the U-Nets have BatchNorm; SAM's ViT has none."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def add_lora(module: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap the target layers of `module` in place with peft LoRA layers (B starts at zero, so the
    output is unchanged) and freeze everything but the LoRA matrices. Returns `module`."""
    # peft reads rank_pattern keys as regular expressions: escape the module names.
    ranks = {re.escape(name): rank for name, rank in (spec.ranks or {}).items()}
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.targets), rank_pattern=ranks)
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


def save_adapter(folder, module: nn.Module, spec: LoraSpec, base: dict, extra: dict | None = None,
                 modules: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the adapter folder atomically: the new folder is complete before it replaces the old one,
    so a failure (disk full, cancel) leaves the previous adapter as it was.

    `modules` maps sub-module names of the base component (e.g. "mask_decoder") to full state
    dicts trained beside the LoRA matrices; apply_adapter loads them back in place."""
    with replacing_folder(folder, "adapter", AdapterError) as partial:
        save_file(lora_state(module), str(partial / WEIGHTS))
        stored = {}
        for name, state in (modules or {}).items():
            file = f"{name}.safetensors"
            save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(partial / file))
            stored[name] = {"file": file, "sha256": sha256_file(partial / file)}
        info = {"format_version": FORMAT_VERSION, "base": base, "lora": spec.as_dict(),
                "sha256": sha256_file(partial / WEIGHTS), **(extra or {})}
        if stored:
            info["modules"] = stored
        (partial / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return Path(folder)


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


def read_module_weights(folder, info: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The full sub-module weights an adapter carries ({} for LoRA only), each sha256-checked."""
    folder = Path(folder)
    weights = {}
    for name, entry in info.get("modules", {}).items():
        path = folder / entry["file"]
        if not path.is_file():
            raise AdapterError(f"{path}: missing, but {INFO} lists it for '{name}'; copy the whole adapter folder again.")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise AdapterError(f"{path}: checksum mismatch (sha256 {actual[:12]}..., {INFO} says {entry['sha256'][:12]}...): "
                               "the file is corrupt or was replaced; train or copy the adapter again.")
        weights[name] = load_file(str(path))
    return weights


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
                _merge_layer(child)
                setattr(parent, name, child.get_base_layer())
    for parameter in module.parameters():
        parameter.requires_grad = True
    return module


def _merge_layer(layer: LoraLayer) -> None:
    base = layer.get_base_layer()
    if isinstance(base, nn.Conv3d) and base.kernel_size == (1, 1, 1):
        # peft 0.21's merge mis-shapes 1x1x1 Conv3d kernels (it squeezes two axes, not three; a
        # U-Net's output head): the same sum, W0 + B @ A * scaling over each active adapter.
        with torch.no_grad():
            for key in layer.active_adapters:
                update = layer.lora_B[key].weight.flatten(1) @ layer.lora_A[key].weight.flatten(1)
                base.weight += (update * layer.scaling[key]).reshape(base.weight.shape).to(base.weight.dtype)
        return
    layer.merge()


def apply_adapter(model: nn.Module, folder, bundle: Bundle, merge: bool = True) -> nn.Module:
    """Load the adapter in `folder` onto `model` (the bundle component it names), checked against
    the bundle; merged into the base weights unless merge=False (to go on training it). Sub-modules
    the adapter carries in full (see save_adapter) replace the model's own."""
    info, state = read_adapter(folder)
    check_base(info, bundle, folder)
    for name, weights in read_module_weights(folder, info).items():
        try:
            model.get_submodule(name).load_state_dict(weights)
        except (AttributeError, RuntimeError) as error:
            raise AdapterError(f"{folder}: its '{name}' weights do not fit this model ({str(error).splitlines()[0]}).") from None
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
