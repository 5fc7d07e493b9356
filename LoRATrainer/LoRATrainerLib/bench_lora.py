"""`slicer-samba bench lora`: LoRA vs full fine-tuning of one model, side by side.

Per mode: trainable parameters, peak training memory (what the steps add on top of the loaded
model: gradients, optimiser state, activations; CUDA: the allocator's peak, CPU: sampled RSS,
both through R2UNetSegmentLib.memory.PeakMemory, and on CPU also the peak of live tensor bytes
through its AllocationTracker) and seconds per step (forward + backward +
Adam step) on inputs of the model's real size. The LoRA run goes first: memory one run frees can
be kept by the C allocator and reused by the next without growing RSS, which would hide part of
the next run's peak; running the small run first means only the full run can be under-measured,
so the LoRA/full ratio errs against LoRA. Freed memory is also handed back (malloc_trim) between runs,
and one unmeasured warm-up pass comes before both (one-time set-up would count against the first).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from SAMBACore.adapters import SAM_ENCODER_TARGETS, LoraSpec, add_lora, conv_targets, trainable_parameters

# Model shapes and input sizes: the demo bundle's small SAM at 256 px, the official ViT-B SAM at
# 1024 px, and the 3D U-Net of the memory study (reduced widths) on a 64^3 four-channel patch.
MODELS = {
    "sam-demo": {"sam": None},  # None: sam_model.SMALL_DEFAULT, the phantom-demo bundle's shape
    "sam-vit-b": {"sam": {"type": "vit_b"}},
    "litemedsam": {"sam": {"type": "litemedsam"}},  # TinyViT at 256 px, the litemedsam-samba backbone
    "unet": {"unet": {"in_channels": 4, "out_channels": 4, "widths": (16, 32, 64, 128)}, "patch": 64},
}
MODES = ("lora", "full")  # in this order: see the module docstring


def build(name: str, config: dict | None = None) -> nn.Module:
    """The benchmarked model, randomly initialised (weights do not change memory or time)."""
    settings = {**MODELS[name], **(config or {})}
    if "sam" in settings:
        from SAMBASegmentLib.sam_model import SMALL_DEFAULT, build_sam

        return build_sam(settings["sam"] or SMALL_DEFAULT)
    from R2UNetSegmentLib.unet3d import UNet3D

    unet = settings["unet"]
    return UNet3D(unet["in_channels"], unet["out_channels"], tuple(unet["widths"]))


class Checkpointed(nn.Module):
    """A block whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, x, use_reentrant=False) if torch.is_grad_enabled() else self.block(x)


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Activation checkpointing on SAM's encoder blocks (a ViT's, or each stage's of a TinyViT), or a U-Net's conv stages."""
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        stages = [model.encoder, model.decoder]
    else:
        stages = [encoder.blocks] if hasattr(encoder, "blocks") else [layer.blocks for layer in encoder.layers]
    for blocks in stages:
        for index, block in enumerate(blocks):
            blocks[index] = Checkpointed(block)
    return model


def make_trainable(model: nn.Module, mode: str, rank: int) -> nn.Module:
    """full: every parameter learns. lora: peft LoRA (alpha = rank) on SAM's encoder qkv, or on
    every Conv of a U-Net; everything else frozen."""
    if mode == "full":
        return model.requires_grad_(True)
    model.requires_grad_(False)
    module = getattr(model, "image_encoder", model)
    targets = SAM_ENCODER_TARGETS if module is not model else conv_targets(model)
    add_lora(module, LoraSpec(tuple(targets), rank=rank, alpha=float(rank)))
    return model


def make_batch(model: nn.Module, batch: int, device: str, config: dict, generator: torch.Generator) -> dict:
    """Inputs and targets: normalised images with a box around a disc for SAM; a patch with
    random labels for a U-Net."""
    if hasattr(model, "image_encoder"):
        size = model.image_encoder.img_size
        height, _ = model.prompt_encoder.image_embedding_size
        low = 4 * height  # the mask logits: a quarter of the input for SAM's ViT, all of it for LiteMedSAM
        yy, xx = torch.meshgrid(torch.arange(low), torch.arange(low), indexing="ij")
        disc = ((yy - low / 2) ** 2 + (xx - low / 2) ** 2 <= (low / 5) ** 2).float()
        box = torch.tensor([0.3, 0.3, 0.7, 0.7]) * size
        return {"images": torch.randn(batch, 3, size, size, generator=generator).to(device),
                "boxes": box.expand(batch, 4).contiguous().to(device),
                "target": disc.expand(batch, 1, low, low).contiguous().to(device)}
    settings = {**MODELS["unet"], **config}
    patch, channels, classes = settings["patch"], settings["unet"]["in_channels"], settings["unet"]["out_channels"]
    return {"images": torch.randn(batch, channels, patch, patch, patch, generator=generator).to(device),
            "target": torch.randint(0, classes, (batch, patch, patch, patch), generator=generator).to(device)}


def loss_of(model: nn.Module, inputs: dict) -> torch.Tensor:
    """SAM: image encoder, box prompt, mask decoder, Dice loss (as SAMBA trains it). U-Net: cross-entropy."""
    if hasattr(model, "image_encoder"):
        from monai.losses import DiceLoss
        from SAMBASegmentLib.sam_runner import decode_batched

        embeddings = model.image_encoder(inputs["images"])
        sparse, dense = model.prompt_encoder(points=None, boxes=inputs["boxes"], masks=None)
        logits, _ = decode_batched(model, embeddings, sparse, dense)
        return DiceLoss(sigmoid=True)(logits[:, :1], inputs["target"])
    return nn.functional.cross_entropy(model(inputs["images"]), inputs["target"])


def _release_freed_memory(device: str) -> None:
    # glibc keeps freed heap pages in the process; handing them back lets the next run's RSS
    # growth show its own peak.
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the run order alone keeps the comparison conservative


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def prepared(name: str, mode: str, rank: int, device: str, config: dict | None, checkpointed: bool) -> nn.Module:
    model = build(name, config)
    if checkpointed:
        checkpoint_blocks(model)
    return make_trainable(model, mode, rank).to(device).train()


def _train_steps(model: nn.Module, inputs: dict, steps: int, device: str) -> tuple[list[float], float]:
    """Adam steps (the optimiser made here: its state is training memory); seconds per step, last loss."""
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds = []
    for _ in range(steps):
        _sync(device)
        started = time.perf_counter()
        loss = loss_of(model, inputs)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds, loss.item()


def run_mode(name: str, mode: str, rank: int, batch: int, steps: int, device: str, config: dict | None = None,
             checkpointed: bool = False) -> dict:
    """One training run: `steps` Adam steps, the peak memory they add and their times.

    On CPU two more steps follow under AllocationTracker: the peak of live tensor bytes (what
    CUDA's allocator peak counts on a GPU), blind to the C allocator's caching. They are not
    timed (the tracker slows every op); the model's weights and the inputs are not counted."""
    from R2UNetSegmentLib.memory import AllocationTracker, PeakMemory

    torch.manual_seed(0)
    model = prepared(name, mode, rank, device, config, checkpointed)
    inputs = make_batch(model, batch, device, config or {}, torch.Generator().manual_seed(0))
    _release_freed_memory(device)
    with PeakMemory(device) as peak:
        seconds, loss = _train_steps(model, inputs, steps, device)
    tensor_peak = peak.peak_bytes
    if not device.startswith("cuda"):
        _release_freed_memory(device)
        # two steps: the second holds the Adam state and the activations at once
        with AllocationTracker([*model.parameters(), *model.buffers(), *inputs.values()]) as tracker:
            _train_steps(model, inputs, 2, device)
        tensor_peak = tracker.peak
    result = {"trainable_parameters": trainable_parameters(model), "peak_bytes": peak.peak_bytes,
              "tensor_peak_bytes": tensor_peak,
              # the first step also allocates the optimiser state: timed apart when there are more
              "seconds_per_step": statistics.median(seconds[1:] or seconds), "first_step_seconds": seconds[0],
              "final_loss": loss}
    del model, inputs
    _release_freed_memory(device)
    return result


def warm_up(name: str, rank: int, batch: int, device: str, config: dict | None = None, checkpointed: bool = False) -> None:
    """One unmeasured forward and backward pass: lazy imports, thread pools and kernel caches
    are set up once per process, and would otherwise count against whichever run comes first."""
    model = prepared(name, "lora", rank, device, config, checkpointed)
    loss_of(model, make_batch(model, batch, device, config or {}, torch.Generator().manual_seed(0))).backward()
    del model
    _release_freed_memory(device)


def bench_lora(name: str = "sam-demo", rank: int = 4, batch: int = 2, steps: int = 3, device: str = "cpu",
               config: dict | None = None, checkpointed: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """LoRA then full fine-tuning of the same model in this process; the report with ratios.
    checkpointed: activation checkpointing (checkpoint_blocks) in both runs, so that activations
    no longer hide what LoRA saves (gradients and optimiser state of the frozen weights)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r} for bench lora: choose one of {', '.join(MODELS)}.")
    for label, value in (("--rank", rank), ("--batch", batch), ("--steps", steps)):
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}.")
    total = sum(p.numel() for p in build(name, config).parameters())
    warm_up(name, rank, batch, device, config, checkpointed)
    runs = {}
    for mode in MODES:
        if log:
            log(f"{name}: {mode} fine-tuning, {steps} step(s) of batch {batch} on {device} ...")
        runs[mode] = run_mode(name, mode, rank, batch, steps, device, config, checkpointed)
    ratios = {key: _ratio(runs["lora"][key], runs["full"][key])
              for key in ("trainable_parameters", "peak_bytes", "tensor_peak_bytes", "seconds_per_step")}
    return {
        "model": name, "device": device, "rank": rank, "batch": batch, "steps": steps, "parameters": total,
        "activation_checkpointing": checkpointed, "threads": torch.get_num_threads(),
        "memory": ("CUDA allocator peak" if device.startswith("cuda") else
                   "peak_bytes: process RSS peak sampled every 2 ms; tensor_peak_bytes: live tensor bytes"),
        "order": list(MODES), "runs": runs,
        "ratios": ratios, "target_peak_ratio": 0.5,
        "target_met": {key: ratios[key] is not None and ratios[key] <= 0.5 for key in ("peak_bytes", "tensor_peak_bytes")},
    }


def _ratio(lora: float, full: float) -> float | None:
    return lora / full if full else None  # a zero peak (nothing measured) has no ratio


def _format(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report_table(report: dict) -> str:
    """A readable table of the report."""
    runs, ratios = report["runs"], report["ratios"]
    rows = [f"bench lora: {report['model']} ({report['parameters']:,} parameters), rank {report['rank']}, "
            f"batch {report['batch']}, {report['steps']} step(s), {report['device']}"
            + f" ({report['threads']} thread(s))" + (", activation checkpointing" if report["activation_checkpointing"] else ""),
            f"memory: {report['memory']}; runs in the order {', '.join(report['order'])}",
            f"{'':<6} {'trainable':>12} {'peak MB':>9} {'tensor MB':>10} {'s/step':>8}"]
    for mode in report["order"]:
        r = runs[mode]
        rows.append(f"{mode:<6} {r['trainable_parameters']:>12,} {r['peak_bytes'] / 2**20:>9.1f} "
                    f"{r['tensor_peak_bytes'] / 2**20:>10.1f} {r['seconds_per_step']:>8.3f}")
    rows.append(f"{'ratio':<6} {_format(ratios['trainable_parameters'], '>12.4%')} {_format(ratios['peak_bytes'], '>9.2f')} "
                f"{_format(ratios['tensor_peak_bytes'], '>10.2f')} {_format(ratios['seconds_per_step'], '>8.2f')}")
    met = report["target_met"]
    rows.append(f"Target LoRA peak <= {report['target_peak_ratio']:g} x full: "
                f"{'met' if met['peak_bytes'] else 'NOT met'} (peak), {'met' if met['tensor_peak_bytes'] else 'NOT met'} (tensors)")
    return "\n".join(rows)
