"""Training the U-Net and the cascade into a bundle: they learn, resume exactly, and bundles load safely."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from R2UNetSegmentLib import training
from R2UNetSegmentLib.r2unet_bundle import load_r2unet_models

from SAMBACore.brats import MODALITIES, case_file_name
from SAMBACore.bundles import BundleError, load_bundle

SHAPE = (20, 24, 24)
TINY = {"in_channels": 4, "out_channels": 4, "widths": [4, 8]}
SMALL = {"in_channels": 4, "out_channels": 4, "widths": [8, 16]}
# Intensity per label (brain, NETC, SNFH, ET) for each channel (t1, t1ce, t2, flair).
CONTRASTS = np.array([[600, 280, 450, 480], [550, 270, 450, 950], [400, 860, 750, 600], [450, 480, 860, 640]], float)


def tiny_case(seed: int):
    """(4 images, labels) of a (20, 24, 24) ellipsoid 'brain' with one layered spherical tumour."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(SHAPE)
    brain = ((k - 10) / 9) ** 2 + ((j - 12) / 11) ** 2 + ((i - 12) / 11) ** 2 < 1
    centre = np.array(SHAPE) // 2 + rng.integers(-3, 4, 3)
    radius = np.sqrt((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
    size = rng.uniform(3.5, 5.5)
    labels = np.zeros(SHAPE, np.uint8)
    labels[radius < size + 2] = 2
    labels[radius < size] = 3
    labels[radius < size - 1.5] = 1
    labels[~brain] = 0
    images = []
    for channel in range(4):
        image = CONTRASTS[channel][labels]
        image = image * rng.uniform(0.9, 1.1) + rng.normal(0, 30, SHAPE)
        images.append((image * brain).astype(np.float32))
    return images, labels


def write_tiny_cases(folder, seeds):
    for seed in seeds:
        case_id = f"TINY-{seed:05d}-000"
        (folder / case_id).mkdir(parents=True)
        images, labels = tiny_case(seed)
        for key, array in zip(list(MODALITIES) + ["seg"], images + [labels]):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / case_id / case_file_name(case_id, key)))
    return folder


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    return write_tiny_cases(tmp_path_factory.mktemp("tiny") / "cases", range(3))


def quiet(_message):
    pass


class Stop(Exception):
    pass


def cancel_after(step, steps):
    def progress(fraction, _message):
        if round(fraction * steps) >= step:
            raise Stop

    return progress


def weights(bundle_dir, name):
    return load_r2unet_models(bundle_dir).__getattribute__(name).state_dict()


@pytest.fixture(scope="module")
def straight_run(tiny_cases, tmp_path_factory):
    """Six uninterrupted steps: the reference every resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("straight") / "bundle"
    training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=quiet)
    return out


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cancelled_training_resumes_to_the_same_weights(tiny_cases, straight_run, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(Stop):
        training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=quiet,
                            progress=cancel_after(3, 6))
    record = json.loads((out / ".checkpoints" / "unet.json").read_text())
    assert record["step"] == 3 and len(record["losses"]) == 3
    assert not (out / "manifest.json").exists(), "no bundle until training has finished"
    logs = []
    training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=logs.append)
    assert any("resuming from the checkpoint at step 3" in line for line in logs)
    assert_same_weights(weights(out, "unet"), weights(straight_run, "unet"))
    assert not (out / ".checkpoints").exists(), "finished components leave no checkpoint behind"
    assert load_bundle(out).manifest["training"]["unet"]["steps"] == 6


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tiny_cases, straight_run, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    real_save = training.save_checkpoint

    def crash_after_step_4(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[4] == 4:  # the process dies right after writing the step-4 checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=quiet)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=quiet)
    assert_same_weights(weights(out, "unet"), weights(straight_run, "unet"))


def test_a_checkpoint_made_with_other_settings_is_not_used(tiny_cases, straight_run, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(Stop):
        training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, lr=1e-2, config=TINY, log=quiet,
                            progress=cancel_after(2, 6))
    logs = []
    training.train_unet(tiny_cases, out, steps=6, patch=16, batch=1, config=TINY, checkpoint_every=2, log=logs.append)
    assert any("other settings; starting over" in line for line in logs)
    assert_same_weights(weights(out, "unet"), weights(straight_run, "unet"))


def test_poly_schedule_decays_the_rate_and_resumes_on_the_same_curve(tiny_cases, tmp_path, monkeypatch):
    assert training.learning_rate(1e-3, 0, 100, "poly") == 1e-3
    assert training.learning_rate(1e-3, 50, 100, "poly") == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert 0 < training.learning_rate(1e-3, 99, 100, "poly") < 2e-5
    with pytest.raises(ValueError, match="poly"):
        training.learning_rate(1e-3, 0, 100, "cosine")

    rates = []
    real_step = torch.optim.Adam.step

    def noting_rate(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", noting_rate)
    run = dict(steps=6, patch=16, batch=1, lr=1e-2, config=TINY, checkpoint_every=2, log=quiet, schedule="poly")
    training.train_unet(tiny_cases, tmp_path / "straight", **run)
    assert rates == [pytest.approx(training.learning_rate(1e-2, s, 6, "poly")) for s in range(6)]
    assert load_bundle(tmp_path / "straight").manifest["training"]["unet"]["optimiser"] == \
        "Adam, learning rate poly-decayed to 0"

    with pytest.raises(Stop):
        training.train_unet(tiny_cases, tmp_path / "resumed", progress=cancel_after(3, 6), **run)
    training.train_unet(tiny_cases, tmp_path / "resumed", **run)
    assert_same_weights(weights(tmp_path / "resumed", "unet"), weights(tmp_path / "straight", "unet"))


def test_unet_learns_the_tiny_tumours(tiny_cases, tmp_path, measured):
    from R2UNetSegmentLib.inference import normalise, predict_full

    from SAMBACore.metrics import region_metrics

    out = tmp_path / "bundle"
    training.train_unet(tiny_cases, out, steps=60, patch=16, batch=2, lr=3e-3, config=SMALL, log=quiet)
    images, truth = tiny_case(99)  # not a training case
    model = load_r2unet_models(out).unet
    labels = predict_full(model, normalise(np.stack(images))).argmax(0)
    scores = region_metrics(labels, truth)
    measured("wt_dice", scores["WT"]["dice"])
    # An untrained network scores about 0.1; measured 0.827 on every seed, thread count and kernel set.
    assert scores["WT"]["dice"] > 0.6, scores


def test_cascade_trains_both_stages_into_one_bundle(tiny_cases, tmp_path):
    out = tmp_path / "bundle"
    stage1 = {"in_channels": 4, "out_channels": 4, "widths": [4, 8]}
    stage2 = {"in_channels": 8, "out_channels": 4, "widths": [4, 8]}
    training.train_cascade(tiny_cases, out, steps=3, stage1_steps=4, patch=16, batch=1, factor=0.5,
                           stage1_config=stage1, stage2_config=stage2, log=quiet)
    models = load_r2unet_models(out)
    assert models.cascade.factor == 0.5 and models.unet is None and models.in_channels == 4
    manifest = load_bundle(out).manifest
    assert manifest["components"]["cascade_stage2"]["config"]["factor"] == 0.5
    assert "trained stage 1" in manifest["training"]["cascade_stage2"]["stage1_labels"]
    assert manifest["training"]["cascade_stage1"]["steps"] == 4
    assert not (out / ".checkpoints").exists()

    from R2UNetSegmentLib.evaluation import evaluate

    report = evaluate(models, tiny_cases, mode="cascade", patch_size=32, log=quiet)
    assert report["cases"] == 3 and {c["mode"] for c in report["per_case"]} == {"cascade"}
    assert set(report["mean"]) == {"ET", "TC", "WT"}


def test_other_components_checkpoints_survive_a_bundle_save(tiny_cases, straight_run, tmp_path):
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(straight_run, out)
    with pytest.raises(Stop):
        training.train_r2unet(tiny_cases, out, steps=4, patch=16, batch=1, log=quiet, progress=cancel_after(2, 4),
                              config={"in_channels": 4, "out_channels": 4, "spatial_dims": 3, "base_width": 2, "depth": 1})
    training.train_unet(tiny_cases, out, steps=2, patch=16, batch=1, config=TINY, resume=False, log=quiet)
    assert (out / ".checkpoints" / "r2unet.json").is_file(), "saving the unet must not drop the r2unet's checkpoint"
    assert not (out / ".checkpoints" / "unet.json").exists()


def test_corrupt_or_mismatched_weights_name_the_file(straight_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(straight_run, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["components"]["unet"]["config"]["widths"] = [4, 16]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"unet\.safetensors.*shape mismatch"):
        load_r2unet_models(broken)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(straight_run, corrupt)
    data = bytearray((corrupt / "unet.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (corrupt / "unet.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"unet\.safetensors: checksum mismatch"):
        load_r2unet_models(corrupt)


def test_the_committed_phantom_bundle_loads_and_says_how_it_was_made():
    from R2UNetSegmentLib.r2unet_bundle import resolve_bundle

    path = resolve_bundle("phantom-r2unet")
    models = load_r2unet_models(path)
    assert models.in_channels == 4 and models.classes == 4 and models.cascade.factor == 0.3
    assert models.unet is not None and models.r2unet is not None
    manifest = load_bundle(path).manifest
    assert set(manifest["training"]) == {"unet", "r2unet", "cascade_stage1", "cascade_stage2"}
    assert all(record["seed"] == 0 and record["cases"] == 20 for record in manifest["training"].values())
    assert any(name.startswith("heldout_cascade") for name in manifest["metrics"])
    assert sum(f.stat().st_size for f in path.iterdir()) < 8 * 2**20, "a few MB at most"


def test_the_committed_any_contrast_bundle_has_flags_and_says_what_it_was_trained_and_scored_on():
    from R2UNetSegmentLib.presence import has_flags
    from R2UNetSegmentLib.r2unet_bundle import resolve_bundle

    path = resolve_bundle("phantom-cascade-any")
    models = load_r2unet_models(path)
    assert models.unet is None and models.r2unet is None and has_flags(models.cascade.stage1)
    manifest = load_bundle(path).manifest
    for record in (manifest["training"][stage] for stage in ("cascade_stage1", "cascade_stage2")):
        assert record["cases"] == 40 and "seeds 110-129" in record["data"] and "--site-subsets" in record["command"]
        held_out = {f"PHANTOM-{seed:05d}-000" for seed in list(range(30000, 30010)) + list(range(40000, 40010))}
        assert not held_out & set(record["case_names"])  # never scored on its own training data
    assert {"heldout_v1_cascade", "heldout_v1_cascade_flair", "heldout_v3_cascade"} <= set(manifest["metrics"])
    assert sum(f.stat().st_size for f in path.iterdir()) < 4 * 2**20


def test_patch_batch_centres_the_asked_share_of_patches_on_tumour():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:9, 5:9, 5:9] = 2  # a small tumour in one corner: a random patch rarely holds it
    case = {"image": np.ones((4, 40, 40, 40), np.float32), "labels": labels}
    share = {}
    for fraction in (0.0, 1.0):
        sample = training.patch_batch([case], "image", "labels", (8, 8, 8), 8, tumour_fraction=fraction)
        hits = [bool(y[i].any()) for y in (sample(np.random.default_rng(s))[1] for s in range(10)) for i in range(8)]
        share[fraction] = np.mean(hits)
    assert share[1.0] == 1.0 and share[0.0] < 0.2
    from LoRATrainerLib.train_unet_lora import UnetLoraSettings

    with pytest.raises(ValueError, match="between 0 and 1"):
        UnetLoraSettings(tumour_fraction=1.5)
