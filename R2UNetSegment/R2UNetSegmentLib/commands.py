"""Subcommands of `slicer-samba` that this module owns (handlers import torch lazily)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "full", "patch", "cascade")  # logic.MODES; not imported, so --help stays free of torch


def _format_bytes(n: float) -> str:
    return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


def _load_input(scene, path: Path, contrasts=None):
    """The node to segment: for a BraTS case folder its images (any of the four; with `contrasts`
    only those) are loaded (the logic gathers them as channels) and the first is returned; otherwise
    the one image file."""
    from SAMBACore import bridge
    from SAMBACore.brats import MODALITIES, ModalityError, find_case_files

    if Path(path).is_dir():
        files = find_case_files(path, allow_missing=True)
        keys = [m for m in MODALITIES if m in files and (contrasts is None or m in contrasts)]
        if not keys:
            raise ModalityError(f"{path} has none of the contrasts asked for ({', '.join(contrasts)}); it has "
                                f"{', '.join(m for m in MODALITIES if m in files)}.")
        return [bridge.load_volume(scene, files[m]) for m in keys][0]
    if contrasts is not None:
        raise ValueError("--contrasts chooses among the images of a BraTS case folder: give a case folder.")
    return bridge.load_volume(scene, path)


CONTRASTS = ("t1", "t1ce", "t2", "flair")  # SAMBACore.brats.MODALITIES, here without importing numpy


def _contrasts(value: str | None) -> tuple[str, ...] | None:
    """--contrasts t1ce,flair -> ("t1ce", "flair"), checked before anything is loaded."""
    if not value:
        return None
    chosen = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if not chosen or any(c not in CONTRASTS for c in chosen):
        raise ValueError(f"--contrasts takes some of {', '.join(CONTRASTS)}, comma-separated; got {value!r}.")
    return chosen


def _preview(path: Path, source: Path, request, result, node) -> None:
    """The preview picture of one r2unet result: the BraTS contrasts (or the one image, a photo in
    colour) with the outlines of the BraTS sub-regions or of the lesion; the truth beside it when
    the case folder has a seg file."""
    import numpy as np

    from R2UNetSegmentLib.logic import segments_for
    from SAMBACore import bridge
    from SAMBACore.brats import modality_of
    from SAMBACore.preview import preview_case

    if request.image.shape[0] == 3 and all("component" in n for n in request.names):  # an RGB photo
        images = {node.GetName(): np.moveaxis(request.image, 0, -1)}
    else:
        images = {modality_of(n) or n: channel for n, channel in zip(request.names, request.image)}
    preview_case(path, images, result.labels, bridge.ijk_to_ras(node), segments_for(result.classes, result.regions),
                 case_dir=source if Path(source).is_dir() else None,
                 title=f"R2U-Net Segment ({request.bundle}, {result.describe()}): {Path(source).name}")


def _r2unet(args) -> int:
    from R2UNetSegmentLib.logic import R2UNetSegmentCore, volumes_ml
    from SAMBACore import bridge
    from SAMBACore.batch import check_outputs, is_case_set, segment_cases
    from SAMBACore.device import choose_device
    from SAMBACore.preview import preview_path

    contrasts = _contrasts(args.contrasts)
    batch = is_case_set(args.input)
    check_outputs(args.input, args.output, args.volumes, batch, preview=args.preview)
    device = choose_device(args.device)
    core = R2UNetSegmentCore()  # keeps the bundle loaded from one case to the next

    def report(fraction, message):
        print(f"[{fraction:4.0%}] {message}", flush=True)

    def segment_case(path, output):
        started = time.perf_counter()
        scene = bridge.get_scene()  # headless: a new scene per case, so a batch does not accumulate volumes
        node = _load_input(scene, path, contrasts)
        request = core.prepare(scene, node, bundle=args.bundle, model=args.model, mode=args.mode,
                               budget=args.memory_budget, patch_size=args.patch_size, device=device,
                               adapter=args.adapter)
        loaded = time.perf_counter()
        result = core.compute(request, report)
        if result.present is not None:
            from SAMBACore.contrasts import WITHOUT_T1CE, describe

            print(f"Contrasts: {describe(result.present)}")
            if result.regions == ("WT",):
                print(f"Warning: {WITHOUT_T1CE}", file=sys.stderr, flush=True)
        segmentation = core.finish(scene, result, node, name="Tumour segmentation")
        print(f"Segmentation: {bridge.save_segmentation(segmentation, output)}")
        if args.adapter:
            print(f"Adapter: {args.adapter} (merged into the bundle's {core.models(args.bundle, device, args.adapter).adapted})")
        print(f"Mode: {result.describe()}, estimated peak memory {_format_bytes(result.estimate_bytes)}"
              + (f" (budget {_format_bytes(request.budget_bytes)})" if request.budget_bytes else ""))
        volumes = volumes_ml(result.labels, result.classes, node, result.regions)
        print("Volumes (mL): " + ", ".join(f"{name} {ml:.1f}" for name, ml in volumes.items()))
        print(f"Time: load {loaded - started:.1f} s, segment {result.seconds:.1f} s")
        if args.preview:
            _preview(preview_path(args.preview, path, batch), path, request, result, node)
        return volumes

    return segment_cases(args.input, args.output, segment_case, args.volumes, batch)


def _evaluate(args) -> int:
    from R2UNetSegmentLib.evaluation import evaluate
    from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models, resolve_bundle
    from SAMBACore.device import choose_device
    from SAMBACore.evaluation import format_means, report_end
    from SAMBACore.preview import case_preview_writer

    contrasts = _contrasts(args.contrasts)
    device = choose_device(args.device)
    models = load_r2unet_models(resolve_bundle(args.bundle), device, adapter=args.adapter)
    on_case = case_preview_writer(args.preview, f"R2U-Net Segment ({args.bundle}, {args.mode})")
    report = evaluate(models, args.data_dir, mode=args.mode, model=args.model, patch_size=args.patch_size,
                      device=device, log=lambda line: print(line, flush=True), contrasts=contrasts, on_case=on_case)
    report["bundle"] = str(args.bundle)
    print(f"Mean over {report['cases']} case(s), mode {args.mode}, contrasts {report['contrasts']}: "
          + format_means(report))
    return report_end(report, args.json)


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        widths = []
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two positive widths, e.g. 16,32,64")
    return widths


def _train(args) -> int:
    from R2UNetSegmentLib import training
    from SAMBACore.device import choose_device

    def config(base: dict, **changes) -> dict:
        """The default config with `changes`; --no-presence-flags: the four contrasts only, as bundles before them."""
        config = {**base, **changes}
        if not args.presence_flags:
            config.pop("presence_flags", None)
            config["in_channels"] -= 4
        return config

    command = "slicer-samba " + " ".join(sys.argv[1:])
    common = {"steps": args.steps, "patch": args.patch, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "device": choose_device(args.device), "command": command, "schedule": args.lr_schedule,
              "contrast_dropout": args.contrast_dropout,
              "augment": training.Augment(args.contrast_curves, args.site_subsets)}
    widths = {"widths": args.widths} if args.widths else {}
    if args.component == "cascade":
        stage2 = {"widths": args.stage2_widths} if args.stage2_widths else {}
        training.train_cascade(args.data_dir, args.output, stage1_steps=args.stage1_steps,
                               stage1_config=config(training.STAGE1_CONFIG, **widths),
                               stage2_config=config(training.STAGE2_CONFIG, **stage2), **common)
    elif args.component == "r2unet":
        depth = {"base_width": args.widths[0], "depth": len(args.widths) - 1} if args.widths else {}
        training.train_r2unet(args.data_dir, args.output, config=config(training.R2UNET_CONFIG, **depth), **common)
    else:
        training.train_unet(args.data_dir, args.output, config=config(training.UNET_CONFIG, **widths), **common)
    print(f"Bundle updated: {args.output} ({args.component})")
    return 0


def register(commands, train, bench) -> None:
    """Add this module's subcommands to the top-level, `train` and `bench` sub-parser groups."""

    r2unet = commands.add_parser("r2unet", help="segment a BraTS case folder or one image with the U-Net, R2U-Net "
                                 "or U-Net cascade, inside a memory budget")
    r2unet.add_argument("input", type=Path, help="BraTS case folder (any of the four images: a bundle trained with "
                        "presence flags takes any set (the bundled phantom-cascade-any, or your own: train ... does "
                        "so by default), the bundled phantom-r2unet all four only; without T1CE only the whole "
                        "tumour is produced), a single image file, or a folder of case folders (batch: every case, "
                        "one after the other); MRI must be skull-stripped (the brain only, one value around it), as "
                        "BraTS images are")
    r2unet.add_argument("-o", "--output", type=Path, required=True,
                        help="the .seg.nrrd to write; for a batch, the folder to write CASE.seg.nrrd files into")
    r2unet.add_argument("--bundle", default="phantom-r2unet", help="bundle folder or bundled name: phantom-r2unet "
                        "(default; four contrasts) or phantom-cascade-any (a cascade for any set of contrasts)")
    r2unet.add_argument("--model", choices=("unet", "r2unet"), default="unet", help="network for full and patch modes")
    r2unet.add_argument("--mode", choices=MODES, default="auto", help="auto: the cheapest mode within the budget")
    r2unet.add_argument("--memory-budget", help="peak memory --mode auto may use, e.g. 512MB, 2GB, 1.5G "
                        "(powers of 1024; default: the memory free now)")
    r2unet.add_argument("--patch-size", type=int, default=64, help="patch edge in voxels (default 64)")
    r2unet.add_argument("--device", choices=DEVICES, default="auto")
    r2unet.add_argument("--adapter", type=Path, metavar="DIR", help="a LoRA adapter folder for one of the bundle's "
                        "networks (slicer-samba train lora --component ...), merged in before use; the mode and "
                        "network are then the adapted one's")
    r2unet.add_argument("--contrasts", metavar="LIST", help="use only these contrasts of each case folder, e.g. "
                        "t1ce,flair or flair (to see what a case without the others gets; mode auto then runs a "
                        "network that takes any set). Default: every contrast the folder has")
    r2unet.add_argument("--volumes", type=Path, help="also write the volumes in mL per label or region, a row per "
                        "case, as a table (.csv or .tsv)")
    r2unet.add_argument("--preview", type=Path, metavar="OUT.png", help="also write a picture: axial, coronal and "
                        "sagittal slices through the lesion with the segment outlines and volumes (and the truth's "
                        "outlines when the case folder has a seg file); for a batch, a folder for CASE.png files")
    r2unet.set_defaults(run=_r2unet)

    evaluate = commands.add_parser("r2unet-evaluate", help="score an R2U-Net Segment bundle on labelled BraTS cases "
                                   "(Dice, HD95 per region, voxel-wise and BraTS 2023 lesion-wise), any contrasts")
    evaluate.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file (cases may "
                          "have different sets of contrasts)")
    evaluate.add_argument("--bundle", default="phantom-r2unet", help="bundle folder or bundled name: phantom-r2unet "
                          "(default; four contrasts) or phantom-cascade-any (a cascade for any set of contrasts)")
    evaluate.add_argument("--mode", choices=MODES, default="cascade", help="cascade (default), full, patch, or auto "
                          "(the cheapest within the memory free now, as r2unet does)")
    evaluate.add_argument("--model", choices=("unet", "r2unet"), default="unet", help="network for full and patch modes")
    evaluate.add_argument("--patch-size", type=int, default=64, help="patch edge in voxels (default 64; the result "
                          "does not depend on it)")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--adapter", type=Path, metavar="DIR", help="a LoRA adapter folder for one of the bundle's "
                          "networks, merged in before use")
    evaluate.add_argument("--contrasts", metavar="LIST", help="use only these contrasts of each case, e.g. flair or "
                          "t1ce,t2 (to measure a case without the others; without t1ce only the whole tumour is "
                          "produced and scored). Default: every contrast a case has")
    evaluate.add_argument("--json", action="store_true", help="also print the full report as one JSON line")
    evaluate.add_argument("--preview", type=Path, metavar="DIR", help="also write a preview picture of each case, "
                          "result and truth side by side, as DIR/CASE.png")
    evaluate.set_defaults(run=_evaluate)

    def bench_memory(args):
        from R2UNetSegmentLib.bench_memory import run_command

        return run_command(args)

    memory = bench.add_parser("memory", help="peak memory, time and Dice of full, patch-wise and cascade inference "
                              "on a 240x240x155 four-channel phantom")
    memory.add_argument("--bundle", help="bundle with the unet and the cascade (default: random weights, "
                        "so Dice is meaningless)")
    memory.add_argument("--device", choices=DEVICES, default="auto")
    memory.add_argument("--json", action="store_true", help="print the report as one JSON line")
    memory.add_argument("--patch-size", type=int, default=64, help="patch edge in voxels (default 64)")
    memory.add_argument("--seed", type=int, default=0, help="phantom (and random weights) seed (default 0)")
    memory.add_argument("--modes", default="full,patch,cascade",
                        help="modes to run, full included (default all three; patch-wise is the slowest on a CPU)")
    memory.add_argument("--shape", help="D,H,W: a box of the phantom around the tumour instead of 155,240,240")
    memory.add_argument("--measure", choices=("both", "process", "tensors"), default="both",
                        help="on a CPU: the process' RSS growth (process), the exact peak of live tensor bytes "
                        "(tensors: the same on every run, no kernel workspaces), or both (default; two runs per mode)")
    memory.set_defaults(run=bench_memory)

    for component, help_text in (("unet", "the 3D U-Net (full-volume and patch-wise inference)"),
                                 ("r2unet", "the attention R2U-Net (3D)"),
                                 ("cascade", "the two-stage U-Net cascade (down-sampled, then full-resolution patches)")):
        parser = train.add_parser(component, help=help_text)
        parser.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="bundle folder to create or update (re-run the same command to resume)")
        parser.add_argument("--steps", type=int, default=400, help="optimiser steps (per stage for the cascade; default 400)")
        parser.add_argument("--patch", type=int, default=64, help="patch edge in voxels (default 64)")
        parser.add_argument("--batch", type=int, default=2, help="patches per step (default 2)")
        parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
        parser.add_argument("--lr-schedule", choices=("constant", "poly"), default="constant",
                            help="constant, or poly: decayed to 0 over the steps as nnU-Net does (default constant)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", choices=DEVICES, default="auto")
        parser.add_argument("--contrast-dropout", type=float, default=0.5, metavar="P",
                            help="share of samples that lose a random subset of their contrasts (missing ones zero, "
                            "plus four presence-flag channels), so that the model serves any set of contrasts; cases "
                            "may lack contrasts (default 0.5)")
        parser.add_argument("--site-subsets", action="store_true",
                            help="half of the contrast drops keep a set real sites often have (FLAIR; T1+FLAIR; "
                            "T1CE+FLAIR; T1CE+T2) instead of any subset")
        parser.add_argument("--contrast-curves", type=float, default=0.0, metavar="P",
                            help="with probability P per image, a random monotone intensity curve (the order of the "
                            "tissues kept, their contrast changed), so that the phantoms' contrast ratios stop being "
                            "a cue (default 0: off)")
        parser.add_argument("--presence-flags", action=argparse.BooleanOptionalAction, default=True,
                            help="train with presence flags and contrast dropout, for any set of contrasts (default); "
                            "--no-presence-flags: the four contrasts only, every case needs all four (bundles before)")
        parser.add_argument("--widths", type=_widths, help="stage widths, e.g. 16,32,64,128 (the cascade's stage 1; "
                            "for r2unet the first is the base width and the count sets the depth)")
        if component == "cascade":
            parser.add_argument("--stage1-steps", type=int, help="steps of stage 1 (default: --steps)")
            parser.add_argument("--stage2-widths", type=_widths, help="stage 2's widths, e.g. 16,32,64")
        parser.set_defaults(run=_train, component=component)
