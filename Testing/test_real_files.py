"""Real files as they come (issue 14): truncated or corrupt files.

A .nii.gz cut short is read by ITK and by Slicer's storage node without an error, the missing voxels
as zeros; every read now goes through SAMBACore.image_files, which says so.
"""

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_bundles import write_tiny_samba_bundle

from SAMBACore import bridge, cli
from SAMBACore.brats import MODALITIES, case_file_name, find_case_files, read_case, region_masks
from SAMBACore.errors import BridgeError
from SAMBACore.image_files import ImageFileError, check_image_file, read_image, read_image_information
from SAMBACore.inputs import InputError

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
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"slicer-samba evaluate: {line}")
    assert _files(cases) == inputs  # the inputs are never touched


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
