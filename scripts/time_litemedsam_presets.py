"""litemedsam-samba on every labelled case of a folder, for each prompt and preset: Dice per region and
seconds per case, one JSON line per run and a table at the end. Made to choose what `--preset auto`
means on a GPU (pipeline.choose_preset; docs/results.md); with --device cpu it gives the same Dice, slowly.

A warm-up run on the first case comes first (CUDA start, cuDNN's choice of kernels, the cascade's first
call) and is reported apart; every later run is timed alone, with the device synchronised.
Usage: .venv/bin/python scripts/time_litemedsam_presets.py DATA_DIR [--device cuda]
       [--prompts cascade,roi] [--presets fast,balanced,all]"""

import argparse
import json
import time

import numpy as np
import torch

from SAMBACore import metrics
from SAMBACore.brats import find_training_cases, internal_labels_of, read_case
from SAMBASegmentLib.evaluation import truth_roi
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle


def load_cases(data_dir):
    """[(case name, images, truth, spacing)] of every labelled case in data_dir."""
    cases, _ = find_training_cases(data_dir, allow_missing=True)
    return [(files["seg"].parent.name, *read_case(files)) for files in cases]


def run_once(models, images, truth, prompt, preset, device):
    """(WT / TC / ET Dice, seconds): one case from scratch (a new embedding cache), as a first Apply."""
    roi = truth_roi(truth, 5) if prompt == "roi" else None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = run_samba(images, models, prompt=prompt, roi=roi, cache=EmbeddingCache(), device=device, preset=preset)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    scores = metrics.region_metrics(internal_labels_of(result.labels, result.regions), truth)
    return {region: round(scores[region]["dice"], 4) for region in ("WT", "TC", "ET")}, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", default="cascade,roi")
    parser.add_argument("--presets", default="fast,balanced,all")
    args = parser.parse_args(argv)
    models = load_samba_models(resolve_bundle("litemedsam-samba"), device=args.device)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}", flush=True)
    cases = load_cases(args.data_dir)
    name, images, truth, _ = cases[0]
    _, seconds = run_once(models, images, truth, "cascade", "fast", args.device)
    print(json.dumps({"warm_up": name, "prompt": "cascade", "preset": "fast", "seconds": round(seconds, 2)}), flush=True)
    rows = []
    for prompt in args.prompts.split(","):
        for preset in args.presets.split(","):
            for name, images, truth, _ in cases:
                dice, seconds = run_once(models, images, truth, prompt, preset, args.device)
                rows.append({"case": name, "prompt": prompt, "preset": preset, "dice": dice, "seconds": round(seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'prompt':8} {'preset':9} " + " ".join(f"{n:>24}" for n, *_ in cases) + "   mean WT  mean s")
    for prompt in args.prompts.split(","):
        for preset in args.presets.split(","):
            mine = [r for r in rows if r["prompt"] == prompt and r["preset"] == preset]
            cells = " ".join(f"{r['dice']['WT']:.3f}/{r['dice']['TC']:.3f}/{r['dice']['ET']:.3f} {r['seconds']:5.1f}s"
                             for r in mine)
            print(f"{prompt:8} {preset:9} {cells}   {np.mean([r['dice']['WT'] for r in mine]):.3f}   "
                  f"{np.mean([r['seconds'] for r in mine]):.1f}")


if __name__ == "__main__":
    main()
