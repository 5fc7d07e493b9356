"""`train lora-extract`: per-layer LoRA ranks by SVD energy from a full fine-tune or a high-rank adapter."""

import json

import pytest
import torch

from SAMBACore.adapters import LoraSpec, add_lora, apply_adapter, base_record, read_adapter, save_adapter
from LoRATrainerLib.extract import build_extracted, component_model, extract_lora, layer_spectra, output_check, probe_inputs
from SAMBACore import cli
from SAMBACore.bundles import load_bundle, save_bundle

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
MANIFEST = {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0", "intended_use": "tests",
            "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def write_bundle(path, component, kind, config, state):
    manifest = {**MANIFEST, "name": path.name, "components": {component: {"kind": kind, "config": config}}}
    return save_bundle(path, manifest, {component: state})


def low_rank_change(state, names, rank, scale, generator):
    """A copy of `state` with a rank-`rank` change added to each named weight (a conv weight as a matrix)."""
    tuned = dict(state)
    for name in names:
        weight = state[name]
        rows = weight.shape[0]
        cols = weight[0].numel()
        delta = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
        tuned[name] = weight + scale * weight.std() * delta.reshape(weight.shape) / rank
    return tuned


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory, reseed):
    """A tiny SAM base bundle and a 'full fine-tune' of it whose only change is rank 2 on each qkv."""
    from SAMBASegmentLib.sam_model import build_sam

    folder = tmp_path_factory.mktemp("sam")
    reseed()  # conftest.py
    state = {k: v.detach().clone() for k, v in build_sam(TINY_SAM).state_dict().items()}
    qkv = [k for k in state if k.endswith("attn.qkv.weight")]
    tuned = low_rank_change(state, qkv, 2, 0.3, torch.Generator().manual_seed(1))
    return (write_bundle(folder / "base", "sam", "sam", TINY_SAM, state).path,
            write_bundle(folder / "tuned", "sam", "sam", TINY_SAM, tuned).path)


def encoder_outputs(model, inputs):
    with torch.no_grad():
        return model.image_encoder(inputs)


def test_rank_two_change_is_found_and_reproduced(sam_pair, tmp_path):
    base, tuned = sam_pair
    report = extract_lora(tuned, base, tmp_path / "adapter", energy=0.999, plot=tmp_path / "energy.png", log=lambda line: None)
    assert [v["rank"] for v in report["layers"].values()] == [2, 2]
    assert all(v["energy"] >= 0.999 for v in report["layers"].values())
    # A is r x 32, B is 96 x r on each of the two qkv layers.
    assert report["lora_parameters"] == 2 * 2 * (32 + 96)
    assert report["check"]["relative_error"] < 1e-5 and report["check"]["within_tolerance"]
    assert report["change_outside_targets"] == 0.0
    assert (tmp_path / "energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The saved adapter, loaded onto the base bundle (per-layer ranks and all), reproduces the fine-tune.
    info, _ = read_adapter(tmp_path / "adapter")
    assert info["lora"].ranks == {"blocks.0.attn.qkv": 2, "blocks.1.attn.qkv": 2}
    assert info["extraction"]["layers"]["blocks.1.attn.qkv"]["rank"] == 2
    base_bundle = load_bundle(base)
    adapted = apply_adapter(component_model(base_bundle, "sam")[0], tmp_path / "adapter", base_bundle)
    reference, _ = component_model(load_bundle(tuned), "sam")
    inputs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    got, want = encoder_outputs(adapted, inputs), encoder_outputs(reference, inputs)
    assert torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want) < 1e-5


def test_lower_energy_gives_smaller_ranks_and_larger_error(tmp_path):
    """A change with a spread-out spectrum: ranks grow and the error shrinks with the energy kept;
    at energy 1.0 (full rank) the adapter is exact to float precision."""
    from SAMBASegmentLib.sam_model import build_sam

    state = {k: v.detach().clone() for k, v in build_sam(TINY_SAM).state_dict().items()}
    qkv = [k for k in state if k.endswith("attn.qkv.weight")]
    tuned = low_rank_change(state, qkv, 32, 0.3, torch.Generator().manual_seed(2))
    base_bundle = write_bundle(tmp_path / "base", "sam", "sam", TINY_SAM, state)
    tuned_bundle = write_bundle(tmp_path / "tuned", "sam", "sam", TINY_SAM, tuned)
    base_model, tuned_model = component_model(base_bundle, "sam")[0], component_model(tuned_bundle, "sam")[0]
    layers = ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    spectra = layer_spectra(base_model.image_encoder, tuned_model.image_encoder, layers)
    inputs = probe_inputs(base_model.image_encoder)
    ranks, errors = [], []
    for energy in (0.3, 0.6, 0.9, 0.99, 1.0):
        adapted = component_model(base_bundle, "sam")[0].image_encoder
        _, chosen = build_extracted(adapted, spectra, energy)
        check = output_check(base_model.image_encoder, adapted, tuned_model.image_encoder, inputs)
        ranks.append([chosen[name] for name in layers])
        errors.append(check["relative_error"])
    assert all(a <= b for low, high in zip(ranks, ranks[1:]) for a, b in zip(low, high)), ranks
    assert ranks[0] < ranks[-2] and ranks[-1] == [32, 32], ranks
    assert all(e1 >= e2 for e1, e2 in zip(errors, errors[1:])) and errors[0] > 100 * errors[-1], errors
    assert errors[-1] < 1e-5, errors


def test_conv3d_unet(tmp_path):
    """Every Conv3d of a small 3D U-Net changed at rank 2 (weights read as out x (in * 27) matrices)."""
    from R2UNetSegmentLib.unet3d import UNet3D

    config = {"in_channels": 2, "out_channels": 2, "widths": [4, 8]}
    state = {k: v.detach().clone() for k, v in UNet3D(2, 2, (4, 8)).state_dict().items()}
    convs = [k for k in state if k.endswith(".weight") and state[k].dim() == 5 and "up." not in k]
    tuned = low_rank_change(state, convs, 2, 0.3, torch.Generator().manual_seed(3))
    base = write_bundle(tmp_path / "base", "unet", "unet3d", config, state).path
    finetuned = write_bundle(tmp_path / "tuned", "unet", "unet3d", config, tuned).path
    report = extract_lora(finetuned, base, tmp_path / "adapter", component="unet", energy=0.999, log=lambda line: None)
    ranks = {name: v["rank"] for name, v in report["layers"].items()}
    # Two convs per encoder stage (2), one decoder stage (2 convs), the 1x1x1 head (a 2 x 4 matrix).
    assert len(ranks) == 7 and set(ranks.values()) == {2}, ranks
    assert report["check"]["relative_error"] < 1e-5

    bundle = load_bundle(base)
    adapted = apply_adapter(component_model(bundle, "unet")[0], tmp_path / "adapter", bundle)
    reference = component_model(load_bundle(finetuned), "unet")[0]
    x = torch.randn(1, 2, 12, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(adapted(x), reference(x), rtol=1e-4, atol=1e-5)


def test_from_a_high_rank_adapter(sam_pair, tmp_path):
    """A rank-8 adapter whose B @ A has rank 3: extraction finds rank 3, through the CLI."""
    base, _ = sam_pair
    bundle = load_bundle(base)
    model, _ = component_model(bundle, "sam")
    spec = LoraSpec(("qkv",), rank=8, alpha=16.0)
    add_lora(model.image_encoder, spec)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(8, 3, generator=generator) @ torch.randn(3, p.shape[1], generator=generator))
            elif "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    save_adapter(tmp_path / "rank8", model.image_encoder, spec, base_record(bundle, "sam", "image_encoder"))
    code = cli.main(["train", "lora-extract", str(tmp_path / "rank8"), "--base", str(base), "--energy", "0.9999",
                     "-o", str(tmp_path / "small")])
    assert code == 0
    info = json.loads((tmp_path / "small" / "adapter.json").read_text())
    assert info["lora"]["ranks"] == {"blocks.0.attn.qkv": 3, "blocks.1.attn.qkv": 3}
    assert info["extraction"]["check"]["relative_error"] < 1e-5


def test_bad_input_names_both_models(sam_pair, tmp_path, capsys):
    base, tuned = sam_pair
    from SAMBASegmentLib.sam_model import build_sam

    other = {**TINY_SAM, "embed_dim": 48}
    wrong = write_bundle(tmp_path / "wider", "sam", "sam", other, build_sam(other).state_dict()).path
    code = cli.main(["train", "lora-extract", str(wrong), "--base", str(base), "-o", str(tmp_path / "out")])
    message = capsys.readouterr().err.strip()
    assert code == 2 and len(message.splitlines()) == 1
    assert str(wrong) in message and str(base) in message and "embed_dim 48 vs 32" in message
    assert not (tmp_path / "out").exists()

    for args, expected in ((["--energy", "1.5"], "(0, 1]"), (["--targets", "nothing"], "No Linear/Conv2d/Conv3d layer"),
                           (["--component", "voting"], "no component 'voting'")):
        code = cli.main(["train", "lora-extract", str(tuned), "--base", str(base), "-o", str(tmp_path / "out"), *args])
        assert code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
