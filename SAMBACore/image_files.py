"""Reading image files: every NIfTI, NRRD or MetaImage the project reads is checked here first.

ITK (SimpleITK) and Slicer's storage node read a .nii.gz that was cut short without any error:
the voxels the file no longer holds come back as zeros (measured: a phantom .nii.gz cut to its
first 1,000 bytes reads as a 240x240x155 volume with 105 non-zero voxels, and SAMBA segmented
the case with it). So before the voxels are read, the voxel count the header promises is
compared with the data the file holds, and a truncated, corrupt, empty or non-image file (an
HTML error page saved as .nii.gz, a DICOM slice, a PNG) is refused with one message naming it.

For gzip the check is cheap when the file is whole: the gzip trailer's size field must match
the header's; only when it does not is the stream decompressed to measure and explain. A flipped
byte inside a .nii.gz whose size is right is not caught (ITK does not catch it either).

ImageFileError is both an InputError (the user's input is at fault) and a BridgeError (a file
could not be read), so the callers that catch either see it.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

from SAMBACore.errors import BridgeError
from SAMBACore.inputs import InputError

_HEAD = 65536  # bytes looked at for a header (ITK writes NRRD headers of a few kB)
_COPY_AGAIN = "copy it again from the source"


class ImageFileError(InputError, BridgeError):
    """An image file cannot be read as it is; the message names it and says what to do."""


def check_image_file(path) -> None:
    """Raise ImageFileError unless `path` is an image file holding all the voxels its header
    promises. NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr, .seg.nrrd) and MetaImage (.mha, .mhd)
    are checked; other formats (a .png photo) only for being there and not empty."""
    path = Path(path)
    if not path.exists():
        raise ImageFileError(f"{path} does not exist: check the path.")
    if path.is_dir():
        raise ImageFileError(f"Could not read {path}: it is a folder, not an image file.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(_HEAD)
    except OSError as error:
        raise ImageFileError(f"Could not read {path}: {error.strerror or error} (check that the file can be read)."
                             ) from None
    if size == 0:
        raise ImageFileError(f"Could not read {path}: the file is empty (0 bytes): {_COPY_AGAIN}.")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, head, size)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, head, size)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, head, size)


def read_image(path):
    """The image as a SimpleITK image, after check_image_file; ITK's own errors become ImageFileError."""
    import SimpleITK as sitk

    check_image_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageFileError(f"Could not read {path}: {_itk_reason(error)}: check that it is a valid, complete "
                             "image file.") from None


def read_image_information(path):
    """A SimpleITK ImageFileReader with the file's header read (size, spacing, origin, direction),
    after check_image_file; the voxels are not read."""
    import SimpleITK as sitk

    check_image_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageFileError(f"Could not read {path}: {_itk_reason(error)}: check that it is a valid, complete "
                             "image file.") from None
    return reader


# --- what went wrong, in words -------------------------------------------------------------

def _truncated(path, expected: int, found: int) -> ImageFileError:
    return ImageFileError(f"Could not read {path}: the file is truncated or corrupt (expected {expected} bytes of "
                          f"voxel data, found {max(found, 0)}): {_COPY_AGAIN}.")


def _damaged(path, detail: str) -> ImageFileError:
    return ImageFileError(f"Could not read {path}: the file is truncated or corrupt ({detail}): {_COPY_AGAIN}.")


def _what_it_is(head: bytes) -> str | None:
    """What a file that is not the image its name says looks like, from its first bytes."""
    start = head[:512].lstrip().lower()
    if head.startswith(b"\x89PNG"):
        return "a PNG picture"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG picture"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (unpack it first)"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file (convert the series to NIfTI first: Slicer's DICOM module, or dcm2niix)"
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML or XML page (a download that failed?)"
    if head.startswith(b"NRRD"):
        return "a NRRD file (name it .nrrd)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if start.startswith((b"objecttype", b"ndims")):
        return "a MetaImage file (name it .mha)"
    if _nifti_layout(head) is not None:
        return "a NIfTI file (name it .nii or .nii.gz)"
    sample = head[:512]
    if sample and all(32 <= b < 127 or b in b"\t\r\n" for b in sample):
        return "a text file"
    return None


def _not_a(path, kind: str, head: bytes) -> ImageFileError:
    what = _what_it_is(head)
    found = f"it is {what}, not {kind}" if what else f"it is not {kind}"
    return ImageFileError(f"Could not read {path}: {found}: check that the right file is selected.")


def _itk_reason(error: Exception) -> str:
    """ITK's message without its source-file lines: the last line that says something."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception thrown", "sitk::ERROR", "/"))]
    reason = (useful or lines or ["unreadable"])[-1]
    return reason[:300].rstrip(".")


# --- gzip: how many bytes the stream holds --------------------------------------------------

def _gzip_payload(path, expected_total: int, offset: int = 0) -> int:
    """Decompressed size of the gzip data at `offset` of `path`: the trailer's size when it says
    `expected_total` (mod 2^32), else measured by decompressing (raising on damaged data)."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        stream.seek(size - 4)
        (isize,) = struct.unpack("<I", stream.read(4))
        if size - offset >= 18 and isize == expected_total % 2**32:
            return expected_total
        stream.seek(offset)
        total, decompressor = 0, zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            while chunk:
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error as error:
                    raise _Damaged(str(error)) from None
                if decompressor.eof:  # a gzip member ended; another may follow (concatenated gzip)
                    chunk = decompressor.unused_data
                    if chunk and not chunk.startswith(b"\x1f\x8b"):
                        chunk = b""  # trailing bytes after the last member: gzip ignores them too
                    if chunk:
                        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    chunk = b""
        if not decompressor.eof:
            raise _Truncated(total)
        return total


class _Damaged(Exception):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class _Truncated(Exception):
    def __init__(self, found: int):
        super().__init__(found)
        self.found = found


def _gzip_head(data: bytes, length: int) -> tuple[bytes, bool]:
    """(up to `length` decompressed bytes from the start of gzip `data`, which may be cut short;
    whether the gzip stream ended, whole, within them)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return decompressor.decompress(data, length), decompressor.eof
    except zlib.error:
        return b"", False


# --- NIfTI ----------------------------------------------------------------------------------

def _nifti_layout(header: bytes) -> tuple[int, int] | None:
    """(voxel offset, voxel bytes) from a NIfTI-1 or NIfTI-2 header, or None if it is not one."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348 and header[344:348] in (
                b"n+1\0", b"ni1\0"):
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            return _layout(dims, bitpix, max(offset, 352))
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540 and header[4:8] == b"n+2\0":
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            return _layout(dims, bitpix, max(offset, 544))
    return None


def _layout(dims, bitpix: int, offset: int) -> tuple[int, int]:
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]) or bitpix <= 0 or bitpix % 8:
        return (offset, -1)  # a header, but a damaged one
    return (offset, math.prod(dims[1:ndim + 1]) * bitpix // 8)


def _check_nifti(path, head: bytes, size: int) -> None:
    compressed = head.startswith(b"\x1f\x8b")
    # niftilib reads a plain NIfTI named .nii.gz too, so the name does not decide
    header, whole = _gzip_head(head, 1024) if compressed else (head[:1024], True)
    if compressed and len(header) < 348 and not whole:
        raise _damaged(path, f"its compressed data ends or breaks off inside the header, after {len(header)} bytes")
    layout = _nifti_layout(header)
    if layout is None:
        raise _not_a(path, "a NIfTI image", header)
    offset, expected = layout
    if expected < 0:
        raise _damaged(path, "its NIfTI header gives impossible dimensions")
    if not compressed:
        if size - offset < expected:
            raise _truncated(path, expected, size - offset)
        return
    try:
        found = _gzip_payload(path, offset + expected) - offset
    except _Truncated as cut:
        raise _truncated(path, expected, cut.found - offset) from None
    except _Damaged as damaged:
        raise _damaged(path, f"its compressed data is damaged: {damaged.detail}") from None
    if found < expected:
        raise _truncated(path, expected, found)


# --- NRRD -----------------------------------------------------------------------------------

_NRRD_TYPES = {1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                   "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                   "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                   "double")}
_NRRD_SIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}


def _header_fields(text: str, separator: str) -> dict[str, str]:
    """`key<separator>value` lines, keys lower-case; comments and NRRD's `key:=value` pairs left out."""
    fields = {}
    for line in text.splitlines():
        if line.startswith("#") or ":=" in line or separator not in line:
            continue
        key, value = line.split(separator, 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def _check_nrrd(path, head: bytes, size: int) -> None:
    if not head.startswith(b"NRRD"):
        raise _not_a(path, "a NRRD image", head)
    end = head.find(b"\n\n")
    crlf = head.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        end, gap = crlf, 4
    else:
        gap = 2
    detached_only = end < 0 and len(head) == size  # an .nhdr: the header may end at the end of the file
    if end < 0 and not detached_only:
        raise _damaged(path, "its NRRD header does not end")
    fields = _header_fields(head[: end if end >= 0 else size].decode("latin-1"), ":")
    data_start = end + gap if end >= 0 else size
    try:
        shape = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        shape = []
    item = _NRRD_SIZE.get(" ".join(fields.get("type", "").lower().split()))
    if not shape or item is None:
        return  # a layout this check does not know (block type, ...): ITK's reader decides
    expected = math.prod(shape) * item
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file:
        if data_file.split()[0].upper() == "LIST" or "%" in data_file:
            return  # several data files: ITK's reader checks them
        data_path = Path(path).parent / data_file
        if not data_path.is_file():
            raise ImageFileError(f"Could not read {path}: its voxel data file {data_path} does not exist: copy it "
                                 "too, into the same folder.")
        path, data_start = data_path, 0
        with open(path, "rb") as stream:
            head = stream.read(_HEAD)
        size = os.path.getsize(path)
    try:
        skip = int(fields.get("byte skip", "0"))
    except ValueError:
        skip = 0
    if encoding == "raw":
        if skip >= 0 and size - data_start - skip < expected:
            raise _truncated(path, expected, size - data_start - skip)
    elif encoding in ("gzip", "gz"):
        try:
            found = _gzip_payload(path, expected, data_start)
        except _Truncated as cut:
            raise _truncated(path, expected, cut.found) from None
        except _Damaged as damaged:
            raise _damaged(path, f"its compressed data is damaged: {damaged.detail}") from None
        if found < expected:
            raise _truncated(path, expected, found)


# --- MetaImage ------------------------------------------------------------------------------

_MET_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}


def _check_metaimage(path, head: bytes, size: int) -> None:
    text = head.decode("latin-1")
    if not text.lstrip().lower().startswith(("objecttype", "ndims", "comment")):
        raise _not_a(path, "a MetaImage", head)
    marker = text.find("ElementDataFile")
    if marker < 0:
        raise _damaged(path, "its MetaImage header has no ElementDataFile line")
    line_end = text.find("\n", marker)
    fields = _header_fields(text[: line_end if line_end >= 0 else len(text)], "=")
    if fields.get("elementdatafile", "").upper() != "LOCAL":
        return  # the voxels are in other files: ITK's reader checks them
    data_start = line_end + 1 if line_end >= 0 else size
    try:
        shape = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        return
    item = _MET_SIZE.get(fields.get("elementtype", "").upper())
    if not shape or item is None:
        return
    if fields.get("compresseddata", "false").lower() == "true":
        try:
            expected = int(fields.get("compresseddatasize", "-1"))
        except ValueError:
            expected = -1
        if expected > 0 and size - data_start < expected:
            raise _damaged(path, f"expected {expected} bytes of compressed voxel data, found {size - data_start}")
        return
    expected = math.prod(shape) * channels * item
    if size - data_start < expected:
        raise _truncated(path, expected, size - data_start)
