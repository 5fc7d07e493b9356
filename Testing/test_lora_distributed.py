"""`slicer-samba train lora` under torchrun: two CPU processes (gloo), DistributedDataParallel,
for SAM's image encoder and for a U-Net."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from SAMBACore.phantom import write_case
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle
from test_lora_unet import make_bundle
from test_r2unet_training import write_tiny_cases

TINY = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
        "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}

# Runs the real CLI on each rank, watching two things from outside: every rank's LoRA weights
# at each validation (the last one is after training), and who writes the adapter. argv[1] names
# the trainer module whose validation_dice(model, cases, world) is watched.
RANK_PROBE = '''
import importlib, os, sys
from pathlib import Path
from safetensors.torch import save_file
from SAMBACore import adapters
from SAMBACore import cli

trainer = importlib.import_module(sys.argv[1])
probe, rank = Path(sys.argv[2]), os.environ["RANK"]
measure, write = trainer.validation_dice, adapters.save_adapter

def validation_dice(model, cases, world):
    adapted = getattr(model, "image_encoder", model)  # SAM's LoRA is in its encoder
    save_file(adapters.lora_state(adapted), str(probe / f"rank{rank}.safetensors"))
    return measure(model, cases, world)

def save_adapter(*args, **kwargs):
    with open(probe / "writers.txt", "a") as f:
        f.write(rank + "\\n")
    return write(*args, **kwargs)

trainer.validation_dice, adapters.save_adapter = validation_dice, save_adapter
sys.exit(cli.main(sys.argv[3:]))
'''


def train_on_two_ranks(tmp_path, trainer: str, cli_args: list[str]) -> dict:
    """Run `slicer-samba train lora ...` on two gloo ranks; check what every run must show and
    return adapter.json."""
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "adapter"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "probe.py"), trainer, str(probe), "train", "lora", *cli_args, "--device", "cpu", "-o", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert (probe / "writers.txt").read_text() == "0\n"  # only rank 0 wrote, once
    assert result.stdout.count("Adapter written") == 1
    rank0, rank1 = load_file(str(probe / "rank0.safetensors")), load_file(str(probe / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    written = load_file(str(out / "adapter.safetensors"))
    assert written.keys() == rank0.keys() and all(torch.equal(written[k], rank0[k]) for k in rank0)
    assert any(v.abs().max() > 0 for k, v in written.items() if "lora_B" in k)  # B starts at zero: it trained

    info = json.loads((out / "adapter.json").read_text())
    assert info["training"]["world_size"] == 2
    return info


def test_sam_lora_on_two_gloo_ranks_ends_identical_and_writes_the_adapter_once(tmp_path):
    manifest = {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0", "intended_use": "tests",
                "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}}
    save_samba_bundle(tmp_path / "bundle", SambaModels(build_sam(TINY), None, None), {"sam": TINY}, manifest)
    write_case(tmp_path / "train", "PHANTOM-40310-000", seed=40310, lowres=True)
    write_case(tmp_path / "val", "PHANTOM-40311-000", seed=40311, lowres=True)

    info = train_on_two_ranks(tmp_path, "LoRATrainerLib.train_lora", [
        str(tmp_path / "train"), "--base", str(tmp_path / "bundle"), "--val", str(tmp_path / "val"), "--views", "axial",
        "--modalities", "flair,t1ce", "--epochs", "1", "--steps-per-epoch", "4", "--batch", "2", "--lr", "1e-2",
        "--val-slices", "16"])
    assert info["training"]["steps_per_epoch"] == 4
    assert info["training"]["modalities"] == ["flair", "t1ce"] and info["training"]["views"] == ["axial"]
    assert info["data"]["train_cases"] == ["PHANTOM-40310-000"]


def test_unet_lora_on_two_gloo_ranks_ends_identical_and_writes_the_adapter_once(tmp_path):
    make_bundle(tmp_path / "bundle", "tiny-unets", components=("unet",))
    write_tiny_cases(tmp_path / "train", range(2))
    write_tiny_cases(tmp_path / "val", range(2, 4))  # two validation cases: one per rank

    info = train_on_two_ranks(tmp_path, "LoRATrainerLib.train_unet_lora", [
        str(tmp_path / "train"), "--base", str(tmp_path / "bundle"), "--component", "unet", "--val", str(tmp_path / "val"),
        "--epochs", "1", "--steps-per-epoch", "3", "--batch", "2", "--patch", "16", "--lr", "1e-2"])
    assert info["data"]["val_cases"] == ["TINY-00002-000", "TINY-00003-000"]
    assert info["training"]["component"] == "unet"

    # The validation Dice the two ranks summed is the one a single process measures on all cases.
    from LoRATrainerLib.train_unet_lora import _prepared, validation_dice
    from LoRATrainerLib.training_data import cases_from_folder
    from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models

    adapted = load_r2unet_models(tmp_path / "bundle", adapter=tmp_path / "adapter").unet
    val = [_prepared(c, None, "cpu", False) for c in cases_from_folder(tmp_path / "val", log=lambda m: None)]
    assert abs(validation_dice(adapted, val) - info["validation"]["final"]) < 1e-6
