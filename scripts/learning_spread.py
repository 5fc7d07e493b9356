#!/usr/bin/env python
"""How far the numbers of the tests that assert learning move with the machine and the seed.

Runs every such test over the grid {torch threads 1, 2} x {the CPU's own kernels, kernels limited
to AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)} x {seeds}, collects the numbers each
asserts on (conftest.py's `measured` fixture writes them to SAMBA_MEASUREMENTS) and prints, per
number, its value under every configuration, its spread (max - min), and each test's time.
A threshold belongs at least three times the spread away from the values it measures.

    .venv/bin/python scripts/learning_spread.py [--seeds 0 1 2] [--threads 1 2] [--out DIR] [TEST ...]

The self-tests of SAMBA Segment and R2U-Net Segment run committed bundles on fixed phantoms (no
seed in them): they run at the first seed only. CPU-heavy: about 5 minutes per configuration on
2 cores; the whole default grid of 12 configurations about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEARNING_TESTS = [
    "Testing/test_module_selftests.py::test_module_self_test_passes[LoRATrainer]",
    "Testing/test_lora_training.py::test_training_raises_validation_dice_and_the_adapter_reproduces_it",
    "Testing/test_lora_unet.py::test_training_lowers_the_loss_raises_dice_and_stores_only_lora_weights",
    "Testing/test_r2unet_models.py::test_r2attunet_learns_discs",
    "Testing/test_r2unet_models.py::test_unet3d_learns_balls",
    "Testing/test_r2unet_training.py::test_unet_learns_the_tiny_tumours",
    "Testing/test_sam_training.py::test_small_sam_learns_box_prompted_segmentation",
    "Testing/test_sam_training.py::test_samba_mc_training_learns_three_regions_and_keeps_the_binary_token",
    "Testing/test_voting.py::test_learns_to_fuse_noisy_votes_into_sub_regions",
]
SEEDLESS_TESTS = [  # inference on committed bundles and fixed phantoms
    "Testing/test_module_selftests.py::test_module_self_test_passes[SAMBASegment]",
    "Testing/test_module_selftests.py::test_module_self_test_passes[R2UNetSegment]",
]
KERNELS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def run_config(tests: list[str], seed: int, threads: int, kernels: str, measurements: Path, log: Path) -> dict:
    """One pytest run; returns {test id: seconds} from --durations."""
    env = dict(os.environ, YOLO_OFFLINE="true", SAMBA_TEST_SEED=str(seed), SAMBA_TEST_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), SAMBA_MEASUREMENTS=str(measurements),
               **KERNELS[kernels])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0",
               *tests]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    seconds = {}
    for line in result.stdout.splitlines():  # "12.34s call     Testing/x.py::test"
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith("s") and parts[1] in ("call", "setup", "teardown"):
            try:
                seconds[parts[2]] = seconds.get(parts[2], 0.0) + float(parts[0][:-1])
            except ValueError:
                pass
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
    print(f"seed {seed} threads {threads} kernels {kernels}: {tail} ({time.perf_counter() - started:.0f} s)", flush=True)
    return seconds


def report(measurements: Path, times: dict) -> None:
    values = defaultdict(dict)  # (test, name) -> {config: value}
    for line in measurements.read_text().splitlines():
        entry = json.loads(line)
        config = f"t{entry['config_threads']}/{entry['config_kernels']}/s{entry['seed']}"
        values[(entry["test"], entry["name"])][config] = entry["value"]
    for (test, name), by_config in sorted(values.items()):
        numbers = list(by_config.values())
        spent = times.get(test, [])
        timing = f", {min(spent):.0f}-{max(spent):.0f} s a run" if spent else ""
        print(f"\n{test}  {name}: min {min(numbers):.3f} max {max(numbers):.3f} spread {max(numbers) - min(numbers):.3f}{timing}")
        print("   " + "  ".join(f"{config} {value:.3f}" for config, value in sorted(by_config.items())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="pytest ids (default: every test that asserts learning)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--out", type=Path, default=REPO / "out" / "learning_spread")
    parser.add_argument("--report-only", action="store_true", help="print the table of an earlier run in --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    measurements = args.out / "measurements.jsonl"
    times_file = args.out / "times.json"
    if not args.report_only:
        measurements.unlink(missing_ok=True)
        times = defaultdict(list)
        for threads in args.threads:
            for kernels in args.kernels:
                for index, seed in enumerate(args.seeds):
                    tests = args.tests or (LEARNING_TESTS + (SEEDLESS_TESTS if index == 0 else []))
                    part = args.out / "part.jsonl"
                    part.unlink(missing_ok=True)
                    spent = run_config(tests, seed, threads, kernels, part,
                                       args.out / f"pytest-t{threads}-{kernels}-s{seed}.log")
                    with measurements.open("a") as stream:  # the configuration asked for, next to what torch reports
                        for line in part.read_text().splitlines() if part.exists() else []:
                            stream.write(json.dumps({**json.loads(line), "config_threads": threads,
                                                     "config_kernels": kernels}) + "\n")
                    for test, seconds in spent.items():
                        times[test].append(seconds)
        times_file.write_text(json.dumps(times))
    report(measurements, json.loads(times_file.read_text()) if times_file.exists() else {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
