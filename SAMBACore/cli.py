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
    """Phantom case -> Slicer storage nodes -> segmentation -> .seg.nrrd -> Dice, timing each stage."""
    from SAMBACore import bridge, metrics
    from SAMBACore.brats import find_case_files, to_internal_labels
    from SAMBACore.phantom import write_case
    from SAMBASegmentLib.logic import SAMBASegmentCore

    out_dir = Path(args.out_dir)
    times = {}

    def stage(name):
        times[name] = time.perf_counter()
        print(f"- {name} ...", flush=True)

    stage("make a phantom case (MNI152 brain + synthetic glioma)")
    case_dir = write_case(out_dir, f"PHANTOM-{args.seed:05d}-000", seed=args.seed, lowres=args.lowres)
    stage("load the four volumes through Slicer's storage nodes")
    scene = bridge.get_scene()
    files = find_case_files(case_dir, need_seg=True)
    nodes = {key: bridge.load_volume(scene, path) for key, path in files.items() if key != "seg"}
    stage("segment (threshold baseline: FLAIR and T1CE rules)")
    segmentation = SAMBASegmentCore().process(scene, nodes, name="Tumour segmentation")
    stage("write the Slicer segmentation")
    out_path = bridge.save_segmentation(segmentation, out_dir / f"{case_dir.name}.seg.nrrd")
    stage("score against the phantom's ground truth")
    truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(scene, files["seg"])))
    spacing = tuple(reversed(nodes["t1"].GetSpacing()))
    predicted = bridge.labels_from_segmentation(segmentation, nodes["t1"], {"NETC": 1, "SNFH": 2, "ET": 3})
    scores = metrics.region_metrics(predicted, truth, spacing)
    times["end"] = time.perf_counter()

    names = list(times)
    durations = {names[i]: times[names[i + 1]] - times[names[i]] for i in range(len(names) - 1)}
    print(f"\nCase: {case_dir}\nSegmentation: {out_path}")
    print("Region  Dice   HD95 (mm)")
    for region, values in scores.items():
        print(f"{region:<6}  {values['dice']:.3f}  {values['hd95']:.1f}")
    print("Time per stage: " + ", ".join(f"{name.split(' (')[0]} {seconds:.1f} s" for name, seconds in durations.items()))
    if args.json:
        print(json.dumps({"case": str(case_dir), "segmentation": str(out_path), "metrics": scores, "seconds": durations}))
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

    demo = commands.add_parser("demo", help="make a phantom case, segment it, write the .seg.nrrd and score it")
    demo.add_argument("-o", "--out-dir", default=Path("out/demo"), type=Path, help="where to write (default out/demo)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    demo.add_argument("--lowres", action="store_true", help="use a low-field-like phantom")
    demo.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        print("slicer-samba: N must be at least 1.", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (InputError, ModalityError, BridgeError, FileNotFoundError, ValueError) as error:
        print(f"slicer-samba {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slicer-samba {args.command}: cancelled.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
