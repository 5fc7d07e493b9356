"""The body of LoRATrainer's self-test: run in Slicer by LoRATrainerTest, and headless in CI."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from SAMBACore.adapters import INFO, WEIGHTS
from SAMBACore.brats import ModalityError
from SAMBACore.phantom import write_cases

SELF_TEST_SEED = 20003
# A tiny random SAM and a few steps on axial FLAIR slices: enough to see an adapter learn in a minute.
TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
QUICK = dict(steps_per_epoch=8, views=("axial",), modalities=("flair",), val_slices=24)
MIN_GAIN = 0.03  # validation Dice over the base


def _tiny_bundle(folder: Path) -> Path:
    from SAMBASegmentLib.sam_model import build_sam
    from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle

    torch.manual_seed(0)
    manifest = {"name": "self-test", "version": "0", "description": "random tiny SAM for the self-test",
                "licence": "Apache-2.0", "intended_use": "tests", "preprocessing": {}, "labels": {},
                "training": {}, "metrics": {}}
    save_samba_bundle(folder, SambaModels(build_sam(TINY_SAM), None, None), {"sam": TINY_SAM}, manifest)
    return folder


def run_self_test(logic, log=print) -> dict:
    """Data checks (a case without ground truth skipped, an empty folder refused), then a tiny adapter
    trained on low-field phantoms through the logic must raise validation Dice over its base, and
    Save must write a complete adapter. Returns the validation record."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        log("Writing three low-field phantom cases, one without its segmentation")
        cases = write_cases(folder / "data", 3, seed=SELF_TEST_SEED, lowres=True)
        next(cases[2].glob("*seg*")).unlink()
        empty = folder / "empty"
        empty.mkdir()
        try:
            logic.prepare(folder=empty, base="unused")
        except ModalityError as error:
            assert "No usable BraTS case" in str(error), error
        else:
            raise AssertionError("an empty folder was accepted as training data")

        log("Training a tiny adapter")
        base = _tiny_bundle(folder / "base")
        messages = []
        request = logic.prepare(folder=folder / "data", base=str(base), target="sam+decoder", epochs=3, batch=4,
                                lr=1e-2, val_fraction=0.5, log=messages.append, **QUICK)
        assert len(request.train) == 1 and len(request.val) == 1, (request.train, request.val)
        assert any(cases[2].name in m and "seg" in m for m in messages), messages
        epochs = []
        trained = logic.compute(request, on_epoch=epochs.append)
        validation = trained.info["validation"]
        log(f"Validation Dice {validation['base']:.3f} (base) -> {validation['final']:.3f}")
        assert [e["epoch"] for e in epochs] == [1, 2, 3], epochs
        assert validation["final"] > validation["base"] + MIN_GAIN, validation

        saved = logic.save(trained, folder / "adapter")
        assert (saved / WEIGHTS).is_file() and json.loads((saved / INFO).read_text())["base"]["bundle"] == "self-test"
        logic.discard(trained)
    log("Self-test passed")
    return validation
