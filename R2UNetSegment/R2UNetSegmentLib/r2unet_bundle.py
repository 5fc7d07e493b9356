"""The R2UNetSegment models in a bundle: a plain U-Net, an R2U-Net and the two-stage U-Net cascade.

Components (SAMBACore.bundles format, safetensors, sha256-checked on load), all optional but
at least one model:
  unet            kind "unet3d"  config: UNet3D kwargs                    (full and patch-wise modes)
  r2unet          kind "r2unet"  config: R2UNet kwargs
  cascade_stage1  kind "unet3d"  config: UNet3D kwargs                    (on the down-sampled image)
  cascade_stage2  kind "unet3d"  config: UNet3D kwargs + "factor"         (image + one-hot stage-1 labels)
A config may also say "presence_flags": true: the network takes the four contrasts (missing ones
zero) plus four presence-flag channels, and serves any subset of contrasts (presence.py).
The cascade's down-sampling factor lives in stage 2's config ("factor"), next to the weights
that were trained with it; it is not a UNet3D argument and is taken out before building.

A LoRA adapter (LoRATrainer, `slicer-samba train lora --base BUNDLE --component NAME`) adapts one
of these components; load_r2unet_models merges it into that component's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from SAMBACore.bundles import (
    Bundle,
    BundleError,
    check_state_dict,
    find_bundle,
    load_bundle,
    load_state_dict,
    save_bundle,
)

from .presence import ANY_CONTRAST_BUNDLE
from .r2unet import R2UNet
from .unet3d import UNet3D

BUILDERS = {"unet3d": UNet3D, "r2unet": R2UNet}
COMPONENT_KINDS = {"unet": "unet3d", "r2unet": "r2unet", "cascade_stage1": "unet3d", "cascade_stage2": "unet3d"}
DEFAULT_FACTOR = 0.3

BASE_MANIFEST = {
    "name": "r2unet",
    "version": "0.1",
    "description": "U-Net, R2U-Net and U-Net cascade for brain-tumour sub-regions",
    "licence": "Apache-2.0",
    "intended_use": "research",
    "preprocessing": {"images": "four BraTS channels (t1, t1ce, t2, flair), each z-scored over its non-zero voxels"},
    "labels": {"0": "background", "1": "NETC", "2": "SNFH", "3": "ET"},
    "training": {},
    "metrics": {},
}


@dataclass
class R2UNetModels:
    unet: nn.Module | None
    r2unet: nn.Module | None
    cascade: object | None  # inference.Cascade
    bundle: Bundle | None
    in_channels: int
    classes: int
    adapted: str | None = None  # the component a LoRA adapter was merged into, if any
    presence_flags: bool = False  # its first network takes 4 contrasts + 4 presence flags (any subset; presence.py)

    @property
    def contrast_channels(self) -> int:
        """The image channels the first network takes (without the presence flags)."""
        return self.in_channels - 4 if self.presence_flags else self.in_channels


def build_model(kind: str, config: dict) -> nn.Module:
    """A network from its component kind and config. "factor", "min_piece_fraction" and "min_core_mm3" (the
    cascade's, on its stage 2) are not network arguments and are ignored;
    "presence_flags" (trained with contrast dropout, presence.py) is kept as the attribute `presence_flags`."""
    if kind not in BUILDERS:
        raise BundleError(f"unknown model kind '{kind}' (known: {', '.join(BUILDERS)}); use a bundle made for R2UNetSegment")
    flags = bool(config.get("presence_flags", False))
    config = {k: v for k, v in config.items() if k not in ("factor", "presence_flags", "min_piece_fraction", "min_core_mm3")}
    if "widths" in config:
        config["widths"] = tuple(config["widths"])
    try:
        model = BUILDERS[kind](**config)
    except TypeError as e:
        raise BundleError(f"component config {config} does not fit a {kind} ({e}); the bundle is damaged or for another version") from None
    model.presence_flags = flags
    return model


def _load_component(bundle: Bundle, name: str, device: str, adapter=None) -> nn.Module:
    """The component's network with its verified weights, and `adapter` (a folder) merged in if given."""
    component = bundle.component(name)
    model = build_model(component.kind, component.config)
    state = load_state_dict(bundle, name)  # its errors already name the file
    try:
        check_state_dict(model, state, name)
    except BundleError as e:
        raise BundleError(f"{bundle.path / component.file}: {e}") from None
    if adapter is not None:
        from SAMBACore.adapters import apply_adapter  # imports peft (slow): only when an adapter is asked for

        apply_adapter(model, adapter, bundle)
    return model.to(device).eval()


def adapted_component(adapter, bundle: Bundle) -> str:
    """The component of `bundle` the adapter folder adapts; refused (AdapterError, naming both
    bundles) when it was made for another base or for a component this bundle lacks."""
    from SAMBACore.adapters import AdapterError, check_base, read_adapter

    info, _ = read_adapter(adapter)
    component = info["base"]["component"]
    if component not in COMPONENT_KINDS:
        raise AdapterError(f"{adapter} adapts the '{component}' of bundle '{info['base']['bundle']}', which is not an "
                           f"R2UNetSegment model (those are {', '.join(COMPONENT_KINDS)}): use it where that bundle "
                           "is used, or train an adapter for this bundle with `slicer-samba train lora`.")
    check_base(info, bundle, adapter)
    return component


def load_r2unet_models(path, device: str = "cpu", adapter=None) -> R2UNetModels:
    """Build each model in the bundle and load its verified weights; BundleError names what is wrong.

    `adapter`: a LoRA adapter folder (LoRATrainer) for one of the bundle's components, merged into
    that component's weights, so inference costs what the base costs."""
    from .inference import Cascade

    bundle = load_bundle(path)
    names = bundle.components
    if not any(n in names for n in ("unet", "r2unet", "cascade_stage1")):
        raise BundleError(f"{Path(path)}: not an R2UNetSegment bundle (it has {', '.join(names)}; "
                          "expected unet, r2unet or cascade_stage1/cascade_stage2)")
    if ("cascade_stage1" in names) != ("cascade_stage2" in names):
        raise BundleError(f"{Path(path)}: the cascade needs both cascade_stage1 and cascade_stage2; train it again "
                          "with `slicer-samba train cascade`")
    adapted = adapted_component(adapter, bundle) if adapter is not None else None

    def load(name):
        return _load_component(bundle, name, device, adapter if name == adapted else None)

    unet = load("unet") if "unet" in names else None
    r2unet = load("r2unet") if "r2unet" in names else None
    cascade = None
    if "cascade_stage1" in names:
        stage2 = names["cascade_stage2"].config
        cascade = Cascade(load("cascade_stage1"), load("cascade_stage2"), float(stage2.get("factor", DEFAULT_FACTOR)),
                          float(stage2.get("min_piece_fraction", 0.0)), float(stage2.get("min_core_mm3", 0.0)))
    first = next(n for n in ("unet", "r2unet", "cascade_stage1") if n in names)
    config = names[first].config
    return R2UNetModels(unet, r2unet, cascade, bundle, int(config["in_channels"]), int(config["out_channels"]),
                        adapted, bool(config.get("presence_flags", False)))


def state_of(model: nn.Module) -> dict:
    """A model's weights as contiguous float32 CPU tensors, ready for safetensors."""
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def save_r2unet_bundle(path, components: dict[str, tuple[nn.Module, dict]], manifest: dict | None = None,
                       training: dict | None = None) -> Bundle:
    """Add or replace components {name: (model, config)} in the bundle at `path`, keeping the others.

    `training` maps component names to how they were trained (recorded in the manifest). The
    bundle is written next to `path` and swapped in, so an old bundle survives any failure.
    """
    for name in components:
        if name not in COMPONENT_KINDS:
            raise ValueError(f"unknown component '{name}' (known: {', '.join(COMPONENT_KINDS)})")
    path = Path(path)
    if (path / "manifest.json").exists():
        bundle = load_bundle(path)
        base = dict(bundle.manifest)
        states = {n: load_state_dict(bundle, n) for n in bundle.components if n not in components}
        entries = {n: {"kind": c.kind, "config": c.config} for n, c in bundle.components.items() if n not in components}
    else:
        base, states, entries = dict(manifest or BASE_MANIFEST), {}, {}
    for name, (model, config) in components.items():
        states[name] = state_of(model)
        entries[name] = {"kind": COMPONENT_KINDS[name], "config": config}
    base["components"] = entries
    base["training"] = {**base.get("training", {}), **(training or {})}
    return save_bundle(path, base, states)


# Bundles shipped with the module, by name. A path given instead of a name is used as it is.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Bundles"
# phantom-cascade-any: the cascade for cases without all four contrasts (scripts/train_cascade_any.sh).
BUNDLED = ("phantom-r2unet", ANY_CONTRAST_BUNDLE)


def resolve_bundle(name_or_path) -> Path:
    """A bundle folder from a path or the name of a bundled one; BundleError says what exists."""
    return find_bundle(name_or_path, BUNDLED_DIR, BUNDLED, "slicer-samba train unet|r2unet|cascade DATA_DIR -o BUNDLE_DIR")
