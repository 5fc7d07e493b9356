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
from SAMBACore.bundle_names import DEFAULT_BUNDLE, SMALL_BUNDLE
from SAMBACore.errors import BridgeError, BundleError
from SAMBACore.inputs import InputError
from SAMBACore.sample_data import DEMO_SEED


def _phantom(args) -> int:
    from SAMBACore.phantom import write_cases

    def report(index, total, path):
        print(f"[{index + 1}/{total}] {path}", flush=True)

    started = time.perf_counter()
    write_cases(args.out_dir, args.n, seed=args.seed, lowres=args.lowres, naming=args.naming, progress=report,
                randomise=args.randomise)
    print(f"Wrote {args.n} phantom case(s) to {args.out_dir} in {time.perf_counter() - started:.1f} s.")
    return 0


def _demo(args) -> int:
    """Phantom case -> Slicer storage nodes -> SAMBA with the demo bundle -> .seg.nrrd -> Dice and a preview
    picture, timed."""
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
    print(f"Segmenting with SAMBA (bundle {args.bundle}, the 3D U-Net's box) ...", flush=True)
    request = core.prepare(nodes, method="samba", bundle=args.bundle, prompt="cascade", device=choose_device(args.device))
    result = core.compute(request, lambda fraction, message: print(f"  [{fraction:4.0%}] {message}", flush=True))
    seconds.update({f"SAMBA {name}": value for name, value in result.seconds.items()})
    clock[0] = time.perf_counter()
    segmentation = core.finish(scene, result, nodes["t1"], name="Tumour segmentation").segmentation
    out_path = bridge.save_segmentation(segmentation, out_dir / f"{case_dir.name}.seg.nrrd")
    stage("write .seg.nrrd")
    truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(scene, files["seg"])))
    scores = metrics.region_metrics(result.labels, truth, tuple(reversed(nodes["t1"].GetSpacing())))

    preview = None
    if not args.no_preview:  # a picture of the result beside the truth: what a newcomer looks at first
        from SAMBACore.preview import preview_case

        clock[0] = time.perf_counter()
        images = {key: bridge.array_from_volume(nodes[key]) for key in ("flair", "t1ce")}
        note = "Dice against the truth: " + ", ".join(f"{r} {v['dice']:.3f}" for r, v in scores.items())
        preview = preview_case(out_dir / "preview.png", images, result.labels, bridge.ijk_to_ras(nodes["t1"]),
                               truth=truth, title=f"SAMBA ({args.bundle}, the 3D U-Net's box, core {request.core}) on phantom {case_dir.name}",
                               note=note)
        stage("preview")
    print(f"\nCase: {case_dir}\nSegmentation: {out_path} (segments NETC, SNFH, ET)")
    print("Region  Dice   HD95 (mm)")
    for region, values in scores.items():
        print(f"{region:<6}  {values['dice']:.3f}  {values['hd95']:.1f}")
    print("Time per stage: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))
    if args.json:
        print(json.dumps({"case": str(case_dir), "segmentation": str(out_path), "preview": preview and str(preview),
                          "metrics": scores, "seconds": seconds}))
    return 0


def _registrars():
    """Each module's Lib package owns its subcommands (imports there are lazy)."""
    from LoRATrainerLib.commands import register as lora
    from R2UNetSegmentLib.commands import register as r2unet
    from SAMBASegmentLib.commands import register as samba

    return samba, r2unet, lora


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
    phantom.add_argument("--randomise", nargs="?", const="v2", choices=("v2", "v3", "v4"), default=False, metavar="VERSION",
                         help="domain-randomised cases (SynthSeg-style): random anatomy deformation, ventricle size and "
                              "mass effect; 1-3 irregular tumours, 1-150 mL, with or without necrosis, enhancement or "
                              "edema; random tissue intensities in physiological order, gamma, bias, noise; 1-7 mm "
                              "slices along any axis, blur, ghosting; int16, float or z-scored values (--lowres ignored). "
                              "VERSION v2 (the default) or v3: the same cases with enhancement down to 1.15x brain on "
                              "T1CE, necrosis that may look like edema except on T1CE, non-enhancing tumour darker on "
                              "T1 and brighter on T2 than edema; v4: v3's cases with what is not tumour but looks like it (periventricular "
                              "and white-matter FLAIR hyperintensities, enhancing surface vessels and choroid plexus)")
    phantom.set_defaults(run=_phantom)

    demo = commands.add_parser("demo", help="make a phantom case, segment it with SAMBA, write the .seg.nrrd and score it")
    demo.add_argument("-o", "--out-dir", default=Path("out/demo"), type=Path, help="where to write (default out/demo)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    demo.add_argument("--lowres", action="store_true", help="use a low-field-like phantom")
    demo.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle folder or bundled name (default {DEFAULT_BUNDLE}; "
                      f"{SMALL_BUNDLE}: the small phantom-trained one, seconds instead of a minute)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--no-preview", action="store_true", help="do not write OUT_DIR/preview.png (slices through "
                      "the tumour with the result's and the truth's outlines)")
    demo.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train a model (SAMBA components, U-Nets, LoRA adapters) from BraTS case folders")
    bench = commands.add_parser("bench", help="measure speed and memory side by side (ratios), as JSON with --json")
    train_commands = train.add_subparsers(dest="component", required=True, metavar="MODEL")
    bench_commands = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for register in _registrars():
        register(commands, train_commands, bench_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        print("slicer-samba: N must be at least 1.", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (InputError, ModalityError, BridgeError, BundleError, FileNotFoundError, ValueError, MemoryError) as error:
        print(f"slicer-samba {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slicer-samba {args.command}: cancelled.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
