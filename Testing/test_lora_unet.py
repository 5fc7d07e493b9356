"""LoRA on the U-Nets: trained on tiny phantoms, merged by load_r2unet_models exactly as peft runs it
unmerged, refused for another base, resumed exactly, and used from the `slicer-samba` commands."""

import json
import math
import shutil

import numpy as np
import pytest
import slicerio
import torch
from safetensors.torch import load_file
from torch import nn

from LoRATrainerLib.logic import LoRATrainerCore
from LoRATrainerLib.train_unet_lora import UnetLoraSettings, train_unet_lora, validation_dice
from LoRATrainerLib.training_data import cases_from_folder
from R2UNetSegmentLib.inference import normalise, predict_cascade, segment
from R2UNetSegmentLib.r2unet_bundle import BASE_MANIFEST, load_r2unet_models, save_r2unet_bundle
from R2UNetSegmentLib.unet3d import UNet3D
from SAMBACore import adapters
from SAMBACore.background import Cancelled
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, SNFH, find_case_files, read_case
from SAMBACore.cli import main
from SAMBACore.inputs import InputError
from test_r2unet_training import write_tiny_cases

TINY = {"in_channels": 4, "out_channels": 4, "widths": [4, 8]}
STAGE2 = {"in_channels": 8, "out_channels": 4, "widths": [4, 8], "factor": 0.5}
# Three epochs of ten 16^3 patch pairs: enough for LoRA on a random tiny U-Net to learn the tumour, in
# about two seconds. lr 5e-3: at 1e-2 and 5 steps the curve jumped (one training seed fell to 0.28).
SETTINGS = UnetLoraSettings(epochs=3, steps_per_epoch=10, batch=2, patch=16, lr=5e-3)
# The base's weights are chosen, not the test seed's: LoRA (which keeps the base's biases) cannot move a
# random tiny U-Net whose features are dead, and half of all seeds make one (seeds 1, 3, 5 of 0-5:
# validation Dice stays at 0.323 whatever the lr or step count). Seed 0's base is alive.
BASE_SEED = 0


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest.py: for the module-scoped training too


def make_bundle(folder, name, seed=None, components=("unet", "cascade_stage1", "cascade_stage2")):
    """Random tiny U-Nets: from the test's seed (conftest.py), or from `seed` for other weights."""
    if seed is not None:
        torch.manual_seed(seed)
    networks = {"unet": (UNet3D(4, 4, (4, 8)), TINY), "cascade_stage1": (UNet3D(4, 4, (4, 8)), TINY),
                "cascade_stage2": (UNet3D(8, 4, (4, 8)), STAGE2)}
    save_r2unet_bundle(folder, {c: networks[c] for c in components}, manifest={**BASE_MANIFEST, "name": name})
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("base") / "tiny", "tiny-unets", BASE_SEED)


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory):
    return write_tiny_cases(tmp_path_factory.mktemp("cases") / "cases", range(3))


@pytest.fixture(scope="module")
def cases(case_folder):
    """Two training cases and one for validation."""
    return cases_from_folder(case_folder, log=lambda m: None)


@pytest.fixture(scope="module")
def trained(bundle, cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "adapter"
    return out, train_unet_lora(bundle, out, cases[:2], cases[2:], SETTINGS, log=lambda m: None)


def lora_parameter_count(model: nn.Module, rank: int) -> int:
    """peft's conv LoRA per layer: A is a conv in -> rank with the layer's kernel, B a 1x1 conv rank -> out."""
    return sum(rank * m.in_channels * math.prod(m.kernel_size) + m.out_channels * rank
               for m in model.modules() if type(m) in (nn.Conv2d, nn.Conv3d))


def test_training_lowers_the_loss_raises_dice_and_stores_only_lora_weights(bundle, trained, measured):
    out, info = trained
    losses, validation = info["training"]["loss_curve"], info["validation"]
    measured("dice_gain", validation["final"] - validation["base"])
    measured("loss_drop", losses[0] - losses[-1])
    assert len(losses) == SETTINGS.epochs and losses[-1] < losses[0], losses
    # Measured (scripts/learning_spread.py and training seeds 0-2): 0.000 -> 0.763-0.805 (0.80-0.92 after
    # epoch 2), loss drop 0.23-0.25; threads 1/2 and AVX2-only kernels changed nothing (spread 0.000).
    assert validation["final"] > validation["base"] + 0.5, validation
    saved = json.loads((out / adapters.INFO).read_text())
    assert saved["base"]["bundle"] == "tiny-unets" and saved["base"]["component"] == "unet"
    assert saved["base"]["target"] == "" and not (out / ".checkpoint").exists()

    weights = load_file(str(out / adapters.WEIGHTS))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights), list(weights)
    base = load_r2unet_models(bundle).unet
    expected = lora_parameter_count(base, SETTINGS.rank)  # 7 conv layers of the 4-8 U-Net at rank 4
    assert sum(t.numel() for t in weights.values()) == expected == info["training"]["trainable_parameters"]


def test_the_merged_adapter_computes_what_peft_computes_unmerged(bundle, trained):
    out, _ = trained
    merged = load_r2unet_models(bundle, adapter=out)
    assert merged.adapted == "unet" and not any("lora_" in n for n, _ in merged.unet.named_parameters())
    unmerged = adapters.apply_adapter(load_r2unet_models(bundle).unet, out, merged.bundle, merge=False).eval()
    base = load_r2unet_models(bundle).unet
    x = torch.randn(1, 4, 20, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got, before = unmerged(x), merged.unet(x), base(x)
    assert (expected - before).abs().max() > 0.1  # the adapter does change the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The other networks are the base's own.
    for a, b in zip(merged.cascade.stage2.parameters(), load_r2unet_models(bundle).cascade.stage2.parameters()):
        assert torch.equal(a, b)


def test_a_cascade_stage2_adapter_is_trained_on_stage1_labels_and_runs_in_cascade_mode(bundle, cases, tmp_path):
    out = tmp_path / "stage2"
    settings = UnetLoraSettings(component="cascade_stage2", epochs=1, steps_per_epoch=3, batch=2, patch=16, lr=1e-2)
    info = train_unet_lora(bundle, out, cases[:2], cases[2:], settings, log=lambda m: None)
    assert json.loads((out / adapters.INFO).read_text())["base"]["component"] == "cascade_stage2"
    assert info["training"]["trainable_parameters"] == lora_parameter_count(UNet3D(8, 4, (4, 8)), 4)
    models = load_r2unet_models(bundle, adapter=out)
    image = normalise(np.stack([cases[2].images[m] for m in MODALITIES]))
    adapted_probs = predict_cascade(models.cascade, image, patch_size=16)
    base_probs = predict_cascade(load_r2unet_models(bundle).cascade, image, patch_size=16)
    assert np.abs(adapted_probs - base_probs).max() > 0.01


def test_an_adapter_for_another_base_is_refused_naming_both(trained, tmp_path):
    other = make_bundle(tmp_path / "other", "other", 1)
    with pytest.raises(adapters.AdapterError, match="made for bundle 'tiny-unets'.*not for bundle 'other'"):
        load_r2unet_models(other, adapter=trained[0])


def test_an_adapter_for_a_network_the_bundle_lacks_is_refused(trained, tmp_path):
    cascade_only = make_bundle(tmp_path / "cascade", "tiny-unets", components=("cascade_stage1", "cascade_stage2"))
    with pytest.raises(adapters.AdapterError, match="it has no 'unet'"):
        load_r2unet_models(cascade_only, adapter=trained[0])


def test_a_cancelled_run_resumes_to_the_same_weights(bundle, cases, trained, tmp_path):
    reference, _ = trained
    out = tmp_path / "adapter"

    def cancel_in_epoch_2(fraction, message):
        if message.startswith("epoch 2/3 step 3/"):
            raise Cancelled(message)

    with pytest.raises(Cancelled):
        train_unet_lora(bundle, out, cases[:2], cases[2:], SETTINGS, progress=cancel_in_epoch_2, log=lambda m: None)
    assert not (out / adapters.WEIGHTS).exists()
    assert json.loads((out / ".checkpoint" / "progress.json").read_text())["epoch"] == 1
    with pytest.raises(ValueError, match="other settings .*patch"):
        train_unet_lora(bundle, out, cases[:2], cases[2:], UnetLoraSettings(**{**SETTINGS.record(), "patch": 8}),
                        log=lambda m: None)
    info = train_unet_lora(bundle, out, cases[:2], cases[2:], SETTINGS, log=lambda m: None)
    assert info["training"]["resumed_from_epoch"] == 1
    resumed, straight = load_file(str(out / adapters.WEIGHTS)), load_file(str(reference / adapters.WEIGHTS))
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_the_module_logic_trains_a_unet_target_and_refuses_the_wrong_bundle(bundle, case_folder):
    logic = LoRATrainerCore()
    with pytest.raises(InputError, match="no 'sam' to adapt.*litemedsam-samba"):
        logic.prepare(folder=case_folder, base=str(bundle), target="sam", log=lambda m: None)
    request = logic.prepare(folder=case_folder, base=str(bundle), target="unet", epochs=1, batch=2, lr=1e-2,
                            val_fraction=0.3, steps_per_epoch=2, patch=16, log=lambda m: None)
    epochs = []
    trained = logic.compute(request, on_epoch=epochs.append)
    try:
        assert [e["epoch"] for e in epochs] == [1] and trained.info["training"]["component"] == "unet"
        assert (trained.folder / adapters.WEIGHTS).is_file()
    finally:
        logic.discard(trained)


def test_train_lora_command_asks_which_network_then_trains_it(bundle, case_folder, tmp_path, capsys):
    out = tmp_path / "adapter"
    common = ["train", "lora", str(case_folder), "--base", str(bundle), "-o", str(out)]
    assert main(common) == 2
    assert "has unet, cascade_stage2: choose which to adapt (--component)" in capsys.readouterr().err
    assert main(common + ["--component", "unet", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "16"]) == 0
    assert "Adapter written" in capsys.readouterr().out
    assert json.loads((out / adapters.INFO).read_text())["base"]["component"] == "unet"


def test_r2unet_command_segments_with_the_adapter(bundle, trained, case_folder, tmp_path, capsys):
    case = sorted(case_folder.iterdir())[2]
    out = tmp_path / "adapted.seg.nrrd"
    assert main(["r2unet", str(case), "-o", str(out), "--bundle", str(bundle), "--adapter", str(trained[0]),
                 "--mode", "full", "--device", "cpu"]) == 0
    assert "merged into the bundle's unet" in capsys.readouterr().out
    images, _, _ = read_case(find_case_files(case))
    image = normalise(np.stack([images[m] for m in MODALITIES]))
    adapted, _, _ = segment(image, model=load_r2unet_models(bundle, adapter=trained[0]).unet, mode="full")
    base, _, _ = segment(image, model=load_r2unet_models(bundle).unet, mode="full")
    assert (adapted != base).mean() > 0.01
    seg = slicerio.read_segmentation(str(out))
    written = np.zeros(adapted.shape, np.uint8)
    for value, display in LABEL_SEGMENTS.items():
        voxels = np.transpose(slicerio.extract_segments(seg, [(display.name, 1)])["voxels"], (2, 1, 0))
        written[voxels == 1] = value
    np.testing.assert_array_equal(written, adapted)

    # The adapter adapts the U-Net: asking for the cascade with it is refused, nothing is written.
    refused = tmp_path / "refused.seg.nrrd"
    assert main(["r2unet", str(case), "-o", str(refused), "--bundle", str(bundle), "--adapter", str(trained[0]),
                 "--mode", "cascade"]) == 2
    assert "adapts the bundle's unet: choose network unet" in capsys.readouterr().err and not refused.exists()


def test_a_copied_adapter_with_a_corrupt_weight_file_is_refused(bundle, trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[0], broken)
    data = bytearray((broken / adapters.WEIGHTS).read_bytes())
    data[-4] ^= 0x55
    (broken / adapters.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(adapters.AdapterError, match="checksum mismatch"):
        load_r2unet_models(bundle, adapter=broken)


def test_a_bundle_with_presence_flags_is_adapted_with_its_flags(cases, tmp_path):
    """Its networks take 4 contrasts + 4 presence flags: the trainer adds the flags (all set), so the
    validation Dice it reports is the adapted network's as `segment` runs it on a four-contrast case;
    the cascade's stage 2 trains on the flagged stage 1's labels."""
    torch.manual_seed(BASE_SEED)
    flags = {"presence_flags": True}
    flagged = tmp_path / "flagged"
    save_r2unet_bundle(flagged, {"unet": (UNet3D(8, 4, (4, 8)), {**TINY, "in_channels": 8, **flags}),
                                 "cascade_stage1": (UNet3D(8, 4, (4, 8)), {**TINY, "in_channels": 8, **flags}),
                                 "cascade_stage2": (UNet3D(12, 4, (4, 8)), {**STAGE2, "in_channels": 12, **flags})},
                       manifest={**BASE_MANIFEST, "name": "flagged"})
    info = train_unet_lora(flagged, tmp_path / "adapter", cases[:2], cases[2:], SETTINGS, log=lambda m: None)
    adapted = load_r2unet_models(flagged, adapter=tmp_path / "adapter")
    labels, _, _ = segment(normalise(np.stack([cases[2].images[m] for m in MODALITIES])), model=adapted.unet, mode="full")
    predicted, truth = labels > 0, cases[2].labels > 0
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert info["validation"]["final"] == pytest.approx(dice, abs=1e-6)
    stage2 = train_unet_lora(flagged, tmp_path / "stage2", cases[:2], cases[2:],
                             UnetLoraSettings(component="cascade_stage2", epochs=1, steps_per_epoch=2, patch=16),
                             log=lambda m: None)
    assert stage2["training"]["component"] == "cascade_stage2" and (tmp_path / "stage2" / adapters.WEIGHTS).exists()


def test_stage2_validation_drops_the_small_pieces_the_cascade_drops():
    """Validation scores what segment() labels: with the cascade's min_piece_fraction a small piece of
    the prediction is dropped. A 1x1 convolution stands in for the U-Net (a named stand-in): it labels
    edema wherever its one input channel is 1, background elsewhere."""
    net = nn.Conv3d(1, 4, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.fill_(-10.0)
        net.weight[0, 0], net.bias[0] = -10.0, 5.0
        net.weight[SNFH, 0], net.bias[SNFH] = 10.0, -5.0
    tumour = np.zeros((12, 12, 12), bool)
    tumour[2:8, 2:8, 2:8] = True
    predicted = tumour.copy()
    predicted[10, 10, 10] = True  # a one-voxel piece away from the tumour
    case = {"image": predicted[None].astype(np.float32), "labels": np.where(tumour, SNFH, 0).astype(np.uint8),
            "brain": np.ones(tumour.shape, bool)}
    assert validation_dice(net, [case]) == pytest.approx(2 * 216 / (217 + 216))
    assert validation_dice(net, [{**case, "min_piece_fraction": 0.1}]) == 1.0
