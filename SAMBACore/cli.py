"""`slicer-samba`: the terminal face of the extension, for batch work and for CI.

Each subcommand is a thin call into the same logic the Slicer modules use, on a headless
MRML scene. Bad input ends with one line saying what is wrong and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from SAMBACore.brats import ModalityError
from SAMBACore.bridge import BridgeError
from SAMBACore.bundles import BundleError
from SAMBACore.inputs import InputError

DEMO_SEED = 20261  # phantom seeds from 20000 up are never used for training


def _phantom(args) -> int:
    from SAMBACore.phantom import write_cases

    def report(index, total, path):
        print(f"[{index + 1}/{total}] {path}", flush=True)

    started = time.perf_counter()
    write_cases(args.out_dir, args.n, seed=args.seed, lowres=args.lowres, naming=args.naming, progress=report)
    print(f"Wrote {args.n} phantom case(s) to {args.out_dir} in {time.perf_counter() - started:.1f} s.")
    return 0


def _demo(args) -> int:
    """Phantom case -> Slicer storage nodes -> SAMBA with the demo bundle -> .seg.nrrd -> Dice, timed."""
    from SAMBACore import bridge, metrics
    from SAMBACore.brats import MODALITIES, find_case_files, to_internal_labels
    from SAMBACore.device import choose_device
    from SAMBACore.phantom import write_case
    from SAMBASegmentLib.logic import SAMBASegmentCore

    out_dir = Path(args.out_dir)
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def stage(name):
        now = time.perf_counter()
        seconds[name] = now - clock[0]
        clock[0] = now

    print(f"Making a phantom case (MNI152 brain, synthetic glioma, seed {args.seed}) ...", flush=True)
    case_dir = write_case(out_dir, f"PHANTOM-{args.seed:05d}-000", seed=args.seed, lowres=args.lowres)
    stage("phantom")
    scene = bridge.get_scene()
    files = find_case_files(case_dir, need_seg=True)
    nodes = {key: bridge.load_volume(scene, files[key]) for key in MODALITIES}
    stage("load volumes")
    core = SAMBASegmentCore()
    core.models(args.bundle, choose_device(args.device))
    stage("load models")
    print(f"Segmenting with SAMBA (bundle {args.bundle}, YOLO boxes) ...", flush=True)
    request = core.prepare(nodes, method="samba", bundle=args.bundle, prompt="yolo", device=choose_device(args.device))
    result = core.compute(request, lambda fraction, message: print(f"  [{fraction:4.0%}] {message}", flush=True))
    seconds.update({f"SAMBA {name}": value for name, value in result.seconds.items()})
    clock[0] = time.perf_counter()
    segmentation, _ = core.finish(scene, result, nodes["t1"], name="Tumour segmentation")
    out_path = bridge.save_segmentation(segmentation, out_dir / f"{case_dir.name}.seg.nrrd")
    stage("write .seg.nrrd")
    truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(scene, files["seg"])))
    scores = metrics.region_metrics(result.labels, truth, tuple(reversed(nodes["t1"].GetSpacing())))

    print(f"\nCase: {case_dir}\nSegmentation: {out_path} (segments NETC, SNFH, ET)")
    print("Region  Dice   HD95 (mm)")
    for region, values in scores.items():
        print(f"{region:<6}  {values['dice']:.3f}  {values['hd95']:.1f}")
    print("Time per stage: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))
    if args.json:
        print(json.dumps({"case": str(case_dir), "segmentation": str(out_path), "metrics": scores, "seconds": seconds}))
    return 0


def _roi_ijk(reference, values: str):
    """--roi R,A,S,R,A,S (two opposite corners in mm) -> inclusive (k, j, i) voxel corners."""
    from SAMBACore import bridge

    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 6:
        raise ValueError(f"--roi wants six numbers R,A,S,R,A,S (two corners in mm), got {values!r}.")
    return bridge.ras_box_to_voxels(reference, numbers[:3], numbers[3:])


def _segment(args) -> int:
    from SAMBACore import bridge, metrics
    from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, find_case_files
    from SAMBACore.device import choose_device
    from SAMBASegmentLib.logic import arrays_from_nodes
    from SAMBASegmentLib.pipeline import run_samba
    from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

    if not str(args.output).endswith(".seg.nrrd"):
        raise ValueError(f"{args.output}: the output must end in .seg.nrrd.")
    device = choose_device(args.device)
    bundle = resolve_bundle(args.bundle)
    scene = bridge.get_scene()
    files = find_case_files(args.case_dir)
    nodes = {m: bridge.load_volume(scene, files[m]) for m in MODALITIES}
    images = arrays_from_nodes(nodes)
    roi = _roi_ijk(nodes["t1"], args.roi) if args.roi else None
    prompt = args.prompt or ("roi" if roi else "yolo")
    started = time.perf_counter()
    models = load_samba_models(bundle, device)
    load_seconds = time.perf_counter() - started

    def report(fraction, message):
        print(f"[{fraction:4.0%}] {message}", flush=True)

    result = run_samba(images, models, prompt=prompt, mode=args.mode, roi=roi, device=device, progress=report)
    segmentation = bridge.segmentation_from_labels(scene, result.labels, nodes["t1"], LABEL_SEGMENTS, "Tumour segmentation")
    out = bridge.save_segmentation(segmentation, args.output)
    print(f"Segmentation: {out}")
    if args.agreement:
        agreement = bridge.volume_from_array(scene, result.agreement, bridge.ijk_to_ras(nodes["t1"]), "SAM agreement")
        print(f"Agreement map: {bridge.save_volume(agreement, args.agreement)}")
    if not result.tumour_found:
        print("No tumour found: the segmentation is empty. Try an ROI prompt (--roi) around the lesion.")
    volumes = metrics.volumes_ml(result.labels, tuple(reversed(nodes["t1"].GetSpacing())))
    print("Volumes (mL): " + ", ".join(f"{name} {ml:.1f}" for name, ml in volumes.items()))
    seconds = {"load models": load_seconds, **result.seconds}
    print("Time per stage: " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
    return 0


def _train(args) -> int:
    from SAMBACore.device import choose_device
    from SAMBASegmentLib import training

    device = choose_device(args.device)
    command = "slicer-samba " + " ".join(sys.argv[1:])
    common = dict(seed=args.seed, device=device, command=command)
    if args.component == "yolo":
        training.train_yolo(args.data_dir, args.output, epochs=args.epochs, **common)
    elif args.component == "sam":
        training.train_sam(args.data_dir, args.output, steps=args.steps, train_encoder=not args.decoder_only,
                           multimask=args.mode == "samba-mc", **common)
    else:
        training.train_voting(args.data_dir, args.output, steps=args.steps, **common)
    print(f"Bundle updated: {args.output} ({args.component})")
    return 0


def _evaluate(args) -> int:
    from SAMBACore.device import choose_device
    from SAMBASegmentLib.evaluation import evaluate
    from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

    device = choose_device(args.device)
    models = load_samba_models(resolve_bundle(args.bundle), device)
    report = evaluate(models, args.data_dir, prompt=args.prompt, mode=args.mode, device=device)
    print(f"Mean over {report['cases']} case(s), {args.prompt} prompts, {args.mode}: "
          + ", ".join(f"{r} Dice {v['dice']:.3f} HD95 {v['hd95']:.1f} mm" for r, v in report["mean"].items())
          + f"; {report['mean_seconds']:.0f} s per case")
    if args.record:
        from SAMBACore.bundles import record_metrics

        summary = {k: report[k] for k in ("prompt", "mode", "cases", "mean", "mean_seconds")}
        summary["data"] = str(args.data_dir)
        record_metrics(resolve_bundle(args.bundle), args.record, summary)
        print(f"Recorded as metrics '{args.record}' in the bundle's manifest.")
    if args.json:
        print(json.dumps(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slicer-samba",
        description="Brain-tumour segmentation for 3D Slicer, from the terminal (SlicerSAMBA).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phantom = commands.add_parser("phantom", help="write BraTS-like phantom cases with known ground truth")
    phantom.add_argument("out_dir", type=Path, help="folder to write the case folders into")
    phantom.add_argument("n", type=int, help="number of cases")
    phantom.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i (default 0)")
    phantom.add_argument("--lowres", action="store_true", help="mimic low-field scans: thick slices, more noise")
    phantom.add_argument("--naming", choices=("2023", "2021"), default="2023", help="BraTS file naming and labels")
    phantom.set_defaults(run=_phantom)

    demo = commands.add_parser("demo", help="make a phantom case, segment it with SAMBA, write the .seg.nrrd and score it")
    demo.add_argument("-o", "--out-dir", default=Path("out/demo"), type=Path, help="where to write (default out/demo)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    demo.add_argument("--lowres", action="store_true", help="use a low-field-like phantom")
    demo.add_argument("--bundle", default="phantom-demo", help="bundle folder or bundled name (default phantom-demo)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    demo.set_defaults(run=_demo)

    segment = commands.add_parser("segment", help="segment a BraTS case folder with SAMBA into a .seg.nrrd")
    segment.add_argument("case_dir", type=Path, help="folder with the four images (BraTS 2021 or 2023 naming)")
    segment.add_argument("-o", "--output", type=Path, required=True, help="the .seg.nrrd to write")
    segment.add_argument("--bundle", default="phantom-demo", help="bundle folder or bundled name (default phantom-demo)")
    segment.add_argument("--roi", help="box around the tumour, two opposite corners in RAS mm: --roi=R,A,S,R,A,S (the = keeps a leading minus sign from reading as an option)")
    segment.add_argument("--prompt", choices=("yolo", "roi"), help="box source (default: roi if --roi, else yolo)")
    segment.add_argument("--mode", choices=("samba", "samba-mc"), default="samba", help="binary SAM + voting, or multi-class SAM")
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    segment.add_argument("--agreement", type=Path, help="also write the per-voxel SAM agreement map (.nrrd or .nii.gz)")
    segment.set_defaults(run=_segment)

    train = commands.add_parser("train", help="train one SAMBA component into a bundle from BraTS case folders")
    train.add_argument("component", choices=("yolo", "sam", "voting"), help="what to train")
    train.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
    train.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create or update")
    train.add_argument("--epochs", type=int, default=30, help="YOLO epochs (default 30)")
    train.add_argument("--steps", type=int, default=2000, help="SAM or voting optimiser steps (default 2000)")
    train.add_argument("--decoder-only", action="store_true", help="SAM: train only the mask decoder (as the paper)")
    train.add_argument("--mode", choices=("samba", "samba-mc"), default="samba", help="SAM: binary or three-class")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="score a bundle on labelled BraTS cases (Dice, HD95 per region)")
    evaluate.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
    evaluate.add_argument("--bundle", default="phantom-demo", help="bundle folder or bundled name (default phantom-demo)")
    evaluate.add_argument("--prompt", choices=("yolo", "roi"), default="yolo",
                          help="yolo, or roi: the true tumour box grown by 5 voxels, standing in for a hand-drawn box")
    evaluate.add_argument("--mode", choices=("samba", "samba-mc"), default="samba")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--json", action="store_true", help="also print the full report as one JSON line")
    evaluate.add_argument("--record", metavar="NAME", help="store the means in the bundle's manifest under metrics.NAME")
    evaluate.set_defaults(run=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        print("slicer-samba: N must be at least 1.", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (InputError, ModalityError, BridgeError, BundleError, FileNotFoundError, ValueError) as error:
        print(f"slicer-samba {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slicer-samba {args.command}: cancelled.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
