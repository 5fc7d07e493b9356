"""Training commands build a bundle component by component from BraTS case folders.

Tiny settings (a few steps) prove the plumbing and the manifest's record; the quality of a real
training run is measured for the demo bundle, not here.
"""

import json

import numpy as np
import pytest
import torch

from SAMBACore.brats import ModalityError
from SAMBACore.bundles import BundleError, load_bundle
from SAMBACore.phantom import write_cases
from SAMBASegmentLib import training
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.samba_bundle import load_samba_models

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    write_cases(folder, 2, seed=0)
    return folder


def test_components_accumulate_in_one_bundle(data, tmp_path):
    bundle_dir = tmp_path / "bundle"
    log = []
    training.train_sam(data, bundle_dir, steps=2, batch=2, sam_config=TINY_SAM, command="test sam", log=log.append)
    assert set(load_bundle(bundle_dir).components) == {"sam"}
    training.train_yolo(data, bundle_dir, epochs=1, batch=8, views=("axial",), command="test yolo", log=log.append)
    training.train_voting(data, bundle_dir, steps=2, patch=32, command="test voting", log=log.append, preset="fast")

    bundle = load_bundle(bundle_dir)
    assert set(bundle.components) == {"sam", "yolo", "voting"}
    record = json.loads((bundle_dir / "manifest.json").read_text())["training"]
    assert record["yolo"]["validation_cases"] == [sorted(p.name for p in data.iterdir())[1]]  # chose, not trained
    assert record["sam"]["command"] == "test sam" and record["sam"]["steps"] == 2 and record["sam"]["cases"] == 2
    assert record["yolo"]["epochs"] == 1 and record["voting"]["votes_from"] == "yolo boxes"
    assert any("reading 2 case(s)" in line for line in log)

    models = load_samba_models(bundle_dir)
    images = {m: np.ones((8, 16, 16), np.float32) for m in ("t1", "t1ce", "t2", "flair")}
    result = run_samba(images, models, prompt="roi", roi=((2, 2, 2), (5, 12, 12)))
    assert result.labels.shape == (8, 16, 16)


def test_decoder_only_training_keeps_the_encoder(data, tmp_path):
    bundle_dir = tmp_path / "b"
    training.train_sam(data, bundle_dir, steps=1, batch=2, sam_config=TINY_SAM, log=lambda s: None)
    before = load_samba_models(bundle_dir).sam.image_encoder.state_dict()
    training.train_sam(data, bundle_dir, steps=2, batch=2, train_encoder=False, multimask=True, log=lambda s: None)
    after = load_samba_models(bundle_dir).sam.image_encoder.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    record = json.loads((bundle_dir / "manifest.json").read_text())["training"]["sam"]
    assert record["trained"] == "decoder" and record["mode"] == "samba-mc"
    assert record["starting_from"]["trained"] == "encoder+decoder"  # how the starting weights were made


def test_the_command_trains_the_decoder_head_on_the_slices_asked_for(data, tmp_path):
    from SAMBACore.brats import find_training_cases, read_case, region_masks
    from SAMBACore.cli import main

    bundle_dir = tmp_path / "head"
    training.train_sam(data, bundle_dir, steps=1, batch=2, sam_config=TINY_SAM, log=lambda s: None)
    before = load_samba_models(bundle_dir).sam.state_dict()
    assert main(["train", "sam", str(data), "-o", str(bundle_dir), "--head-only", "--views", "axial",
                 "--modalities", "flair", "--steps", "2", "--lr", "1e-3", "--device", "cpu"]) == 0
    after = load_samba_models(bundle_dir).sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("mask_decoder.output_upscaling.", "mask_decoder.output_hypernetworks_mlps."))
                           for k in changed), sorted(changed)
    record = json.loads((bundle_dir / "manifest.json").read_text())["training"]["sam"]
    assert record["trained"] == "decoder head" and record["views"] == ["axial"] and record["modalities"] == ["flair"]
    axial_tumour_slices = sum(int(region_masks(read_case(files)[1])["WT"].any(axis=(1, 2)).sum())
                              for files in find_training_cases(data)[0])
    assert record["slices"] == axial_tumour_slices and record["lr"] == 1e-3


def test_a_wrong_view_name_is_refused_before_anything_is_read(tmp_path, capsys):
    from SAMBACore.cli import main

    for component in ("sam", "yolo"):
        assert main(["train", component, str(tmp_path / "absent"), "-o", str(tmp_path / "b"), "--views", "axial,top"]) == 2
        assert "Unknown view(s) top: choose from axial, coronal, sagittal" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_voting_net_on_simulated_votes_with_contrast_dropout(data, tmp_path):
    """No SAM needed: the votes come from the truth; the record and config say how it was trained."""
    bundle_dir = tmp_path / "simulated"
    training.train_voting(data, bundle_dir, steps=2, patch=32, votes="simulated", drop_contrasts=0.5,
                          config={"whole_tumour": "votes"}, command="test simulated", log=lambda s: None)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    record = manifest["training"]["voting"]
    assert record["votes_from"].startswith("simulated from the true whole tumour")
    assert record["contrast_dropout"].startswith("p 0.5") and "preset" not in record
    assert manifest["components"]["voting"]["config"]["whole_tumour"] == "votes"
    with pytest.raises(ValueError, match="Unknown vote source"):
        training.train_voting(data, bundle_dir, steps=1, votes="yolo", log=lambda s: None)


def test_the_voting_net_trains_on_cases_without_some_contrasts_but_not_without_t1ce(tmp_path):
    """A site's labelled cases often lack T1 or T2 (real-brats13-5 has FLAIR and T1CE only): they are
    used, their missing contrasts zero; a case without T1CE (where enhancing tumour is defined) is
    skipped, saying why; a folder with none left is refused before anything is written."""
    import shutil

    folder = tmp_path / "cases"
    write_cases(folder, 3, seed=0)
    first, second, third = sorted(folder.iterdir())
    for path in (*first.glob("*-t1n.nii.gz"), *first.glob("*-t2w.nii.gz"), *second.glob("*-t1c.nii.gz")):
        path.unlink()
    log, bundle_dir = [], tmp_path / "bundle"
    training.train_voting(folder, bundle_dir, steps=1, patch=32, votes="simulated", log=log.append)
    assert json.loads((bundle_dir / "manifest.json").read_text())["training"]["voting"]["cases"] == 2
    assert any(line.startswith(f"skipped {second.name}: has no t1ce") for line in log)
    shutil.rmtree(first)
    shutil.rmtree(third)
    with pytest.raises(ModalityError, match="none has t1ce"):
        training.train_voting(folder, tmp_path / "none", steps=1, patch=32, votes="simulated", log=log.append)
    assert not (tmp_path / "none").exists()


def test_a_second_voting_net_joins_the_first_as_an_ensemble(data, tmp_path):
    """--add-member keeps the first net as it was and averages the two nets' outputs."""
    import torch
    from SAMBASegmentLib import voting

    bundle_dir = tmp_path / "ensemble"
    with pytest.raises(BundleError, match="has no voting net to add a member to"):
        training.train_sam(data, bundle_dir, steps=1, batch=2, sam_config=TINY_SAM, log=lambda s: None)
        training.train_voting(data, bundle_dir, steps=1, patch=32, votes="simulated", add_member=True, log=lambda s: None)
    small = {"whole_tumour": "votes", "channels": [4, 8, 16]}  # not CONFIG's shape: the second member must follow it
    training.train_voting(data, bundle_dir, steps=2, patch=32, votes="simulated", config=small,
                          command="first", log=lambda s: None)
    first = load_samba_models(bundle_dir).voting
    training.train_voting(data, bundle_dir, steps=2, patch=32, votes="simulated", contrast_curves=0.8, seed=1,
                          add_member=True, command="second", log=lambda s: None)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["components"]["voting"]["config"]["members"] == 2
    assert manifest["components"]["voting"]["config"]["whole_tumour"] == "votes"  # the first net's config kept
    assert manifest["components"]["voting"]["config"]["channels"] == [4, 8, 16]
    assert [m["command"] for m in manifest["training"]["voting"]["members"]] == ["first", "second"]
    assert manifest["training"]["voting"]["members"][1]["contrast_curves"].startswith("p 0.8")
    models = load_samba_models(bundle_dir)
    assert isinstance(models.voting, voting.VotingEnsemble) and models.whole_tumour_from_votes
    kept, added = models.voting.members
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), kept.state_dict().values()))
    x = torch.randn(1, voting.IN_CHANNELS, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(models.voting(x), (kept(x) + added(x)) / 2)
        assert not torch.allclose(kept(x), added(x))  # two different nets, not one copied


def test_the_voting_ensemble_fine_tuned_on_a_sites_cases_starts_from_its_members(data, tmp_path):
    """--fine-tune trains the bundle's own members further (a little, at a low learning rate), keeps
    how they were made, names the cases it used, and drops the bundle's metrics (no longer its own)."""
    bundle_dir = tmp_path / "site"
    small = {"whole_tumour": "votes", "channels": [4, 8, 16]}
    training.train_voting(data, bundle_dir, steps=2, patch=32, votes="simulated", config=small,
                          command="first", log=lambda s: None)
    training.train_voting(data, bundle_dir, steps=2, patch=32, votes="simulated", seed=1, add_member=True,
                          command="second", log=lambda s: None)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["metrics"] = {"phantoms": {"mean": {"WT": {"dice": 0.9}}}}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    before = training._voting_members(bundle_dir)["states"]
    with pytest.raises(ValueError, match="Choose one of add a member and fine-tune"):
        training.train_voting(data, bundle_dir, steps=1, votes="simulated", add_member=True, fine_tune=True,
                              log=lambda s: None)
    training.train_voting(data, bundle_dir, steps=3, patch=32, votes="simulated", lr=3e-4, fine_tune=True,
                          command="site", log=lambda s: None)

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    record = manifest["training"]["voting"]
    assert [m["command"] for m in record["members"]] == ["first", "second"]
    assert record["fine_tuned"][0]["command"] == "site"
    assert record["fine_tuned"][0]["cases_used"] == sorted(p.name for p in data.iterdir())
    assert manifest["components"]["voting"]["config"]["members"] == 2 and manifest["metrics"] == {}
    after = training._voting_members(bundle_dir)["states"]
    fresh = training.voting.build_voting_net({**training.voting.CONFIG, **small}).state_dict()
    for old, new in zip(before, after):
        moved = sum(float((old[k] - new[k]).norm()) for k in old)
        far = sum(float((old[k] - fresh[k]).norm()) for k in old)
        assert 0 < moved < 0.05 * far  # trained further, not replaced


def test_yolo_fine_tuned_from_a_bundle_starts_from_its_weights(data, tmp_path):
    """--start-from: one epoch moves the weights a little from the bundle's, while training from
    scratch ends far from them; a bundle without a YOLO is refused, naming what it has."""
    from SAMBACore.bundles import BundleError, load_state_dict
    from SAMBASegmentLib.samba_bundle import resolve_bundle

    source = load_state_dict(load_bundle(resolve_bundle("phantom-demo")), "yolo")

    def distance(bundle_dir):
        trained = load_state_dict(load_bundle(bundle_dir), "yolo")
        weights = [k for k in source if k.endswith(".weight") and source[k].ndim == 4]
        return sum(float((trained[k].float() - source[k].float()).norm()) for k in weights)

    kwargs = dict(epochs=1, batch=8, views=("axial",), log=lambda s: None)
    training.train_yolo(data, tmp_path / "tuned", start_from="phantom-demo", **kwargs)
    training.train_yolo(data, tmp_path / "scratch", **kwargs)
    assert distance(tmp_path / "tuned") < 0.5 * distance(tmp_path / "scratch")  # measured 0.23
    record = json.loads((tmp_path / "tuned" / "manifest.json").read_text())["training"]["yolo"]
    assert record["started_from"].startswith("phantom-demo (yolo sha256 ")

    training.train_sam(data, tmp_path / "no-yolo", steps=1, batch=2, sam_config=TINY_SAM, log=lambda s: None)
    with pytest.raises(BundleError, match="has no YOLO localizer to start from"):
        training.train_yolo(data, tmp_path / "x", start_from=str(tmp_path / "no-yolo"), **kwargs)


def test_yolo_holds_out_every_n_th_case_for_validation_or_none():
    from SAMBASegmentLib.localizer import validation_case

    assert [i for i in range(5) if validation_case(i, 5)] == [1, 3]  # the default, as the bundled YOLOs
    assert [i for i in range(10) if validation_case(i, 10, val_every=5)] == [4, 9]
    assert not any(validation_case(i, 5, val_every=0) for i in range(5))
    assert not validation_case(0, 1)  # one case: it trains, and validation reuses its slices
