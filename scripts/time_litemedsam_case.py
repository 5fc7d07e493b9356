"""Times litemedsam-samba on one labelled case with a drawn ROI (the truth's box + 5 voxels), in one
process: the whole case with the default CPU preset, a second Apply with another ROI on the cached
embeddings, and SAM's naive per-slice loop (LiteMedSAM's own per-slice inference, the ROI's box on
every slice) on one stack, from which the paper's 12 stacks are extrapolated (said so in the output).
Usage: .venv/bin/python scripts/time_litemedsam_case.py CASE_DIR"""

import sys
import time

import numpy as np
import torch

from SAMBACore import metrics
from SAMBACore.brats import find_case_files, read_case
from SAMBASegmentLib.evaluation import truth_roi
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.prompts import boxes_from_roi
from SAMBASegmentLib.sam_runner import EmbeddingCache, naive_segment_stack
from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle
from SAMBASegmentLib.slices import normalise_slices, view_slices

images, truth, spacing = read_case(find_case_files(sys.argv[1], need_seg=True))
models = load_samba_models(resolve_bundle("litemedsam-samba"))
print(f"torch threads {torch.get_num_threads()}", flush=True)
roi = truth_roi(truth, 5)
cache = EmbeddingCache()
started = time.perf_counter()
first = run_samba(images, models, prompt="roi", roi=roi, cache=cache, volume_key="case")
whole = time.perf_counter() - started
print(f"whole case, preset {first.preset}: {whole:.1f} s ({cache.misses} slices encoded); "
      f"WT Dice {metrics.region_metrics(first.labels, truth, spacing)['WT']['dice']:.3f}", flush=True)
moved = (tuple(np.array(roi[0]) + 2), tuple(np.array(roi[1]) + 2))  # another, slightly shifted box
started = time.perf_counter()
run_samba(images, models, prompt="roi", roi=moved, cache=cache, volume_key="case")
print(f"second ROI on cached embeddings: {time.perf_counter() - started:.1f} s "
      f"({cache.misses} slices encoded in all)", flush=True)
boxes = boxes_from_roi(*roi, truth.shape, "axial")
stack = np.zeros(view_slices(images["flair"], "axial").shape + (3,), np.uint8)
stack[sorted(boxes)] = normalise_slices(view_slices(images["flair"], "axial")[sorted(boxes)])
started = time.perf_counter()
naive_segment_stack(models.sam, stack, boxes)
naive = time.perf_counter() - started
slices = {view: len(boxes_from_roi(*roi, truth.shape, view)) for view in ("axial", "coronal", "sagittal")}
per_slice = naive / len(boxes)
estimate = per_slice * 4 * sum(slices.values())
print(f"naive loop, FLAIR axial: {naive:.1f} s for {len(boxes)} slices ({per_slice:.2f} s each); the paper's 12 "
      f"stacks ({slices}, x4 contrasts) would take about {estimate:.0f} s (extrapolated, not run): "
      f"{estimate / whole:.1f}x the default", flush=True)
