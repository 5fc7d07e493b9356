"""Build a Segment Anything model from segment-anything's own modeling classes, without weights.

The official shapes ("vit_b", "vit_l", "vit_h") match segment_anything/build_sam.py exactly, but
no checkpoint is read here: the project loads weights itself, safely. "small" is a little SAM
(global attention, 256 px input by default) for CPU demos and tests. "litemedsam" is LiteMedSAM
(litemedsam.py: a TinyViT encoder with SAM's prompt encoder and mask decoder, 256 px). "medsam" is
MedSAM (Ma et al. 2024): vit_b fine-tuned on medical images, its input min-max scaled to [0, 1].
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

# SAM's ImageNet pixel statistics; the image encoder was trained with them.
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

# Encoder shapes of the official checkpoints (build_sam.py): width, depth, heads, global blocks.
OFFICIAL = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}

SMALL_DEFAULT = {
    "type": "small",
    "img_size": 256,
    "patch_size": 16,
    "embed_dim": 192,
    "depth": 4,
    "num_heads": 4,
    "window_size": 0,  # 0 = every block attends globally (the image is small)
    "prompt_embed_dim": 128,
    "mlp_dim": 512,
    "decoder_heads": 4,
}


class MinMaxSam(Sam):
    """Sam whose input is each resized slice min-max scaled to [0, 1], then zero-padded bottom and
    right to the encoder's square, as MedSAM and LiteMedSAM were trained (not SAM's ImageNet
    statistics). MedSAM resizes to a 1024 x 1024 square; here the aspect ratio is kept, as for SAM,
    which is the same for square (axial) slices."""

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized slices, 0-255 -> min-max [0, 1] per image, zero-padded to the input square."""
        flat = x.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp(min=1e-8)
        x = (x - low) / span
        size = self.image_encoder.img_size
        h, w = x.shape[-2:]
        return torch.nn.functional.pad(x, (0, size - w, 0, size - h))


def build_sam(config: dict) -> Sam:
    """A randomly initialised SAM of the configured type, in eval mode.

    Build under `with torch.device("meta"):` to get the structure without allocating weights.
    """
    kind = config.get("type", "small")
    if kind == "litemedsam":
        from SAMBASegmentLib.litemedsam import build_litemedsam  # imports timm: only when asked for

        return build_litemedsam()
    if kind in OFFICIAL or kind == "medsam":
        shape = OFFICIAL["vit_b" if kind == "medsam" else kind]
        return _assemble(
            img_size=1024, patch_size=16, embed_dim=shape["embed_dim"], depth=shape["depth"],
            num_heads=shape["num_heads"], window_size=14, global_attn_indexes=shape["global_attn_indexes"],
            prompt_embed_dim=256, mlp_dim=2048, decoder_heads=8, model=MinMaxSam if kind == "medsam" else Sam,
        )
    if kind != "small":
        raise ValueError(f"unknown SAM type {kind!r}; expected small, litemedsam, vit_b, vit_l, vit_h or medsam")
    c = {**SMALL_DEFAULT, **config}
    return _assemble(
        img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["num_heads"], window_size=c["window_size"], global_attn_indexes=(),
        prompt_embed_dim=c["prompt_embed_dim"], mlp_dim=c["mlp_dim"], decoder_heads=c["decoder_heads"],
    )


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _assemble(*, img_size, patch_size, embed_dim, depth, num_heads, window_size,
              global_attn_indexes, prompt_embed_dim, mlp_dim, decoder_heads, model=Sam) -> Sam:
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
    grid = img_size // patch_size
    sam = model(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads,
            patch_size=patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(global_attn_indexes), window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,  # SAMBA-mc uses these three tokens as WT, TC, ET
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_embed_dim, mlp_dim=mlp_dim, num_heads=decoder_heads,
            ),
            transformer_dim=prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam.eval()
