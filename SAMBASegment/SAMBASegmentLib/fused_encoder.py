"""An inference-only copy of SAM's image encoder with each convolution's BatchNorm folded into it.

LiteMedSAM's TinyViT runs its convolutions as Conv2d + BatchNorm2d pairs; in eval mode the
BatchNorm is an affine map that can be folded into the convolution's weights (PyTorch's
fuse_conv_bn_eval), which saves a pass over every feature map: the whole encoder 1.14-1.17x faster
on 2 CPU cores, embeddings within 4e-6 (docs/results.md). SAM's own ViT has no such pairs and is used
as it is.

The copy is made from the live encoder and must not outlive a change of its weights: LoRA
validation encodes with the model being trained, and a bundle's adapter is merged after loading.
So the copy is used only while every module of the encoder is in eval mode, and it is remade
whenever a fingerprint of the weights (each tensor's sum) differs from the one it was made from: a
few milliseconds against a second per slice encoded. (Version counters would be cheaper but miss
writes through `.data`, which peft's merge uses.)
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

_copies: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.Tensor, torch.nn.Module]]" = weakref.WeakKeyDictionary()


def inference_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder to run for inference: a folded copy when folding applies and the encoder is in
    eval mode, otherwise the encoder itself."""
    if not _has_pairs(encoder) or any(m.training for m in encoder.modules()):
        return encoder
    fingerprint = _fingerprint(encoder)
    cached = _copies.get(encoder)
    if cached is not None and torch.equal(cached[0], fingerprint):
        return cached[1]
    folded = fold_batch_norms(copy.deepcopy(encoder))
    _copies[encoder] = (fingerprint, folded)
    return folded


def fold_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every two-layer Sequential (Conv2d, BatchNorm2d) replaced by one Conv2d, in place."""
    for name, child in module.named_children():
        if _is_pair(child):
            setattr(module, name, fuse_conv_bn_eval(child[0], child[1]))
        else:
            fold_batch_norms(child)
    return module


def _is_pair(module: torch.nn.Module) -> bool:
    return (isinstance(module, torch.nn.Sequential) and len(module) == 2
            and type(module[0]) is torch.nn.Conv2d and type(module[1]) is torch.nn.BatchNorm2d)


def _has_pairs(encoder: torch.nn.Module) -> bool:
    return any(_is_pair(m) for m in encoder.modules())


@torch.no_grad()
def _fingerprint(encoder: torch.nn.Module) -> torch.Tensor:
    tensors = [*encoder.parameters(), *encoder.buffers()]
    return torch.stack([t.detach().double().sum() for t in tensors if t.is_floating_point()]).cpu()
