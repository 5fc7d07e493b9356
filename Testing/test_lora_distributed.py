"""`slicer-samba train lora` under torchrun: two CPU processes (gloo), DistributedDataParallel."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from SAMBACore.phantom import write_case
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle

TINY = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
        "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}

# Runs the real CLI on each rank, watching two things from outside: every rank's LoRA weights
# at each validation (the last one is after training), and who writes the adapter.
RANK_PROBE = '''
import os, sys
from pathlib import Path
from safetensors.torch import save_file
from LoRATrainerLib import train_lora as trainer
from SAMBACore import adapters
from SAMBACore import cli

probe, rank = Path(sys.argv[1]), os.environ["RANK"]
measure, write = trainer.validation_dice, adapters.save_adapter

def validation_dice(sam, samples, world):
    save_file(adapters.lora_state(sam.image_encoder), str(probe / f"rank{rank}.safetensors"))
    return measure(sam, samples, world)

def save_adapter(*args, **kwargs):
    with open(probe / "writers.txt", "a") as f:
        f.write(rank + "\\n")
    return write(*args, **kwargs)

trainer.validation_dice, adapters.save_adapter = validation_dice, save_adapter
sys.exit(cli.main(sys.argv[2:]))
'''


def test_two_gloo_ranks_end_identical_and_write_the_adapter_once(tmp_path):
    torch.manual_seed(0)
    manifest = {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0", "intended_use": "tests",
                "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}}
    save_samba_bundle(tmp_path / "bundle", SambaModels(build_sam(TINY), None, None), {"sam": TINY}, manifest)
    write_case(tmp_path / "train", "PHANTOM-40310-000", seed=40310, lowres=True)
    write_case(tmp_path / "val", "PHANTOM-40311-000", seed=40311, lowres=True)
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "adapter"

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "probe.py"), str(probe), "train", "lora", str(tmp_path / "train"), "--base", str(tmp_path / "bundle"),
         "--val", str(tmp_path / "val"), "--views", "axial", "--epochs", "1", "--steps-per-epoch", "4", "--batch", "2",
         "--lr", "1e-2", "--val-slices", "16", "--device", "cpu", "-o", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert (probe / "writers.txt").read_text() == "0\n"  # only rank 0 wrote, once
    assert result.stdout.count("Adapter written") == 1
    rank0, rank1 = load_file(str(probe / "rank0.safetensors")), load_file(str(probe / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    written = load_file(str(out / "adapter.safetensors"))
    assert all(torch.equal(written[k], rank0[k]) for k in rank0)
    assert any(v.abs().max() > 0 for k, v in written.items() if "lora_B" in k)  # B starts at zero: it trained

    info = json.loads((out / "adapter.json").read_text())
    assert info["training"]["world_size"] == 2 and info["training"]["steps_per_epoch"] == 4
    assert info["data"]["train_cases"] == ["PHANTOM-40310-000"]
