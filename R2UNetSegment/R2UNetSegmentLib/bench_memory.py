"""`slicer-samba bench memory`: peak memory, time and Dice of full, patch-wise and cascade inference.

All three run in one process on a four-channel phantom (240x240x155 by default), in the order
cascade, patch, full: from the smallest expected peak to the largest. On the CPU the peak is the
growth of the process' RSS, and memory the C allocator keeps after a free is reused without
growing RSS; a large run first would leave such memory behind and make the smaller runs after
it look cheaper than they are. Freed memory is also handed back to the system before each mode
(malloc_trim on glibc) and large blocks are made to come straight from the system (mmap), so
RSS follows what is live.

RSS also holds what the process did before (thread pools, allocator caches, other tests in one
pytest process), so on the CPU each mode also runs under memory.AllocationTracker: the peak of
live tensor bytes, exact and the same on every run (tensor_peak_bytes; what a kernel allocates
privately is not in it). measure: "both" (default on the CPU: a second run per mode), "process"
(RSS or the CUDA allocator's peak only) or "tensors" (only the tracked run: half the time, and what
a comparison that must hold every time uses; its seconds include the tracker's overhead).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

from SAMBACore.brats import MODALITIES
from SAMBACore.metrics import region_metrics
from SAMBACore.phantom import make_case

from .inference import Cascade, brain_box, normalise, segment
from .memory import AllocationTracker, PeakMemory
from .memory_plan import estimate_peak_bytes
from .model_facts import model_margin
from .unet3d import UNet3D

MEASURES = ("both", "process", "tensors")
ORDER = ("cascade", "patch", "full")  # smallest peak first: see the module docstring
TARGET_RATIO = 0.25  # cascade peak memory at most this fraction of full (the target)
TARGET_DICE = 0.02  # and its Dice within this of full
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def prepare_rss_measurement() -> None:
    """Make RSS follow live memory: blocks of 1 MiB and more straight from the system (mmap, given
    back on free; process-wide from now on), and what was freed so far handed back (glibc only)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def _run_mode(image, model, cascade, mode, patch_size, device, measure, progress):
    """(labels, peak bytes, tensor peak bytes or None, seconds) of segment() in one mode, as users run it
    (inside the brain's box). peak bytes: RSS or CUDA growth, or the tensor peak when measure is "tensors"."""
    def run():
        return segment(image, model=model, cascade=cascade, mode=mode, patch_size=patch_size, device=device,
                       progress=progress)[0]

    tensor_bytes = None
    if measure in ("both", "tensors"):
        weights = [*model.parameters(), *model.buffers(), *cascade.stage1.parameters(), *cascade.stage1.buffers(),
                   *cascade.stage2.parameters(), *cascade.stage2.buffers()]
        started = time.perf_counter()
        with AllocationTracker(existing=weights) as tracker:
            labels = run()
        tensor_bytes, seconds = tracker.peak, time.perf_counter() - started
        if measure == "tensors":
            return labels, tensor_bytes, tensor_bytes, seconds
        del labels
    prepare_rss_measurement()
    with PeakMemory(device) as peak:
        labels = run()
    return labels, peak.peak_bytes, tensor_bytes, peak.seconds


def default_models(seed: int) -> tuple[torch.nn.Module, Cascade]:
    """Randomly initialised networks of the default shapes (Dice is meaningless with these)."""
    torch.manual_seed(seed)
    unet = UNet3D(4, 4, widths=(16, 32, 64, 128))
    # Stage 2 is one level shallower: a smaller receptive field, so a smaller patch margin.
    cascade = Cascade(UNet3D(4, 4, (16, 32, 64, 128)), UNet3D(8, 4, widths=(16, 32, 64)))
    return unet.eval(), cascade


def _bundle_models(bundle, device):
    from .r2unet_bundle import load_r2unet_models

    models = load_r2unet_models(bundle, device)
    if models.unet is None or models.cascade is None:
        raise ValueError(f"{bundle}: the memory benchmark needs a bundle with both the unet and the cascade; "
                         "train them with `slicer-samba train unet` and `slicer-samba train cascade`")
    return models.unet, models.cascade


def phantom_image(seed: int, shape=None) -> tuple[np.ndarray, np.ndarray]:
    """(normalised (4, *S) image, truth labels): a phantom case, or a `shape` box of it around the tumour."""
    case = make_case(seed)
    image = normalise(np.stack([case.images[m] for m in MODALITIES]))
    truth = case.labels
    if shape is not None:
        centre = np.argwhere(truth > 0).mean(0).round().astype(int)
        box = tuple(
            slice(int(np.clip(c - s // 2, 0, full - s)), int(np.clip(c - s // 2, 0, full - s)) + s)
            for c, s, full in zip(centre, shape, truth.shape)
        )
        image, truth = np.ascontiguousarray(image[(slice(None),) + box]), np.ascontiguousarray(truth[box])
    return image, truth


def run_bench(bundle=None, device="cpu", patch_size=64, seed=0, shape=None, models=None, progress=None,
              modes=("full", "patch", "cascade"), measure: str = "both") -> dict:
    """Run the modes (full among them, the reference of the ratios) and return the report.

    models: (model, Cascade) to use instead of the bundle's or the default random ones.
    shape: a (D, H, W) box of the phantom around its tumour instead of the whole 155x240x240.
    Every mode's estimate is reported, also for modes not run (patch-wise inference of a deep
    network is the slowest by far on a CPU: each window is grown by the network's margin).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}")
    if _is_cuda(device):
        measure = "process"  # the CUDA allocator's peak is exact already
    if "full" not in modes or not set(modes) <= set(ORDER):
        raise ValueError(f"modes must include full and be among {', '.join(ORDER)}, not {', '.join(modes)}")
    if shape is not None and (len(shape) != 3 or min(shape) < 1 or any(s > f for s, f in zip(shape, (155, 240, 240)))):
        raise ValueError(f"shape must be three sizes within (155, 240, 240), not {shape}")
    say = progress or (lambda message: None)
    if models is not None:
        model, cascade, source = *models, "given"
    elif bundle is not None:
        model, cascade = _bundle_models(bundle, device)
        source = str(Path(bundle))
    else:
        model, cascade = default_models(seed)
        source = "random"
    model.to(device).eval()
    cascade.stage1.to(device).eval()
    cascade.stage2.to(device).eval()
    say("making the phantom")
    image, truth = phantom_image(seed, shape)
    # Margins, estimates and MONAI's import (about 200 MB of RSS by itself) come before the
    # runs, so they are not in the peaks.
    import monai.inferers  # noqa: F401

    model_margin(model, 3)
    model_margin(cascade.stage2, 3)
    inside = image[(slice(None),) + brain_box(image)].shape
    estimates = {
        "full": estimate_peak_bytes(model, inside, "full", patch_size),
        "patch": estimate_peak_bytes(model, inside, "patch", patch_size),
        "cascade": estimate_peak_bytes(cascade, inside, "cascade", patch_size),
    }
    tenths = [-1]

    def every_tenth(fraction, message):
        if int(fraction * 10) > tenths[0]:
            tenths[0] = int(fraction * 10)
            say(f"{fraction:4.0%} {message}")

    results = {}
    for mode in (m for m in ORDER if m in modes):
        say(f"{mode} inference")
        tenths[0] = -1
        labels, peak_bytes, tensor_bytes, seconds = _run_mode(image, model, cascade, mode, patch_size, device,
                                                              measure, every_tenth)
        scores = region_metrics(labels, truth)
        del labels
        results[mode] = {
            "peak_bytes": peak_bytes,
            "tensor_peak_bytes": tensor_bytes,
            "estimate_bytes": estimates[mode],
            "seconds": seconds,
            "dice": {region: scores[region]["dice"] for region in ("WT", "TC", "ET")},
        }
    full = results["full"]
    for result in results.values():
        result["peak_ratio_to_full"] = result["peak_bytes"] / max(full["peak_bytes"], 1)
        result["seconds_ratio_to_full"] = result["seconds"] / max(full["seconds"], 1e-9)
        result["dice_difference_to_full"] = {r: result["dice"][r] - full["dice"][r] for r in result["dice"]}
    return {
        "device": str(device),
        "image_shape": list(image.shape),
        "patch_size": patch_size,
        "seed": seed,
        "models": source,
        "dice_meaningful": source != "random",
        "margins": {"patch": list(model_margin(model, 3)), "cascade stage 2": list(model_margin(cascade.stage2, 3))},
        "order": list(ORDER),
        "measure": measure,
        "modes": {mode: results[mode] for mode in ("full", "patch", "cascade") if mode in results},
        "estimates_bytes": estimates,
        "target": _target(results),
    }


def _target(results: dict) -> dict:
    """The issue's target for the cascade, judged when the cascade was run."""
    cascade = results.get("cascade")
    return {
        "cascade_peak_ratio_max": TARGET_RATIO,
        "cascade_dice_difference_max": TARGET_DICE,
        "memory_met": None if cascade is None else cascade["peak_ratio_to_full"] <= TARGET_RATIO,
        "dice_met": None if cascade is None else all(
            abs(d) <= TARGET_DICE for d in cascade["dice_difference_to_full"].values()
        ),
    }


def _mb(n: float) -> str:
    return f"{n / 1024**2:,.0f} MB"


def format_report(report: dict) -> str:
    """The report as a readable table."""
    lines = [
        f"Memory benchmark on {report['device']}: image {'x'.join(map(str, report['image_shape']))}, "
        f"patch {report['patch_size']}, margins {report['margins']}, models: {report['models']}",
        f"{'mode':8} {'peak':>10} {'tensors':>10} {'estimate':>10} {'ratio':>6} {'seconds':>8} {'ratio':>6}  Dice WT / TC / ET",
    ]
    for mode, r in report["modes"].items():
        dice = " / ".join(f"{r['dice'][k]:.3f}" for k in ("WT", "TC", "ET"))
        tensors = "-" if r["tensor_peak_bytes"] is None else _mb(r["tensor_peak_bytes"])
        lines.append(
            f"{mode:8} {_mb(r['peak_bytes']):>10} {tensors:>10} {_mb(r['estimate_bytes']):>10} {r['peak_ratio_to_full']:6.2f} "
            f"{r['seconds']:8.1f} {r['seconds_ratio_to_full']:6.2f}  {dice}"
        )
    lines.append({"both": "peak: growth of the process' memory (RSS, or the CUDA allocator's); tensors: live tensor bytes",
                  "process": "peak: growth of the process' memory (RSS, or the CUDA allocator's)",
                  "tensors": "peak: live tensor bytes (exact; no kernel workspaces)"}[report["measure"]])
    for mode, estimate in report["estimates_bytes"].items():
        if mode not in report["modes"]:
            lines.append(f"{mode:8} {'not run':>10} {'':>10} {_mb(estimate):>10}")
    target = report["target"]
    verdict = {True: "met", False: "NOT met", None: "not run"}
    lines.append(
        f"Target: cascade peak <= {target['cascade_peak_ratio_max']:.0%} of full: {verdict[target['memory_met']]}; "
        f"Dice within {target['cascade_dice_difference_max']} of full: {verdict[target['dice_met']]}"
    )
    if not report["dice_meaningful"]:
        lines.append("Models are randomly initialised (no --bundle): the Dice values are meaningless.")
    return "\n".join(lines)


def run_command(args) -> int:
    """`slicer-samba bench memory`: progress on stderr, the report (table or JSON) on stdout."""
    import json

    from SAMBACore.device import choose_device

    device = choose_device(args.device)
    bundle = None
    if args.bundle:
        from .r2unet_bundle import resolve_bundle

        bundle = resolve_bundle(args.bundle)
    shape = None
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            raise ValueError(f"--shape wants three integers D,H,W, got {args.shape!r}") from None
    modes = tuple(m.strip() for m in args.modes.split(","))
    report = run_bench(bundle, device, args.patch_size, args.seed, shape=shape, modes=modes, measure=args.measure,
                       progress=lambda message: print(f"bench memory: {message}", file=sys.stderr, flush=True))
    print(json.dumps(report) if args.json else format_report(report))
    return 0
