"""Model bundles: a folder with manifest.json plus weight files, verified before anything is loaded.

Weights are safetensors, or ("torch-weights-only") checkpoints read with torch.load(weights_only=True)
after their sha256 matched the manifest: nothing executable is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from SAMBACore.atomic import replacing_folder
from SAMBACore.errors import BundleError

MANIFEST = "manifest.json"
FORMATS = ("safetensors", "torch-weights-only")
REQUIRED = ("name", "version", "description", "licence", "intended_use", "components",
            "preprocessing", "labels", "training", "metrics")
COMPONENT_REQUIRED = ("file", "sha256", "format", "kind", "config")


@dataclass
class Component:
    name: str
    file: str
    sha256: str
    format: str
    kind: str
    config: dict
    source_url: str | None = None
    base: str | None = None  # for adapters: sha256 of the component they apply to


@dataclass
class Bundle:
    path: Path
    manifest: dict = field(repr=False)

    @property
    def components(self) -> dict[str, Component]:
        return {name: Component(name=name, **{k: c.get(k) for k in (*COMPONENT_REQUIRED, "source_url", "base")})
                for name, c in self.manifest["components"].items()}

    def component(self, name: str) -> Component:
        components = self.components
        if name not in components:
            raise BundleError(f"{self.path / MANIFEST}: no component '{name}' (available: "
                              f"{', '.join(sorted(components)) or 'none'}); choose a bundle made for this model")
        return components[name]


# (resolved path, mtime_ns, size) -> sha256, so a multi-GB checkpoint is hashed once per process.
_hash_cache: dict[tuple, str] = {}


def sha256_file(path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _hash_cache:
        return _hash_cache[key]
    started = time.time()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    # A file modified within the same timestamp tick would keep its key ("racy git"): only
    # remember hashes of files that were already a few seconds old when hashing started.
    if started - st.st_mtime > 2:
        _hash_cache[key] = digest.hexdigest()
    return digest.hexdigest()


def verify_sha256(path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected.lower():
        raise BundleError(f"{path}: checksum mismatch (expected {expected}, got {got}): "
                          "the file is corrupt or was replaced; download or copy it again")


def load_bundle(path) -> Bundle:
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: not found; choose the model bundle folder (the one "
                          "holding manifest.json)") from None
    except (ValueError, OSError) as e:
        raise BundleError(f"{manifest_path}: cannot be read ({e}); copy the bundle again") from None
    _validate(manifest, manifest_path)
    for name, c in manifest["components"].items():
        file = path / c["file"]
        if not file.is_file():
            raise BundleError(f"{file}: missing (component '{name}'); copy the whole bundle folder again")
        verify_sha256(file, c["sha256"])
    return Bundle(path, manifest)


def _validate(manifest, where: Path) -> None:
    def fail(problem):
        raise BundleError(f"{where}: {problem}; this is not a valid model bundle manifest, get the bundle again")

    if not isinstance(manifest, dict):
        fail("the top level is not a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        fail(f"missing field(s) {', '.join(missing)}")
    if not isinstance(manifest["components"], dict) or not manifest["components"]:
        fail("'components' must be a non-empty object")
    for name, c in manifest["components"].items():
        lacking = [k for k in COMPONENT_REQUIRED if not isinstance(c, dict) or k not in c]
        if lacking:
            fail(f"component '{name}' lacks {', '.join(lacking)}")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", str(c["sha256"])):
            fail(f"component '{name}' has no valid sha256")
        if c["format"] not in FORMATS:
            fail(f"component '{name}' has unknown format '{c['format']}' (known: {', '.join(FORMATS)})")
        # Weight files live inside the bundle: no absolute paths, no climbing out with "..".
        if PurePosixPath(c["file"]).is_absolute() or ".." in PurePosixPath(c["file"]).parts:
            fail(f"component '{name}' points outside the bundle ({c['file']})")


def load_state_dict(bundle: Bundle, name: str) -> dict[str, torch.Tensor]:
    comp = bundle.component(name)
    file = bundle.path / comp.file
    if not file.is_file():
        raise BundleError(f"{file}: missing (component '{name}'); copy the whole bundle folder again")
    verify_sha256(file, comp.sha256)  # re-checked: the file may have changed since load_bundle
    if comp.format != "safetensors":
        return read_torch_state_dict(file, "use a safetensors version of these weights, or copy the bundle again")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{file}: cannot be read as safetensors weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); copy the bundle again") from None


def read_torch_state_dict(path, remedy: str) -> dict[str, torch.Tensor]:
    """A PyTorch checkpoint (LiteMedSAM's, a SAM or MedSAM file the user picked, a bundle's .pth) read
    as tensors only (weights_only=True: nothing executable is unpickled); a state dict wrapped as
    {"model": ...}, as MedSAM and LiteMedSAM save theirs, is unwrapped. A BundleError names the file,
    what is wrong with it and `remedy`."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: never here
        raise BundleError(f"{path}: refused: it holds Python objects besides tensors, which could run code when "
                          f"loaded; {remedy}") from None
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        raise BundleError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}); {remedy}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{path}: holds no state dict of tensors; {remedy}")
    return dict(state)


def check_state_dict(model: torch.nn.Module, state_dict: dict, component_name: str) -> torch.nn.Module:
    """Load strictly into `model`, turning any key or shape disagreement into one readable BundleError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: bundle {list(state_dict[k].shape)} vs model {list(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = [_count(missing, "missing key"), _count(unexpected, "unexpected key"),
                _count(mismatched, "shape mismatch", "shape mismatches")]
    problems = [p for p in problems if p]
    if problems:
        raise BundleError(f"weights for component {component_name} do not fit this model: {', '.join(problems)}: "
                          "the bundle was made for another architecture; choose the matching bundle or model settings")
    model.load_state_dict(state_dict, strict=True)
    return model


def _count(items, singular, plural=None) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
    return f"{len(items)} {singular if len(items) == 1 else plural or singular + 's'} ({shown})"


def save_bundle(path, manifest: dict, state_dicts: dict[str, dict[str, torch.Tensor]]) -> Bundle:
    """Write the bundle next to `path`, verify it, then swap it in: an old bundle survives any failure."""
    path = Path(path)
    manifest = json.loads(json.dumps(manifest))  # a deep copy; also proves it is JSON-serialisable
    components = manifest.setdefault("components", {})
    for name in state_dicts:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise BundleError(f"{path}: component name '{name}' cannot be a file name; use letters, digits, _ . -")
    for name in components:
        if name not in state_dicts:
            raise BundleError(f"{path}: component '{name}' is in the manifest but no weights were given")
    with replacing_folder(path, "bundle", BundleError, (OSError, SafetensorError)) as tmp:
        for name, state in state_dicts.items():
            file = tmp / f"{name}.safetensors"
            # clone(): safetensors refuses tensors that share storage (views, tied weights)
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(file))
            entry = components.setdefault(name, {})
            entry.setdefault("config", {})
            entry.update(file=file.name, sha256=sha256_file(file), format="safetensors")
        _validate(manifest, path / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        load_bundle(tmp)  # the same checks a reader will make
    return Bundle(path, manifest)


def update_manifest(path, changes: dict) -> None:
    """Set top-level manifest fields (description, metrics, ...); the weights are not touched and the
    manifest is replaced atomically."""
    manifest = {**load_bundle(path).manifest, **changes}
    _validate(manifest, Path(path) / MANIFEST)
    target = Path(path) / MANIFEST
    partial = target.with_name(f".{MANIFEST}.{uuid.uuid4().hex[:8]}")
    try:
        partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, target)
    except OSError as e:
        raise BundleError(f"{target}: could not be updated ({e.strerror}); the manifest is unchanged") from None
    finally:
        partial.unlink(missing_ok=True)


def record_metrics(path, name: str, metrics: dict) -> None:
    """Store measured metrics under manifest["metrics"][name]."""
    update_manifest(path, {"metrics": {**load_bundle(path).manifest.get("metrics", {}), name: metrics}})


def find_bundle(name_or_path, bundled_dir: Path, bundled: tuple[str, ...], train_hint: str) -> Path:
    """A bundle folder from a path, or from the name of one a module ships in `bundled_dir`;
    BundleError lists what is shipped and says how to train one (`train_hint`)."""
    path = Path(name_or_path)
    if (path / MANIFEST).is_file():
        return path
    if str(name_or_path) in bundled and (bundled_dir / str(name_or_path) / MANIFEST).is_file():
        return bundled_dir / str(name_or_path)
    shipped = [n for n in bundled if (bundled_dir / n / MANIFEST).is_file()]
    raise BundleError(
        f"No model bundle at {name_or_path}: give a bundle folder (with {MANIFEST}) "
        f"or one of the bundled names ({', '.join(shipped) or 'none installed yet'}); train one with `{train_hint}`."
    )
