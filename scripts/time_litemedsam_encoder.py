"""Times LiteMedSAM's TinyViT encoder on one 256 x 256 slice at a time: its input in the default
(contiguous) memory order, channels-last, and channels-last with the BatchNorms folded into the
convolutions (what sam_runner.encode_slices runs on the CPU), in one process, rounds interleaved so
that a change in the machine's load hits all alike.
Usage: .venv/bin/python scripts/time_litemedsam_encoder.py [ROUNDS]"""

import sys
import time

import torch

from SAMBASegmentLib.fused_encoder import inference_encoder
from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
encoder = load_samba_models(resolve_bundle("litemedsam-samba")).sam.image_encoder
folded = inference_encoder(encoder)
torch.manual_seed(0)
slices = [torch.rand(1, 3, 256, 256) for _ in range(6)]
variants = {"default": lambda x: encoder(x),
            "channels-last input": lambda x: encoder(x.contiguous(memory_format=torch.channels_last)),
            "channels-last, BatchNorms folded": lambda x: folded(x.contiguous(memory_format=torch.channels_last))}
seconds = {name: [] for name in variants}
with torch.inference_mode():
    reference = [encoder(x) for x in slices]
    for name, run in variants.items():
        difference = max((run(x) - r).abs().max().item() for x, r in zip(slices, reference))
        print(f"{name}: embeddings within {difference:.1e} of the default", flush=True)
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            for x in slices:
                run(x)
            seconds[name].append((time.perf_counter() - started) / len(slices))
print(f"torch threads {torch.get_num_threads()}, {rounds} rounds of {len(slices)} slices")
fastest = min(seconds["default"])
for name, values in seconds.items():
    print(f"{name}: {' '.join(f'{v:.3f}' for v in values)} s a slice; best {fastest / min(values):.2f}x the default's")
