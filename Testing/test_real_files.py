"""Real files as they come (issue 14): truncated or corrupt files, volumes that are not skull-stripped,
and intensities stored at another scale, shifted, or as int16 instead of float32.

1. A .nii.gz cut short is read by ITK and by Slicer's storage node without an error, the missing
   voxels as zeros; every read now goes through SAMBACore.image_files, which says so.
2. A volume that looks not skull-stripped gets a warning (inputs.skull_strip_warning).
3. The same case scaled, shifted or stored as int16 gives the same segmentation, with SAMBA
   (phantom-demo, ROI prompt, preset fast) and with the U-Net (phantom-r2unet).
The case for 2 and 3 is a small synthetic brain on a 3 mm grid (an ellipsoid with CSF, grey and
white matter and a three-part tumour, the phantoms' contrasts), made in well under a second, so the
file stays fast; the phantoms and real-dev numbers the heuristic rests on are in inputs.py.
"""

import gzip
import json
import re
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from tiny_bundles import write_tiny_samba_bundle

from SAMBACore import bridge, cli
from SAMBACore.brats import MODALITIES, case_file_name, find_case_files, read_case, region_masks
from SAMBACore.errors import BridgeError
from SAMBACore.image_files import ImageFileError, check_image_file, read_image, read_image_information
from SAMBACore.inputs import (STRIPPED_BRAIN_LIMIT_ML, InputError, background_value, foreground_ml,
                              skull_strip_warning, zero_background)

SHAPE = (16, 24, 20)  # (k, j, i): a small case for the file checks
VOXEL_BYTES = 16 * 24 * 20 * 4  # float32
COPY_AGAIN = "copy it again from the source."


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(50, 400, shape).astype(np.float32)  # random: gzip cannot shrink it much
    image[:, :3] = 0
    return image


def _write(path, array, spacing=(1.0, 1.0, 1.0), compress=True):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), compress)
    return path


def _write_case(folder, images, labels=None, spacing=(1.0, 1.0, 1.0), dtype=np.float32):
    folder.mkdir(parents=True, exist_ok=True)
    for key in MODALITIES:
        _write(folder / case_file_name(folder.name, key), images[key].astype(dtype), spacing)
    if labels is not None:
        _write(folder / case_file_name(folder.name, "seg"), labels.astype(np.uint8), spacing)
    return folder


def _cut(path, keep: int):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def _gunzip_partial(data: bytes) -> int:
    """How many bytes a gzip stream cut short still decompresses to."""
    return len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data))


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. truncated, corrupt, not an image -----------------------------------------------------

def test_a_nii_gz_cut_short_is_refused_everywhere_it_is_read(tmp_path, scene):
    path = _cut(_write(tmp_path / "CASE-t2w.nii.gz", _image(0)), 1000)
    found = _gunzip_partial(path.read_bytes()) - 352  # the NIfTI-1 header and its 4 extension bytes
    expected = (f"Could not read {path}: the file is truncated or corrupt (expected {VOXEL_BYTES} bytes of voxel "
                f"data, found {found}): {COPY_AGAIN}")
    # What happened before: ITK reads it without complaint, the missing voxels as zeros.
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == SHAPE
    for read in (check_image_file, read_image, read_image_information):
        with pytest.raises(ImageFileError) as error:
            read(path)
        assert str(error.value) == expected
    before = scene.GetNumberOfNodes()
    with pytest.raises(BridgeError, match="truncated or corrupt"):  # an ImageFileError is a BridgeError too
        bridge.load_volume(scene, path)
    assert scene.GetNumberOfNodes() == before


def _nrrd(tmp_path, compress):
    return _write(tmp_path / ("gz.nrrd" if compress else "raw.nrrd"), _image(1), compress=compress)


def _nhdr_without_its_data(tmp_path):
    header = (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 20 24 16\nencoding: raw\nendian: little\n"
              b"data file: gone.raw\n")
    (tmp_path / "x.nhdr").write_bytes(header)
    return tmp_path / "x.nhdr"


def _flipped_isize(tmp_path):
    """A .nii.gz whose trailer's size field is wrong: the stream must be decompressed, which fails."""
    path = _write(tmp_path / "isize.nii.gz", _image(2))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def _file(tmp_path, name, content: bytes):
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


def _renamed(path, name):
    return path.rename(path.with_name(name))


CASES = {
    "raw .nii cut": (lambda t: _cut(_write(t / "a.nii", _image(1)), 20_000),
                     rf"the file is truncated or corrupt \(expected {VOXEL_BYTES} bytes of voxel data, found {20_000 - 352}\)"),
    "gzip .nrrd cut": (lambda t: _cut(_nrrd(t, True), 3000), rf"the file is truncated or corrupt \(expected {VOXEL_BYTES} bytes"),
    "raw .nrrd cut": (lambda t: _cut(_nrrd(t, False), 9000), rf"the file is truncated or corrupt \(expected {VOXEL_BYTES} bytes"),
    ".mha cut": (lambda t: _cut(_write(t / "a.mha", _image(1), compress=False), 9000),
                 rf"the file is truncated or corrupt \(expected {VOXEL_BYTES} bytes of voxel data"),
    ".nhdr without its data file": (_nhdr_without_its_data, r"its voxel data file .*gone.raw does not exist"),
    "gzip size field wrong": (_flipped_isize, r"the file is truncated or corrupt \(its compressed data is damaged: .*length"),
    "empty": (lambda t: _cut(_write(t / "e.nii.gz", _image(1)), 0), r"the file is empty \(0 bytes\)"),
    "an HTML page": (lambda t: _file(t, "p.nii.gz", b"<!DOCTYPE html><html>404</html>"),
                     r"it is an HTML or XML page \(a download that failed\?\), not a NIfTI image"),
    "a PNG": (lambda t: _file(t, "p.nii.gz", b"\x89PNG\r\n\x1a\n" + bytes(600)),
              r"it is a PNG picture, not a NIfTI image: check that the right file is selected"),
    "a DICOM file": (lambda t: _file(t, "d.nii", bytes(128) + b"DICM" + bytes(600)),
                     r"it is a DICOM file \(convert the series to NIfTI first"),
    "gzipped text": (lambda t: _file(t, "g.nii.gz", gzip.compress(b"hello\n" * 100)),
                     r"it is a text file, not a NIfTI image"),
    "a NRRD named .nii.gz": (lambda t: _renamed(_write(t / "n.nrrd", _image(1)), "n.nii.gz"),
                             r"it is a NRRD file \(name it \.nrrd\), not a NIfTI image"),
    "a folder": (lambda t: t, r"it is a folder, not an image file"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_or_wrong_files_are_named_and_explained(name, tmp_path):
    make, message = CASES[name]
    path = make(tmp_path)
    with pytest.raises(ImageFileError, match=rf"^Could not read {path}: {message}"):
        check_image_file(path)
    assert isinstance(ImageFileError("x"), InputError)  # the CLI, the batch and the widget catch it as bad input


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.nrrd", "raw.nrrd", "a.mha", "raw.mha", "plain.nii.gz",
                                  "two-members.nii.gz"])
def test_whole_files_pass(name, tmp_path):
    path = tmp_path / name
    if name == "plain.nii.gz":  # an uncompressed NIfTI named .gz: ITK reads it, so do we
        path.write_bytes(_write(tmp_path / "x.nii", _image(3)).read_bytes())
    elif name == "two-members.nii.gz":  # concatenated gzip members are one valid gzip file
        data = gzip.decompress(_write(tmp_path / "x.nii.gz", _image(3)).read_bytes())
        path.write_bytes(gzip.compress(data[:5000]) + gzip.compress(data[5000:]))
    else:
        _write(path, _image(3), compress=not name.startswith("raw"))
    check_image_file(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), _image(3))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, reseed):
    reseed()
    return write_tiny_samba_bundle(tmp_path_factory.mktemp("real-files") / "bundle")


def test_segment_batch_and_evaluate_name_the_truncated_file_and_write_nothing(tmp_path, tiny_bundle, capsys):
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:10, 10:15, 8:12] = 2
    cases = tmp_path / "cases"
    good = _write_case(cases / "GOOD-00001-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    bad = _write_case(cases / "BAD-00002-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    broken = _cut(bad / case_file_name(bad.name, "t2"), 1000)
    inputs = _files(cases)
    line = f"Could not read {broken}: the file is truncated or corrupt (expected {VOXEL_BYTES} bytes of voxel data"

    out = tmp_path / "out.seg.nrrd"
    code = cli.main(["segment", str(bad), "-o", str(out), "--bundle", str(tiny_bundle), "--device", "cpu",
                     "--prompt", "yolo"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"slicer-samba segment: {line}") and err.count("\n") == 1
    assert COPY_AGAIN in err and not out.exists()

    code = cli.main(["segment", str(cases), "-o", str(tmp_path / "batch"), "--bundle", str(tiny_bundle),
                     "--device", "cpu", "--prompt", "yolo"])
    err = capsys.readouterr().err
    assert code == 2 and f"Skipped {bad.name}: {line}" in err
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == [f"{good.name}.seg.nrrd"]

    code = cli.main(["evaluate", str(cases), "--bundle", str(tiny_bundle), "--device", "cpu", "--prompt", "roi"])
    captured = capsys.readouterr()
    assert code == 2 and f"Skipped {bad.name}: {line}" in captured.out  # the others are still scored
    assert "Mean over 1 case(s)" in captured.out and f"not scored ({bad.name})" in captured.err
    assert _files(cases) == inputs  # the inputs are never touched


def test_evaluate_names_a_case_file_with_nans_and_scores_the_others(tmp_path, tiny_bundle, capsys):
    """A NRRD keeps NaNs (ITK reads a NIfTI file's as 0): evaluate read them past the volume checks the
    modules make, and the U-Net's normalisation then ended the whole run without naming the case."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:10, 10:15, 8:12] = 2
    cases = tmp_path / "cases"
    _write_case(cases / "GOOD-00001-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    bad = _write_case(cases / "NAN-00002-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    flair = bad / case_file_name(bad.name, "flair")
    flair.unlink()
    with_nans = _image(3)
    with_nans[5, 5, 5:9] = np.nan
    nrrd = _write(bad / f"{bad.name}_flair.nrrd", with_nans)
    inputs = _files(cases)
    code = cli.main(["evaluate", str(cases), "--bundle", str(tiny_bundle), "--device", "cpu", "--prompt", "roi"])
    captured = capsys.readouterr()
    assert code == 2 and f"Skipped {bad.name}: {nrrd} has 4 NaN or infinite voxels" in captured.out, captured
    assert "Mean over 1 case(s)" in captured.out and _files(cases) == inputs


def test_training_and_preview_reads_go_through_the_check(tmp_path, capsys):
    from LoRATrainerLib.training_data import check_case_geometry

    from SAMBACore.preview import read_truth

    labels = np.zeros(SHAPE, np.uint8)
    case = _write_case(tmp_path / "CASE-00001-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    seg = case / case_file_name(case.name, "seg")
    _cut(seg, seg.stat().st_size // 2)
    files = find_case_files(case, need_seg=True)
    with pytest.raises(InputError, match=f"Could not read {seg}: the file is truncated or corrupt"):
        check_case_geometry(files)
    with pytest.raises(InputError, match=f"Could not read {seg}: the file is truncated or corrupt"):
        read_case(files)
    # The preview is drawn after the segmentation is written: it goes on without the truth, saying why.
    assert read_truth(seg, SHAPE) is None
    assert "truncated or corrupt" in capsys.readouterr().err


# --- the synthetic brain for 2 and 3 ---------------------------------------------------------

CONTRAST = {  # phantom.py's means: CSF, GM, WM, edema, enhancing, necrosis
    "t1": (250, 500, 650, 430, 480, 280), "t1ce": (260, 490, 610, 420, 950, 270),
    "t2": (950, 560, 380, 760, 600, 860), "flair": (150, 500, 400, 860, 640, 480)}
GRID, MM = (40, 60, 52), 3.0  # (k, j, i) voxels of 3 mm: 120 x 180 x 156 mm
HEAD_GRID = (54, 76, 66)  # room for a head round the brain: 162 x 228 x 198 mm
SEMI_AXES = (60.0, 85.0, 70.0)  # mm (k, j, i): 1496 mL, an adult brain


def synthetic_case(seed: int = 0, grid=GRID):
    """(images by modality, float32 with integer values and 0 around the brain; labels)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * MM for n in grid], indexing="ij")
    r = np.sqrt((z / SEMI_AXES[0]) ** 2 + (y / SEMI_AXES[1]) ** 2 + (x / SEMI_AXES[2]) ** 2)
    brain = r < 1
    ventricles = np.sqrt((z / 14) ** 2 + (y / 28) ** 2 + ((np.abs(x) - 11) / 7) ** 2) < 1
    csf = brain & ((r > 0.93) | ventricles)
    gm = brain & (r > 0.8) & ~csf
    wm = brain & ~csf & ~gm
    d = np.sqrt((z - 5) ** 2 + (y - 15) ** 2 + (x - 25) ** 2)
    labels = np.zeros(grid, np.uint8)
    labels[(d < 24) & brain] = 2
    labels[d < 14] = 3
    labels[d < 8] = 1
    images = {}
    for m in MODALITIES:
        image = np.zeros(grid, np.float32)
        for mask, value in zip((csf, gm, wm, labels == 2, labels == 3, labels == 1), CONTRAST[m]):
            image[mask] = value
        image = ndimage.gaussian_filter(image, 0.7) + rng.normal(0, 12, grid)
        images[m] = np.where(brain, np.rint(image), 0).astype(np.float32)
    return images, labels


def with_scalp(images, air_noise: bool = False, seed: int = 1):
    """The brain not skull-stripped: 7 mm of dark skull and 11 mm of bright scalp around it (a head
    without its face and neck, so less than a real one), and noise in the air if asked."""
    rng = np.random.default_rng(seed)
    brain = images["t1"] != 0
    distance = ndimage.distance_transform_edt(~brain) * MM
    skull, scalp = (distance > 0) & (distance <= 7), (distance > 7) & (distance <= 18)
    fat = {"t1": 900, "t1ce": 880, "t2": 700, "flair": 750}
    out = {}
    for m, image in images.items():
        image = image.copy()
        image[skull] = 40 + rng.normal(0, 10, skull.sum())
        image[scalp] = fat[m] * (1 + 0.05 * rng.normal(0, 1, scalp.sum()))
        if air_noise:
            air = ~(brain | skull | scalp)
            image[air] = np.hypot(rng.normal(0, 15, air.sum()), rng.normal(0, 15, air.sum()))
        out[m] = image.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_case()


@pytest.fixture(scope="module")
def synthetic_head_grid():
    return synthetic_case(grid=HEAD_GRID)


# --- 2. not skull-stripped: a warning -------------------------------------------------------

def test_skull_strip_heuristic(synthetic_head_grid):
    images, _ = synthetic_head_grid
    voxel_ml = MM ** 3 / 1000
    stripped = foreground_ml(images["t1"], voxel_ml)
    assert stripped == pytest.approx(4 / 3 * np.pi * np.prod(SEMI_AXES) / 1000, rel=0.02)  # 1496 mL
    assert skull_strip_warning(images, voxel_ml) is None
    for shifted in (images["t1"] + 1000, images["t1"] - 500):  # the background is not 0, the brain the same
        assert foreground_ml(shifted, voxel_ml) == stripped
    head = with_scalp(images)
    assert foreground_ml(head["t1"], voxel_ml) > STRIPPED_BRAIN_LIMIT_ML  # 2924 mL; 7313 (the whole grid) with air noise
    warning = skull_strip_warning({f"CASE_{m}": head[m] for m in MODALITIES}, voxel_ml)
    assert warning.startswith("CASE_t1 (") and "CASE_flair (" in warning
    assert "do not look skull-stripped" in warning and "strip the skull first" in warning
    noisy = with_scalp(images, air_noise=True)
    assert background_value(noisy["t1"]) == 0 and foreground_ml(noisy["t1"], voxel_ml) == pytest.approx(
        np.prod(HEAD_GRID) * voxel_ml)  # no one value around the head: all of the grid counts
    assert "CASE (" in skull_strip_warning({"CASE": noisy["t1"]}, voxel_ml)


def _ras_roi(node, labels) -> str:
    """--roi for the truth's box (voxel corners to RAS mm through the node's geometry)."""
    voxels = np.argwhere(labels > 0)
    corners = [bridge.ijk_to_ras(node) @ np.array([*corner[::-1], 1.0]) for corner in (voxels.min(0), voxels.max(0))]
    return ",".join(f"{v:.1f}" for corner in corners for v in corner[:3])


def test_segment_warns_about_a_head_that_is_not_skull_stripped(synthetic_head_grid, tmp_path, tiny_bundle, capsys,
                                                               scene):
    from SAMBASegmentLib.logic import arrays_from_nodes

    images, labels = synthetic_head_grid
    spacing = (MM,) * 3
    stripped = _write_case(tmp_path / "STRIPPED-00001-000", images, spacing=spacing)
    head = _write_case(tmp_path / "HEAD-00002-000", with_scalp(images), spacing=spacing)
    nodes = {m: bridge.load_volume(scene, f) for m, f in find_case_files(stripped).items()}
    assert arrays_from_nodes(nodes)[1] == []
    nodes = {m: bridge.load_volume(scene, f) for m, f in find_case_files(head).items()}
    (warning,) = arrays_from_nodes(nodes)[1]  # the Slicer widget shows the request's warnings in a dialog
    assert "HEAD-00002-000-t1n (" in warning and "not look skull-stripped" in warning

    code = cli.main(["segment", str(head), "-o", str(tmp_path / "head.seg.nrrd"), "--bundle", str(tiny_bundle),
                     "--device", "cpu", "--preset", "fast", f"--roi={_ras_roi(nodes['t1'], labels)}"])
    captured = capsys.readouterr()
    assert code == 0 and (tmp_path / "head.seg.nrrd").exists()  # a warning, not an error
    assert "Warning: HEAD-00002-000-t1n (" in captured.err and "strip the skull first" in captured.err


def test_segment_help_says_inputs_must_be_skull_stripped(capsys):
    for command in ("segment", "r2unet"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "must be skull-stripped" in re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))


# --- 3. the same case at another intensity scale ----------------------------------------------

# name -> (how the stored intensities are made from the case's, the type they are stored as)
# (x10 and -500 in one: each pipeline run costs seconds; normalise's test takes them one at a time)
VARIANTS = {
    "as stored": (lambda a: a, np.float32),
    "x10 - 500 (below 0)": (lambda a: a * 10 - 500, np.float32),
    "+1000, int16": (lambda a: a + 1000, np.int16),
}


@pytest.fixture(scope="module")
def variant_cases(synthetic, tmp_path_factory):
    images, labels = synthetic
    root = tmp_path_factory.mktemp("variants")
    folders = {}
    for index, (name, (change, dtype)) in enumerate(VARIANTS.items()):
        folders[name] = _write_case(root / f"CASE-{index:05d}-000", {m: change(images[m]) for m in MODALITIES},
                                    labels, spacing=(MM,) * 3, dtype=dtype)
    folders["int16"] = _write_case(root / "CASE-00009-000", images, labels, spacing=(MM,) * 3, dtype=np.int16)
    return folders


def _load(scene, folder):
    return {m: bridge.load_volume(scene, f) for m, f in find_case_files(folder).items()}


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _agreement(labels, reference):
    ours, theirs = region_masks(labels), region_masks(reference)
    return {region: round(_dice(ours[region], theirs[region]), 4) for region in ours}


def test_int16_and_float32_of_the_same_values_load_alike(variant_cases, synthetic):
    from SAMBASegmentLib.logic import arrays_from_nodes

    scene = bridge.get_scene()
    as_float = arrays_from_nodes(_load(scene, variant_cases["as stored"]))[0]
    as_int = arrays_from_nodes(_load(scene, variant_cases["int16"]))[0]
    for m in MODALITIES:
        np.testing.assert_array_equal(as_int[m], as_float[m])
        np.testing.assert_array_equal(as_float[m], synthetic[0][m])
    shifted = read_case(find_case_files(variant_cases["+1000, int16"]))[0]
    np.testing.assert_array_equal(shifted["t1"], synthetic[0]["t1"])  # read_case moves the background to 0 too


def test_zero_background_and_normalise_do_not_assume_0_is_background(synthetic):
    from R2UNetSegmentLib.inference import normalise

    flair = synthetic[0]["flair"]
    assert zero_background(flair) is flair  # nothing to move: the same array, no copy
    z_scored = (flair - flair.mean()) / flair.std()  # the whole grid z-scored: the background is negative
    assert background_value(z_scored) == pytest.approx(-flair.mean() / flair.std())
    reference = normalise(flair[None])
    for changed in (flair * 10, flair + 1000, flair - 500, z_scored):
        np.testing.assert_allclose(normalise(changed[None]), reference, atol=2e-4)


@pytest.fixture(scope="module")
def samba_models(one_thread_module):
    from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

    return load_samba_models(resolve_bundle("phantom-demo"), "cpu")


@pytest.fixture(scope="module")
def samba_results(samba_models, variant_cases, synthetic):
    """SAMBA on each variant, as `segment` runs it: files -> Slicer's storage node -> the logic's
    arrays -> the pipeline (ROI prompt from the truth, preset fast: SAM on FLAIR axially)."""
    from SAMBASegmentLib.evaluation import truth_roi
    from SAMBASegmentLib.logic import arrays_from_nodes
    from SAMBASegmentLib.pipeline import run_samba

    roi = truth_roi(synthetic[1])
    results = {}
    for name in VARIANTS:
        images, _ = arrays_from_nodes(_load(bridge.get_scene(), variant_cases[name]))
        results[name] = run_samba(images, samba_models, prompt="roi", roi=roi, preset="fast").labels
    return results


def test_samba_segments_scaled_shifted_and_int16_alike(samba_results, synthetic):
    reference = samba_results["as stored"]
    assert _agreement(reference, synthetic[1])["WT"] > 0.6  # a real segmentation to compare (measured 0.77)
    for name in VARIANTS:
        agreement = _agreement(samba_results[name], reference)
        assert min(agreement.values()) > 0.99, (name, agreement)


@pytest.fixture(scope="module")
def unet_results(variant_cases, one_thread_module):
    """The U-Net (phantom-r2unet) on each variant, as `r2unet` runs it (the four volumes gathered
    from the scene, normalised, the whole volume at once)."""
    from R2UNetSegmentLib.logic import R2UNetSegmentCore

    core, results = R2UNetSegmentCore(), {}
    for name in VARIANTS:
        scene = bridge.get_scene()
        nodes = _load(scene, variant_cases[name])
        request = core.prepare(scene, nodes["t1"], model="unet", mode="full", device="cpu")
        results[name] = core.compute(request).labels
    return results


def test_unet_segments_scaled_shifted_and_int16_alike(unet_results, synthetic):
    reference = unet_results["as stored"]
    assert _agreement(reference, synthetic[1])["WT"] > 0.8  # measured 0.997
    for name in VARIANTS:
        agreement = _agreement(unet_results[name], reference)
        assert min(agreement.values()) > 0.99, (name, agreement)


def test_bench_yolo_scores_raw_and_filtered_boxes_per_case(tmp_path, tiny_bundle, capsys):
    from SAMBASegmentLib.localizer import KEEP, KEEP_CHOICES

    labels = np.zeros(SHAPE, np.uint8)
    labels[6:10, 10:15, 8:12] = 2
    _write_case(tmp_path / "cases" / "GOOD-00001-000", {m: _image(i) for i, m in enumerate(MODALITIES)}, labels)
    code = cli.main(["bench", "yolo", str(tmp_path / "cases"), "--bundle", str(tiny_bundle), "--json"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = [r["boxes"] for r in rows]
    assert code == 0 and kinds[:2] == ["raw", "consistent"] and len(kinds) == 2 + len(KEEP_CHOICES)
    assert sum("(used)" in kind for kind in kinds) == 1 and f"main runs {KEEP:g} as ROIs (used)" in kinds
    assert all(r["tumour_slices"] == 4 and 0 <= r["recall"] <= 1 and 0 <= r["slice_dice"] <= 1 for r in rows)
    assert rows[1]["false_slices"] <= rows[0]["false_slices"]  # the filter only ever removes boxes
