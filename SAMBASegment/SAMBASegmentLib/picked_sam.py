"""A SAM the user picks as a file, used in place of a bundle's SAM (its YOLO and voting net stay).

- vit_b, vit_l, vit_h: the official Segment Anything checkpoints, accepted only with the sha256 the
  registry holds (SAMBACore.weights.OFFICIAL_SAM).
- medsam: MedSAM (bowang-lab/MedSAM, medsam_vit_b.pth), vit_b fine-tuned on medical images, its
  input min-max scaled (sam_model.MinMaxSam). Its authors publish no sha256, so nothing can be
  checked against one: the file is read as tensors only (weights_only, never unpickling code), must
  hold a vit_b SAM, and its sha256 is reported so that a result can name the weights it came from.

A file of another architecture is named as what it is (architecture()), not met with a stack trace.
These models work at 1024 px: on a CPU a slice costs tens of seconds, so they are for a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from SAMBACore.bundles import BundleError, check_state_dict, read_torch_state_dict, sha256_file
from SAMBACore.weights import OFFICIAL_SAM
from SAMBASegmentLib.sam_model import OFFICIAL, build_sam

SAM_TYPES = ("vit_b", "vit_l", "vit_h", "medsam")
_WIDTHS = {shape["embed_dim"]: name for name, shape in OFFICIAL.items()}


def architecture(state: dict) -> str:
    """What a state dict holds, in words: 'vit_b' / 'vit_l' / 'vit_h' (a SAM of that shape), 'LiteMedSAM
    (TinyViT encoder)', or a description of something that is not a SAM."""
    if any(k.startswith("image_encoder.layers.") for k in state):
        return "LiteMedSAM (TinyViT encoder)"
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None or patch.ndim != 4:
        return "no SAM image encoder"
    return _WIDTHS.get(patch.shape[0], f"a ViT encoder {patch.shape[0]} wide, not SAM's vit_b, vit_l or vit_h")


def load_picked_sam(path, sam_type: str) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, provenance {file, type, sha256}); BundleError says what is wrong and what to do."""
    if sam_type not in SAM_TYPES:
        raise BundleError(f"Unknown SAM type {sam_type!r}: choose one of {', '.join(SAM_TYPES)}.")
    path = Path(path)
    if not path.is_file():
        where = f" (the official {sam_type} is {OFFICIAL_SAM[sam_type]['url']})" if sam_type in OFFICIAL_SAM else ""
        raise BundleError(f"{path}: file not found; choose the SAM or MedSAM checkpoint (.pth) you downloaded{where}.")
    sha256 = sha256_file(path)
    if sam_type in OFFICIAL_SAM:
        official = {entry["sha256"]: name for name, entry in OFFICIAL_SAM.items()}
        if sha256 in official and official[sha256] != sam_type:
            raise BundleError(f"{path}: is the official {official[sha256]} checkpoint, not {sam_type}: choose "
                              f"SAM type {official[sha256]}.")
        if sha256 not in official:
            found = architecture(_read(path))
            hint = (" If it is MedSAM or another vit_b fine-tune, choose SAM type medsam." if found == "vit_b"
                    else f" It holds {found}.")
            raise BundleError(f"{path}: is not the official {sam_type} checkpoint (sha256 {sha256}, expected "
                              f"{OFFICIAL_SAM[sam_type]['sha256']}).{hint}")
        state = _read(path)  # its sha256, checked above, is the registry's
    else:
        state = _read(path)
        found = architecture(state)
        if found != "vit_b":
            raise BundleError(f"{path}: holds {found}, not MedSAM (a vit_b SAM): choose MedSAM's medsam_vit_b.pth"
                              + (", or use the bundle litemedsam-samba for LiteMedSAM" if "LiteMedSAM" in found else "")
                              + ".")
    model = check_state_dict(build_sam({"type": sam_type}), state, f"SAM ({sam_type}) from {path.name}")
    return model.eval(), {"file": str(path), "type": sam_type, "sha256": sha256}


def _read(path: Path) -> dict[str, torch.Tensor]:
    return read_torch_state_dict(path, "choose the SAM or MedSAM checkpoint (.pth) you downloaded, or download it again")
