"""Subcommands of `slicer-samba` that this module owns (handlers import torch lazily)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from SAMBACore.brats import MODALITIES

CURVE = "training-curve.png"  # written into the adapter folder by `train lora`


def _extract(args) -> int:
    from .extract import extract_lora

    tolerance = {} if args.tolerance is None else {"tolerance": args.tolerance}
    extract_lora(args.finetuned, args.base, args.output, component=args.component, energy=args.energy,
                 targets=args.targets, plot=args.plot, command="slicer-samba " + " ".join(sys.argv[1:]), **tolerance)
    return 0


def _bench_lora(args) -> int:
    from SAMBACore.device import choose_device

    from .bench_lora import bench_lora, report_table

    report = bench_lora(args.model, rank=args.rank, batch=args.batch, steps=args.steps,
                        device=choose_device(args.device), checkpointed=args.checkpoint,
                        log=None if args.json else print)
    print(json.dumps(report) if args.json else report_table(report))
    return 0


def _progress_printer(every_s: float = 5.0):
    """Terminal progress: one line at most every few seconds, so a log file stays readable."""
    import time

    last = [0.0]

    def report(fraction, message):
        now = time.monotonic()
        if now - last[0] >= every_s or fraction >= 1:
            last[0] = now
            print(f"[{fraction:4.0%}] {message}", flush=True)

    return report


def _settings(args, component: str):
    """LoraSettings for SAM, UnetLoraSettings for a U-Net component; options left out keep their defaults."""
    targets = tuple(t for t in (args.targets or "").split(",") if t)
    given = {"steps_per_epoch": args.steps_per_epoch, "batch": args.batch}
    common = dict(rank=args.rank, alpha=float(args.alpha if args.alpha is not None else args.rank),
                  dropout=args.dropout, epochs=args.epochs, lr=args.lr, seed=args.seed,
                  **{k: v for k, v in given.items() if v is not None}, **({"targets": targets} if targets else {}))
    if component == "sam":
        from LoRATrainerLib.train_lora import LoraSettings, stacks_from_text

        stacks = stacks_from_text(args.views, args.modalities)
        return LoraSettings(with_decoder=args.with_decoder, val_slices=args.val_slices, **stacks, **common)
    if args.with_decoder:
        raise ValueError("--with-decoder trains SAM's mask decoder: leave it out for a U-Net component.")
    from LoRATrainerLib.train_unet_lora import UnetLoraSettings

    extra = {"tumour_fraction": args.tumour_fraction} if args.tumour_fraction is not None else {}
    return UnetLoraSettings(component=component, patch=args.patch, **extra, **common)


def _train_lora(args) -> int:
    """`train lora`: a LoRA adapter on a bundle's SAM or on one of its U-Nets, in one process or
    several under torchrun."""
    from LoRATrainerLib.distributed import start, stop
    from LoRATrainerLib.logic import choose_component, resolve_base
    from LoRATrainerLib.training_data import cases_from_folder, split_cases
    from SAMBACore.bundles import load_bundle
    from SAMBACore.device import choose_device

    base = resolve_base(args.base)
    component = choose_component(load_bundle(base), args.component)
    settings = _settings(args, component)
    command = "slicer-samba " + " ".join(sys.argv[1:])
    world = start(choose_device(args.device))
    try:
        def log(message):
            if world.main:
                print(message, flush=True)

        cases = cases_from_folder(args.data_dir, log)
        if args.val:
            train, val = cases, cases_from_folder(args.val, log)
        else:
            train, val = split_cases(cases, args.val_fraction, args.seed)
        if component == "sam":
            from LoRATrainerLib.train_lora import train_lora

            info = train_lora(base, args.output, train, val, settings, world, command=command,
                              progress=_progress_printer(), log=log)
        else:
            from LoRATrainerLib.train_unet_lora import train_unet_lora

            info = train_unet_lora(base, args.output, train, val, settings, world, command=command,
                                   progress=_progress_printer(), log=log)
        if world.main:  # the curve LoRA Trainer plots in Slicer, as a picture beside the adapter's files
            from SAMBACore.plots import plot_training_curve

            curve = plot_training_curve(info, Path(args.output) / CURVE, f"LoRA on {component} of {Path(str(base)).name}")
            log(f"Training curve: {curve}")
    finally:
        stop(world)
    return 0


def register(commands, train, bench) -> None:
    """Add this module's subcommands to the top-level, `train` and `bench` sub-parser groups."""
    lora = train.add_parser("lora", help="a LoRA adapter on a SAMBA bundle's SAM (image encoder, optionally + mask "
                            "decoder) or on the Conv layers of an R2UNetSegment bundle's U-Net, R2U-Net or cascade stage 2",
                            description="Under torchrun (--nproc_per_node N) the same command trains data-parallel, "
                            "one process per GPU (gloo on the CPU); rank 0 prints and writes the adapter.")
    lora.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
    lora.add_argument("--base", required=True, help="the bundle to adapt (folder or bundled name: litemedsam-samba or phantom-demo for SAM, "
                      "phantom-r2unet for the U-Nets)")
    lora.add_argument("--component", choices=("sam", "unet", "r2unet", "cascade_stage2"),
                      help="the bundle's network to adapt (default: the only one it has, sam for a SAMBA bundle; "
                      "phantom-r2unet has three, so choose)")
    lora.add_argument("-o", "--output", type=Path, required=True, help="adapter folder to write (replaced atomically at the end)")
    lora.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    lora.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    lora.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    lora.add_argument("--targets", help="comma-separated module names to adapt (default: qkv for SAM, every "
                      "Conv2d/Conv3d layer for a U-Net)")
    lora.add_argument("--with-decoder", action="store_true", help="also train SAM's mask decoder (stored in the adapter)")
    lora.add_argument("--epochs", type=int, default=5, help="epochs, each followed by a validation (default 5)")
    lora.add_argument("--steps-per-epoch", type=int, help="optimiser steps per epoch (default: one pass over the "
                      "slices for SAM, 50 for a U-Net)")
    lora.add_argument("--batch", type=int, help="slices (SAM, per process; default 8) or patches (U-Net; default 2) per step")
    lora.add_argument("--patch", type=int, default=48, help="U-Net: patch edge in voxels (default 48)")
    lora.add_argument("--tumour-fraction", type=float, help="U-Net: share of patches centred on tumour, the rest "
                      "anywhere in the brain (default 0.67; lower teaches fewer false positives)")
    lora.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    stacks = ("(default, with neither given: the stacks SAMBA Segment's default preset runs with the base on the "
              "device: flair axial for litemedsam-samba on a CPU; flair axial and coronal and t1ce axial on a GPU; "
              "all for phantom-demo. Given: each listed contrast in each listed view)")
    lora.add_argument("--views", help=f"SAM: comma-separated slice views to train on {stacks}")
    lora.add_argument("--modalities", help=f"SAM: comma-separated contrasts ({','.join(MODALITIES)}) to train on {stacks}")
    held_out = lora.add_mutually_exclusive_group()
    held_out.add_argument("--val-fraction", type=float, default=0.2, help="cases held out for validation (default 0.2)")
    held_out.add_argument("--val", type=Path, help="a separate folder of validation cases (then all of DATA_DIR trains)")
    lora.add_argument("--val-slices", type=int, default=300, help="SAM: validation slices per epoch at most (default 300)")
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    lora.set_defaults(run=_train_lora)
    extract = train.add_parser("lora-extract", help="a LoRA adapter from a full fine-tune (or a high-rank adapter): "
                               "per-layer rank by SVD energy")
    extract.add_argument("finetuned", type=Path, help="fine-tuned bundle (same component and shape as the base) "
                         "or adapter folder")
    extract.add_argument("--base", type=Path, required=True, help="the base bundle folder it was fine-tuned from")
    extract.add_argument("--component", default="sam", help="bundle component (default sam; unet, r2unet, ...)")
    extract.add_argument("--energy", type=float, default=0.9,
                         help="fraction of sum(sigma^2) of each layer's weight change to keep (default 0.9)")
    extract.add_argument("--targets", nargs="+", help="layer names to adapt (default: qkv for SAM, every "
                         "Conv2d/Conv3d for a U-Net, the adapter's own targets for an adapter)")
    extract.add_argument("-o", "--output", type=Path, required=True, help="adapter folder to write")
    extract.add_argument("--plot", type=Path, help="also write the energy curves as a PNG")
    extract.add_argument("--tolerance", type=float,
                         help="relative output error the check accepts (default 0.01)")
    extract.set_defaults(run=_extract)

    lora_bench = bench.add_parser("lora", help="LoRA vs full fine-tuning: trainable parameters, peak training "
                                  "memory, seconds per step, ratios")
    lora_bench.add_argument("--model", choices=("sam-demo", "sam-vit-b", "litemedsam", "unet"), default="sam-demo",
                            help="sam-demo (256 px), sam-vit-b (1024 px; a GPU), unet (3D U-Net, 64^3 patch)")
    lora_bench.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    lora_bench.add_argument("--batch", type=int, default=2, help="images or patches per step (default 2)")
    lora_bench.add_argument("--steps", type=int, default=3, help="timed optimiser steps per run (default 3)")
    lora_bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    lora_bench.add_argument("--checkpoint", action="store_true", help="activation checkpointing in both runs "
                            "(SAM encoder blocks, U-Net stages): shows what LoRA saves once activations are small")
    lora_bench.add_argument("--json", action="store_true", help="print the report as one JSON line")
    lora_bench.set_defaults(run=_bench_lora)
