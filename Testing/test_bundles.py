"""Model bundles and the weights registry."""

import errno
import hashlib
import json
import os
import pickle
import re

import pytest
import torch
from torch import nn

from SAMBACore import bundles, weights
from SAMBACore.bundles import (
    BundleError,
    check_state_dict,
    load_bundle,
    load_state_dict,
    save_bundle,
)


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def manifest(**components):
    return {
        "name": "test", "version": "0.1", "description": "two linear layers", "licence": "Apache-2.0",
        "intended_use": "tests only", "preprocessing": {}, "labels": {"1": "WT"},
        "training": {"command": "none", "seeds": [0], "steps": 0, "data": "none"}, "metrics": {},
        "components": components or {"net": {"kind": "voting", "config": {"hidden": 8}}},
    }


@pytest.fixture
def bundle(tmp_path):
    model = small_model()
    return save_bundle(tmp_path / "bundle", manifest(), {"net": model.state_dict()}), model


def test_round_trip_keeps_weights_and_records_their_sha256(bundle):
    saved, model = bundle
    loaded = load_bundle(saved.path)
    state = load_state_dict(loaded, "net")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    on_disk = json.loads((saved.path / "manifest.json").read_text())["components"]["net"]
    digest = hashlib.sha256((saved.path / on_disk["file"]).read_bytes()).hexdigest()
    assert (on_disk["sha256"], on_disk["format"], on_disk["kind"]) == (digest, "safetensors", "voting")
    comp = loaded.component("net")
    assert (comp.file, comp.config, comp.base) == ("net.safetensors", {"hidden": 8}, None)
    with pytest.raises(BundleError, match=r"no component 'sam'.*available: net"):
        loaded.component("sam")


def test_flipped_byte_is_a_checksum_error_naming_the_file(bundle):
    saved, _ = bundle
    file = saved.path / "net.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"net\.safetensors: checksum mismatch"):
        load_bundle(saved.path)
    with pytest.raises(BundleError, match="checksum"):  # re-checked on load, not only on open
        load_state_dict(saved, "net")


def test_missing_file_and_bad_manifest_are_named(bundle):
    saved, _ = bundle
    text = (saved.path / "manifest.json").read_text()
    meta = json.loads(text)
    del meta["licence"]
    meta["components"]["net"]["format"] = "pickle"
    (saved.path / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"manifest\.json: missing field\(s\) licence"):
        load_bundle(saved.path)
    meta["licence"] = "MIT"
    (saved.path / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown format 'pickle'"):
        load_bundle(saved.path)
    (saved.path / "manifest.json").write_text(text)
    (saved.path / "net.safetensors").unlink()
    with pytest.raises(BundleError, match=r"net\.safetensors: missing"):
        load_bundle(saved.path)
    with pytest.raises(BundleError, match="manifest.json: not found"):
        load_bundle(saved.path / "nowhere")


def test_check_state_dict_explains_an_architecture_mismatch(bundle):
    saved, model = bundle
    state = load_state_dict(saved, "net")
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(BundleError) as err:
        check_state_dict(other, state, "net")
    assert re.search(r"component net do not fit.*2 missing keys \(4\.weight, 4\.bias\).*2 shape mismatches "
                     r"\(2\.weight: bundle \[2, 8\] vs model \[3, 8\].*another architecture", str(err.value))
    fresh = check_state_dict(small_model(seed=1), state, "net")
    assert torch.equal(fresh[2].weight, model[2].weight)


def test_failed_save_keeps_the_previous_bundle_and_leaves_no_temporary_folder(bundle, monkeypatch):
    saved, model = bundle
    real_save, calls = bundles.save_file, []

    def save_then_fail(tensors, filename):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, filename)

    monkeypatch.setattr(bundles, "save_file", save_then_fail)
    new = {"net": small_model(seed=5).state_dict(), "extra": small_model(seed=6).state_dict()}
    spec = manifest(net={"kind": "voting", "config": {}}, extra={"kind": "lora", "config": {}})
    with pytest.raises(BundleError, match="Could not write the bundle.*No space left.*unchanged"):
        save_bundle(saved.path, spec, new)
    assert len(calls) == 2
    assert sorted(p.name for p in saved.path.parent.iterdir()) == ["bundle"]
    state = load_state_dict(load_bundle(saved.path), "net")
    assert torch.equal(state["0.weight"], model[0].weight)
    monkeypatch.setattr(bundles, "save_file", real_save)  # and a good save does replace it
    replaced = load_bundle(save_bundle(saved.path, spec, new).path)
    assert set(replaced.components) == {"net", "extra"}
    assert sorted(p.name for p in saved.path.parent.iterdir()) == ["bundle"]


_unpickled = []


def _mark():
    _unpickled.append(True)
    return "ran"


class Payload:
    """Unpickling this calls _mark(): what a hostile checkpoint would do with os.system."""

    def __reduce__(self):
        return (_mark, ())


def _torch_bundle(folder, payload):
    folder.mkdir()
    torch.save(payload, folder / "net.pth")
    spec = manifest()
    spec["components"]["net"].update(file="net.pth", format="torch-weights-only",
                                     sha256=bundles.sha256_file(folder / "net.pth"))
    (folder / "manifest.json").write_text(json.dumps(spec))
    return load_bundle(folder)


def test_torch_checkpoint_loads_weights_only_and_refuses_python_objects(tmp_path):
    model = small_model()
    state = load_state_dict(_torch_bundle(tmp_path / "good", model.state_dict()), "net")
    assert torch.equal(state["2.bias"], model[2].bias)
    hostile = _torch_bundle(tmp_path / "bad", {"w": torch.zeros(2), "x": Payload()})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(hostile.path / "net.pth", weights_only=True)
    with pytest.raises(BundleError, match=r"net\.pth: refused: it holds Python objects"):
        load_state_dict(hostile, "net")
    assert _unpickled == []


def test_sha256_is_cached_per_path_mtime_and_size(tmp_path):
    file = tmp_path / "w.bin"
    file.write_bytes(b"a" * 100)
    os.utime(file, (1_000_000_000, 1_000_000_000))  # old: safe to remember
    first = bundles.sha256_file(file)
    file.write_bytes(b"b" * 100)
    os.utime(file, (1_000_000_000, 1_000_000_000))  # same key: the remembered hash is used
    assert bundles.sha256_file(file) == first
    os.utime(file, (1_000_000_100, 1_000_000_100))
    assert bundles.sha256_file(file) == hashlib.sha256(b"b" * 100).hexdigest()


# --- the registry -------------------------------------------------------------------------------


def test_official_sam_registry_is_complete():
    assert set(weights.OFFICIAL_SAM) == {"vit_b", "vit_l", "vit_h"}
    for model_type, entry in weights.OFFICIAL_SAM.items():
        assert entry["url"] == f"https://dl.fbaipublicfiles.com/segment_anything/sam_{model_type}_" + \
            {"vit_b": "01ec64", "vit_l": "0b3195", "vit_h": "4b8939"}[model_type] + ".pth"
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) and entry["licence"] == "Apache-2.0"
    assert weights.OFFICIAL_SAM["vit_b"]["size_bytes"] < weights.OFFICIAL_SAM["vit_h"]["size_bytes"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLICER_SAMBA_CACHE", str(tmp_path))
    assert weights.cache_dir() == tmp_path
    monkeypatch.delenv("SLICER_SAMBA_CACHE")
    assert weights.cache_dir().parts[-2:] == (".cache", "slicer-samba")


def test_record_metrics_keeps_weights_and_earlier_metrics(tmp_path):
    from SAMBACore.bundles import record_metrics

    model = torch.nn.Linear(2, 2)
    manifest = {"name": "m", "version": "1", "description": "d", "licence": "Apache-2.0", "intended_use": "tests",
                "components": {"net": {"kind": "unet", "config": {}}}, "preprocessing": {}, "labels": {},
                "training": {}, "metrics": {"old": 1}}
    save_bundle(tmp_path / "b", manifest, {"net": model.state_dict()})
    record_metrics(tmp_path / "b", "held-out", {"WT": 0.9})
    bundle = load_bundle(tmp_path / "b")  # still verifies: the weights were not touched
    assert bundle.manifest["metrics"] == {"old": 1, "held-out": {"WT": 0.9}}
    assert [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")] == []
