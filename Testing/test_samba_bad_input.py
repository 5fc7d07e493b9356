"""SAMBASegment on bad input: one test per case of the issue's list not covered elsewhere.

Each checks that the message says what to do and that the scene (or the files) did not change.
Covered elsewhere: misnamed/ambiguous file names (test_brats), a flipped byte in a bundle
(test_bundles, test_samba_pipeline), empty YOLO results in the pipeline (test_samba_pipeline),
out-of-memory batch fallback in the runner (test_sam_runner).
"""

import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from SAMBACore import bridge, cli
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, case_file_name, region_masks
from SAMBACore.inputs import InputError
from SAMBACore.phantom import ORIGIN, make_case
from SAMBASegmentLib import localizer, logic, voting
from SAMBASegmentLib.logic import SAMBASegmentCore, arrays_from_nodes
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.sam_runner import SamOutOfMemory
from SAMBASegmentLib.samba_bundle import SambaModels, save_samba_bundle

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
SHAPE = (16, 24, 20)  # (k, j, i)
BRATS_MATRIX = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS LPS grid seen in RAS; origin below
BRATS_MATRIX[:3, 3] = (-ORIGIN[0], -ORIGIN[1], ORIGIN[2])


def _image(seed):
    rng = np.random.default_rng(seed)
    image = rng.uniform(50, 400, SHAPE).astype(np.float32)
    image[:, :3] = 0  # background outside the "brain"
    return image


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, reseed):
    """Random SAM, random YOLO (finds nothing) and voting net."""
    reseed()  # conftest.py
    folder = tmp_path_factory.mktemp("bad-input") / "bundle"
    models = SambaModels(build_sam(TINY_SAM), localizer.build_detector(), voting.build_voting_net())
    save_samba_bundle(folder, models, {"sam": TINY_SAM, "yolo": localizer.CONFIG, "voting": voting.CONFIG},
                      {"name": "tiny", "version": "0", "description": "random", "licence": "Apache-2.0",
                       "intended_use": "tests", "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}})
    return folder


@pytest.fixture
def case_dir(tmp_path):
    """A small BraTS 2023 case folder on one grid."""
    folder = tmp_path / "CASE-00001-000"
    folder.mkdir()
    for seed, key in enumerate(MODALITIES):
        sitk.WriteImage(sitk.GetImageFromArray(_image(seed)), str(folder / case_file_name(folder.name, key)))
    return folder


@pytest.fixture
def nodes(scene):
    return {m: bridge.volume_from_array(scene, _image(seed), BRATS_MATRIX, f"CASE_{m}") for seed, m in enumerate(MODALITIES)}


def _snapshot(scene, nodes):
    """What must not change: the nodes in the scene, the inputs' voxels and geometry."""
    return (scene.GetNumberOfNodes(),
            {m: (bridge.array_from_volume(n).copy(), bridge.ijk_to_ras(n)) for m, n in nodes.items() if n is not None})


def _assert_unchanged(scene, nodes, before):
    count, inputs = before
    assert scene.GetNumberOfNodes() == count
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    for m, (array, matrix) in inputs.items():
        np.testing.assert_array_equal(bridge.array_from_volume(nodes[m]), array)
        np.testing.assert_array_equal(bridge.ijk_to_ras(nodes[m]), matrix)


def _segment(case, out, bundle, capsys, *extra):
    code = cli.main(["segment", str(case), "-o", str(out), "--bundle", str(bundle), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- missing and duplicate modalities --------------------------------------------------------

def test_no_modality_at_all(scene, nodes, case_dir, tiny_bundle, tmp_path, capsys):
    # Any non-empty set of the four is used (test_contrast_subsets.py); none at all is refused.
    for m in list(nodes):
        nodes[m] = None
    before = _snapshot(scene, nodes)
    with pytest.raises(InputError, match=r"No volume selected: select at least one of T1, T1CE, T2 and FLAIR"):
        arrays_from_nodes(nodes)
    _assert_unchanged(scene, nodes, before)

    for key in ("t1", "t1ce", "t2", "flair"):
        (case_dir / case_file_name(case_dir.name, key)).unlink()
    files = _files(case_dir)
    code, _, err = _segment(case_dir, tmp_path / "out.seg.nrrd", tiny_bundle, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "Could not identify any of the BraTS inputs: missing t1, t1ce, t2, flair" in err
    assert "Name them t1/t1n, t1ce/t1c, t2/t2w and flair/t2f" in err
    assert _files(case_dir) == files and not (tmp_path / "out.seg.nrrd").exists()


def test_duplicate_modality(scene, nodes, case_dir, tiny_bundle, tmp_path, capsys):
    nodes["t2"] = nodes["flair"]
    before = _snapshot(scene, nodes)
    with pytest.raises(InputError, match="CASE_flair is selected for both t2 and flair: select a different volume"):
        arrays_from_nodes(nodes)
    _assert_unchanged(scene, nodes, before)

    shutil.copy(case_dir / case_file_name(case_dir.name, "flair"), case_dir / "CASE-00001-000-flair.nii.gz")
    files = _files(case_dir)
    code, _, err = _segment(case_dir, tmp_path / "out.seg.nrrd", tiny_bundle, capsys)
    assert code == 2 and err.count("\n") == 1
    # t1, t1ce and t2 were found: not "any of", and what to do is to keep one file per contrast.
    assert "Could not identify the BraTS inputs: flair is ambiguous" in err and "Keep one file per contrast" in err
    assert _files(case_dir) == files and not (tmp_path / "out.seg.nrrd").exists()


# --- a modality on another grid: resampled onto T1's, with a warning -------------------------

def _save_on_another_grid(array, origin, path):
    """Write a 1 mm volume (LPS, identity direction, `origin`) resampled with SimpleITK (linear)
    onto a grid rotated by 8 degrees, shifted by a few mm and spaced 1.5 x 1.5 x 2 mm."""
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    angle = math.radians(8)
    direction = (math.cos(angle), -math.sin(angle), 0, math.sin(angle), math.cos(angle), 0, 0, 0, 1)
    spacing = np.array([1.5, 1.5, 2.0])
    size = [int(n / s) + 4 for n, s in zip(image.GetSize(), spacing)]
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    half = np.array(direction).reshape(3, 3) @ (spacing * (np.array(size) - 1) / 2)
    new_origin = centre - half + np.array([3.0, -2.0, 1.5])
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, tuple(new_origin), tuple(spacing),
                              direction, 0.0, sitk.sitkFloat32)
    sitk.WriteImage(resampled, str(path))
    return "x".join(str(n) for n in size)


def test_different_geometry_is_resampled_with_a_warning(scene, tmp_path):
    case = make_case(7)
    # The phantom around its tumour (30 voxels of margin), to keep the test fast.
    wt = np.argwhere(region_masks(case.labels)["WT"])
    low, high = np.maximum(wt.min(axis=0) - 30, 0), wt.max(axis=0) + 31
    crop = tuple(slice(a, b) for a, b in zip(low, high))
    images = {m: np.ascontiguousarray(case.images[m][crop]) for m in MODALITIES}
    truth = region_masks(case.labels[crop])["WT"]
    matrix = BRATS_MATRIX.copy()
    matrix[:3, 3] = (BRATS_MATRIX @ np.array([*low[::-1], 1.0]))[:3]
    nodes = {m: bridge.volume_from_array(scene, images[m], matrix, f"P_{m}") for m in MODALITIES if m != "t2"}
    lps_origin = (-matrix[0, 3], -matrix[1, 3], matrix[2, 3])
    size = _save_on_another_grid(images["t2"], lps_origin, tmp_path / "P_t2.nii.gz")
    nodes["t2"] = bridge.load_volume(scene, tmp_path / "P_t2.nii.gz")
    before = _snapshot(scene, nodes)

    request = SAMBASegmentCore().prepare(nodes, method="threshold")
    original, resampled = images["t2"], request.images["t2"]
    assert resampled.shape == original.shape
    np.testing.assert_array_equal(request.images["flair"], images["flair"])  # same grid: untouched
    (warning,) = request.warnings
    reference_size = "x".join(str(n) for n in original.shape[::-1])
    assert warning.startswith(f"P_t2 was on a different voxel grid than P_t1 (size {size} vs {reference_size} voxels; "
                              "spacing (1.5, 1.5, 2) vs (1, 1, 1) mm; orientation (axes rotated or flipped); origin")
    assert "resampled onto P_t1's grid with linear interpolation" in warning and "register them" in warning
    _assert_unchanged(scene, nodes, before)

    # Back on T1's grid, T2 matches the known phantom: same tumour contrast, and best aligned
    # where it should be (a voxel's shift along any axis correlates worse).
    brain = (original > 0) & (resampled > 0)
    assert brain.sum() > 0.9 * (original > 0).sum()
    assert resampled[truth].mean() == pytest.approx(original[truth].mean(), rel=0.03)

    def correlation(shift, axis):
        moved = np.roll(original, shift, axis=axis)
        return np.corrcoef(moved[brain], resampled[brain])[0, 1]

    aligned = correlation(0, 0)
    assert aligned > 0.8
    assert all(correlation(shift, axis) < aligned - 0.01 for axis in range(3) for shift in (-1, 1))


def test_volumes_that_do_not_overlap_are_refused(scene, nodes):
    far = BRATS_MATRIX.copy()
    far[:3, 3] += (1000.0, 0.0, 0.0)
    nodes["t2"] = bridge.volume_from_array(scene, _image(5), far, "CASE_t2_elsewhere")
    before = _snapshot(scene, nodes)
    with pytest.raises(InputError, match="CASE_t2_elsewhere does not overlap CASE_t1 at all .*origin.*align them"):
        arrays_from_nodes(nodes)
    _assert_unchanged(scene, nodes, before)


# --- empty, constant, NaN -------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda a: np.zeros_like(a), r"CASE_t1ce is empty \(all voxels are 0\): check that the right volume is selected"),
    (lambda a: np.full_like(a, 42.0), r"CASE_t1ce is constant \(42.0\): check that the right volume is selected"),
    (lambda a: np.where(a > 300, np.nan, a), r"CASE_t1ce has \d+ NaN or infinite voxels: fix or re-export the volume"),
])
def test_empty_constant_or_nan_volume(scene, nodes, make, message):
    scene.RemoveNode(nodes["t1ce"])
    nodes["t1ce"] = bridge.volume_from_array(scene, make(_image(1)), BRATS_MATRIX, "CASE_t1ce")
    before = _snapshot(scene, nodes)
    with pytest.raises(InputError, match=message):
        SAMBASegmentCore().prepare(nodes)
    _assert_unchanged(scene, nodes, before)


# --- no tumour found, corrupt weights, out of memory -----------------------------------------

def test_no_tumour_found_is_an_empty_segmentation_and_a_message(case_dir, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out.seg.nrrd"
    code, stdout, err = _segment(case_dir, out, tiny_bundle, capsys, "--prompt", "yolo")  # the random YOLO finds nothing
    assert code == 0, err
    assert "No tumour found: the segmentation is empty. Try an ROI prompt (--roi) around the lesion." in stdout
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == [s.name for s in LABEL_SEGMENTS.values()]
    assert not seg["voxels"].any()


def test_corrupt_weight_file_is_named_and_nothing_is_written(case_dir, tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    weights = bundle / "sam.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    files = _files(case_dir)
    code, _, err = _segment(case_dir, tmp_path / "out.seg.nrrd", bundle, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{weights}: checksum mismatch" in err and "download or copy it again" in err
    assert _files(case_dir) == files and not (tmp_path / "out.seg.nrrd").exists()


class FullDeviceStandIn(torch.nn.Module):
    """Stand-in for a nearly full GPU: raises the CUDA out-of-memory error for batches above `fits`."""

    def __init__(self, module, fits):
        super().__init__()
        self.module, self.fits = module, fits

    def forward(self, x):
        if x.shape[0] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        return self.module(x)


def test_out_of_memory_falls_back_then_says_what_to_do(scene, nodes, tiny_bundle, caplog):
    core = SAMBASegmentCore()
    request = core.prepare(nodes, bundle=str(tiny_bundle), prompt="mask", device="cpu")
    # Boxes from a segmentation: every prompted slice of a view is encoded in batches (a drawn ROI
    # propagates, a slice at a time, and would never batch).
    request.mask = np.zeros(nodes["t1"].GetImageData().GetDimensions()[::-1], bool)
    request.mask[3:13, 6:21, 4:16] = True
    request.volume_key = "unconstrained"
    reference = core.compute(request)

    encoder = core.models(str(tiny_bundle), "cpu").sam.image_encoder
    original = encoder.patch_embed
    before = _snapshot(scene, nodes)
    try:
        encoder.patch_embed = FullDeviceStandIn(original, fits=3)
        request.volume_key = "constrained"  # no cached embeddings: encode again, in smaller batches
        with caplog.at_level("WARNING"):
            constrained = core.compute(request)
        np.testing.assert_array_equal(constrained.labels, reference.labels)
        np.testing.assert_array_equal(constrained.agreement, reference.agreement)
        # The small SAM is encoded 16 slices at a time on the CPU; the mask crosses 10 axial slices.
        assert "The SAM image encoder ran out of memory on cpu with 10 slices at once; retrying with 5." in caplog.text

        encoder.patch_embed = FullDeviceStandIn(original, fits=0)
        request.volume_key = "nothing fits"
        with pytest.raises(SamOutOfMemory, match="use device cpu, close other programs .*, or a smaller model"):
            core.compute(request)
    finally:
        encoder.patch_embed = original
    _assert_unchanged(scene, nodes, before)


def test_another_bundle_encodes_again_instead_of_reusing_the_first_ones_embeddings(nodes, tiny_bundle, tmp_path):
    """The widget keeps SAM's embeddings between Applies; choosing another bundle (another encoder)
    must not decode the first encoder's embeddings."""
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_samba_bundle(other, SambaModels(build_sam(TINY_SAM), localizer.build_detector(), voting.build_voting_net()),
                      {"sam": TINY_SAM, "yolo": localizer.CONFIG, "voting": voting.CONFIG},
                      {"name": "other", "version": "0", "description": "random", "licence": "Apache-2.0",
                       "intended_use": "tests", "preprocessing": {}, "labels": {}, "training": {}, "metrics": {}})
    core = SAMBASegmentCore()
    mask = np.zeros(nodes["t1"].GetImageData().GetDimensions()[::-1], bool)
    mask[3:13, 6:21, 4:16] = True

    def run(on_core, bundle):
        # core voting: the T1CE core outline would reuse this run's own T1CE embeddings (hits within one bundle)
        request = on_core.prepare(nodes, bundle=str(bundle), prompt="mask", device="cpu", core="voting")
        request.mask = mask
        return on_core.compute(request)

    run(core, tiny_bundle)
    switched = run(core, other)
    assert core.cache.misses > 0 and core.cache.hits == 0, "the other bundle's encoder encoded every slice itself"
    fresh = run(SAMBASegmentCore(), other)
    np.testing.assert_array_equal(switched.agreement, fresh.agreement)


def test_a_second_apply_on_the_same_volumes_reuses_the_3d_unets_box(nodes, tiny_bundle, monkeypatch):
    """The cascade prompt's ROI is found once per set of volumes: a second Apply (another preset, say)
    skips the 3D U-Net; volumes that changed are located again."""
    calls = []

    def counted_cascade(images, device, progress):  # the 3D U-Net itself: test_cascade_roi.py
        calls.append(sorted(images))
        piece = np.zeros(next(iter(images.values())).shape, bool)
        piece[8:10, 11:15, 9:11] = True
        return piece

    monkeypatch.setattr(logic, "cascade_whole_tumour", counted_cascade)
    core = SAMBASegmentCore()
    for preset in ("fast", "balanced"):
        core.compute(core.prepare(nodes, bundle=str(tiny_bundle), prompt="cascade", preset=preset))
    assert len(calls) == 1, "the second Apply on the same volumes ran the 3D U-Net again"
    nodes["flair"].GetImageData().Modified()  # the FLAIR volume was edited
    core.compute(core.prepare(nodes, bundle=str(tiny_bundle), prompt="cascade", preset="fast"))
    assert len(calls) == 2, "an edited volume must be located again"
