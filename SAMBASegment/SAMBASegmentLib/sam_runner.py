"""Box-prompted SAM on a stack of slices: batched encoding, an embedding cache, batched decoding.

The slow part of SAM is the image encoder; SamPredictor runs it once per slice, one slice at a
time. Here the slices that have a box are encoded in batches, their embeddings are cached on the
CPU (a second run with other boxes encodes nothing), and all boxes are decoded together.

Geometry: slices keep their aspect ratio. Every image goes through ResizeLongestSide(img_size)
(then SAM pads bottom/right to a square) and every box through the same transform's apply_boxes,
so boxes land where the tumour is even for 155x240 coronal and sagittal slices; masks come back
with sam.postprocess_masks, which undoes the padding and the resize.

Out of memory: encoder and decoder batches halve and retry (down to one slice) when the device
runs out of memory, and log that they did; if one slice does not fit, SamOutOfMemory says what to do.

Multiclass (SAMBA-mc): the decoder's three multimask tokens 1, 2, 3 are read, in that order, as
whole tumour, tumour core and enhancing tumour (MULTICLASS_CHANNELS); binary mode is SAM's
single-mask output (token 0), i.e. multimask_output=False.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from SAMBASegmentLib.fused_encoder import inference_encoder

log = logging.getLogger(__name__)

MULTICLASS_CHANNELS = ("whole_tumour", "tumour_core", "enhancing")
# Boxes decoded per call: bounds the float masks postprocess_masks makes at img_size (4 MB each at 1024).
DECODE_CHUNK = 16


def slice_transform(sam: Sam) -> ResizeLongestSide:
    """The one resize both images and boxes go through (SamPredictor uses the same)."""
    return ResizeLongestSide(sam.image_encoder.img_size)


def input_size(sam: Sam, original_size) -> tuple[int, int]:
    """(h, w) of a resized slice inside the padded square model input."""
    return ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], sam.image_encoder.img_size)


def resize_slices(sam: Sam, slices_uint8: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, h, w, 3) uint8 in the model frame, aspect ratio kept (a backbone with
    its own resize, LiteMedSAM's, uses that; it gives the same shape)."""
    resize = getattr(sam, "resize_image", None) or slice_transform(sam).apply_image
    return np.stack([resize(np.ascontiguousarray(s)) for s in slices_uint8])


def map_boxes(sam: Sam, boxes_xyxy, original_size) -> np.ndarray:
    """Boxes (B, 4) x0, y0, x1, y1 in slice pixels -> the model frame of resize_slices."""
    return slice_transform(sam).apply_boxes(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4), tuple(original_size))


def _autocast(device: torch.device):
    """Half precision on CUDA only; CPU stays float32 (CPU half is slow and less exact)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def default_batch_size(sam: Sam) -> int:
    """Encoder batch: 8 on CUDA. On the CPU it depends on the tokens per image: 1 for ViT-B at
    1024 px (4096 tokens; memory-bound global attention: 2 slices, 41 s batched vs 29 s one by one),
    16 for the demo's small SAM (256 tokens; 32 slices measured 3.0 s batched vs 8.5 s one by one)."""
    if sam.device.type == "cuda":
        return 8
    height, width = sam.prompt_encoder.image_embedding_size
    return max(1, min(16, 4096 // (height * width)))


class SamOutOfMemory(MemoryError):
    """SAM does not fit in memory even one slice at a time; the message says what to do."""


# How allocators say they ran out: CUDA ("CUDA out of memory"), CPU ("can't allocate memory"), MPS.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def run_in_batches(run, total: int, batch_size: int, what: str, device) -> list:
    """[run(start, stop) for consecutive batches of [0, total)], halving the batch on out-of-memory.

    The failed batch is retried at half size (the smaller size is kept for the rest), down to 1;
    each fallback is logged. `what` names the work in messages, e.g. "SAM image encoder".
    """
    results = []
    start = 0
    while start < total:
        stop = min(start + batch_size, total)
        try:
            results.append(run(start, stop))
        except Exception as error:  # only out-of-memory is handled; the rest is re-raised
            if not is_out_of_memory(error):
                raise
            _release_memory(device)
            if stop - start == 1:
                raise SamOutOfMemory(
                    f"The {what} ran out of memory on {device} even with one slice at a time: "
                    "use device cpu, close other programs that use the memory, or a smaller model (bundle)."
                ) from error
            batch_size = (stop - start + 1) // 2
            log.warning("The %s ran out of memory on %s with %d slices at once; retrying with %d.",
                        what, device, stop - start, batch_size)
            continue
        start = stop
    return results


def _release_memory(device) -> None:
    # Blocks the failed batch left in PyTorch's CUDA cache would otherwise count against the retry.
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def encode_slices(sam: Sam, slices_uint8: np.ndarray, batch_size: int | None = None) -> torch.Tensor:
    """Image embeddings (n, C, h, w), float32 on the CPU, of normalised uint8 slices (n, H, W, 3)."""
    device = sam.device
    encoder = inference_encoder(sam.image_encoder)  # BatchNorms folded where the encoder has them

    def encode(start, stop):
        resized = resize_slices(sam, slices_uint8[start:stop])
        with torch.inference_mode(), _autocast(device):
            images = sam.preprocess(torch.as_tensor(resized, device=device).permute(0, 3, 1, 2).float())
            if device.type == "cpu":
                # oneDNN's convolutions run faster on channels-last input: LiteMedSAM's TinyViT encoder
                # 1.2x (2 cores; embeddings equal to 4e-6, docs/results.md); the weights stay as they are.
                images = images.contiguous(memory_format=torch.channels_last)
            embeddings = encoder(images)
        return embeddings.float().cpu()

    chunks = run_in_batches(encode, len(slices_uint8), batch_size or default_batch_size(sam), "SAM image encoder", device)
    # clone() outside inference mode: cached embeddings may later feed decoder training.
    return torch.cat(chunks).clone()


class EmbeddingCache:
    """Image embeddings on the CPU, one per key such as (volume, modality, view, slice index).

    The key must also tell encoders apart if several are used (e.g. a LoRA-tuned one): the cache
    cannot see weights change. `max_items` bounds memory (a ViT embedding is 4 MB), dropping the
    oldest entries first.
    """

    def __init__(self, max_items: int | None = None):
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._store: dict = {}

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key) -> bool:
        return key in self._store

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    def embeddings(self, sam: Sam, slices_uint8: np.ndarray, indices, key, batch_size: int | None = None) -> torch.Tensor:
        """Embeddings (len(indices), C, h, w) of slices_uint8[indices]; only missing ones are encoded."""
        keys = [_slice_key(key, i) for i in indices]
        missing = [i for i, k in zip(indices, keys) if k not in self._store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            fresh = encode_slices(sam, slices_uint8[missing], batch_size)
            for i, embedding in zip(missing, fresh):
                self._store[_slice_key(key, i)] = embedding
        # Read everything before evicting, so this call's slices are all there.
        result = torch.stack([self._store[k] for k in keys]) if keys else None
        while self.max_items is not None and len(self._store) > self.max_items:
            del self._store[next(iter(self._store))]
        return result


def _slice_key(key, index: int):
    return (*key, int(index)) if isinstance(key, tuple) else (key, int(index))


def decode_batched(sam: Sam, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
    """MaskDecoder.predict_masks for B (embedding, prompt) pairs: all four mask tokens.

    predict_masks repeat_interleaves ONE image embedding over all its prompts; here each prompt
    has its own image, so the same submodules run on B pairs without the repeat.
    Returns low-res logits (B, 4, 4h, 4w) and IoU predictions (B, 4).
    """
    decoder = sam.mask_decoder
    batch = image_embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
    src = image_embeddings + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
    b, c, h, w = src.shape

    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens, :]

    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def decode_logits(sam: Sam, embeddings: torch.Tensor, boxes_xyxy, original_size, multimask: bool = False,
                  tokens: slice | None = None):
    """Low-res mask logits (B, 1 or 3, 4h, 4w) and IoU predictions for one box per embedding.

    `tokens` overrides which mask tokens come back (SAMBA-mc training reads all four)."""
    device = sam.device
    boxes = torch.as_tensor(map_boxes(sam, boxes_xyxy, original_size), dtype=torch.float, device=device)
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, iou = decode_batched(sam, embeddings.to(device), sparse, dense)
    chosen = tokens or (slice(1, None) if multimask else slice(0, 1))
    return logits[:, chosen], iou[:, chosen]


@torch.inference_mode()
def decode_boxes(sam: Sam, embeddings: torch.Tensor, boxes_xyxy, original_size, multimask: bool = False):
    """Masks (B, 1 or 3, H, W) bool in slice pixels, and IoU predictions (B, 1 or 3)."""
    logits, iou = decode_logits(sam, embeddings, boxes_xyxy, original_size, multimask)
    original_size = tuple(int(s) for s in original_size)
    masks = sam.postprocess_masks(logits, input_size(sam, original_size), original_size)
    return masks > sam.mask_threshold, iou


def segment_stack(sam: Sam, slices_uint8: np.ndarray, boxes: dict, cache: EmbeddingCache | None = None,
                  key=("stack",), batch_size: int | None = None, multimask: bool = False) -> np.ndarray:
    """Box-prompted SAM on every slice that has a box; slices without one are all False.

    slices_uint8 (N, H, W, 3) from slices.normalise_slices; boxes {slice index: (x0, y0, x1, y1)}.
    Returns (N, H, W) bool, or (N, 3, H, W) bool in MULTICLASS_CHANNELS order when multimask.
    batch_size: slices per encoder call (None: default_batch_size); boxes are decoded DECODE_CHUNK
    at a time. Both batches shrink on out-of-memory (run_in_batches).
    """
    n, height, width = slices_uint8.shape[:3]
    indices = sorted(int(i) for i in boxes)
    shape = (n, 3, height, width) if multimask else (n, height, width)
    result = np.zeros(shape, bool)
    if not indices:
        return result
    if cache is None:
        embeddings = encode_slices(sam, slices_uint8[indices], batch_size)
    else:
        embeddings = cache.embeddings(sam, slices_uint8, indices, key, batch_size)
    box_array = np.stack([np.asarray(boxes[i], np.float64) for i in indices])

    def decode(start, stop):
        masks, _ = decode_boxes(sam, embeddings[start:stop], box_array[start:stop], (height, width), multimask)
        masks = masks.cpu().numpy()
        result[indices[start:stop]] = masks if multimask else masks[:, 0]

    run_in_batches(decode, len(indices), DECODE_CHUNK, "SAM mask decoder", sam.device)
    return result


def naive_segment_stack(sam: Sam, slices_uint8: np.ndarray, boxes: dict, multimask: bool = False) -> np.ndarray:
    """Reference: one SamPredictor.set_image + predict per slice, as SAM's own examples do; for
    LiteMedSAM (single mask only), its own per-slice inference (litemedsam.reference_segment_slice)."""
    n, height, width = slices_uint8.shape[:3]
    result = np.zeros((n, 3, height, width) if multimask else (n, height, width), bool)
    if hasattr(sam, "resize_image") and not multimask:
        from SAMBASegmentLib.litemedsam import reference_segment_slice

        for index in sorted(boxes):
            result[index] = reference_segment_slice(sam, slices_uint8[index], boxes[index])
        return result
    predictor = SamPredictor(sam)
    for index in sorted(boxes):
        predictor.set_image(np.ascontiguousarray(slices_uint8[index]))
        masks, _, _ = predictor.predict(box=np.asarray(boxes[index], np.float64), multimask_output=multimask)
        result[index] = masks if multimask else masks[0]
    return result
