"""Known pretrained weights and their downloads into a per-user cache, always checked by sha256.

A download goes to `<name>.part` and is moved into place only once its sha256 matched, so a failed
or interrupted download never leaves a file that looks usable. Where downloads are blocked the user
picks a copy fetched elsewhere (`local_file`); it is checked the same way before it is used.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse


from .bundles import BundleError, sha256_file, verify_sha256

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# sha256 values as registered in computational-cell-analytics/micro-sam (micro_sam/util.py,
# _CHECKSUMS) and, identically, mazurowski-lab/SlicerSegmentWithSAM (SegmentWithSAM.py, passed to
# SampleData's downloadFileIntoCache); sizes as several checkpoint registries state them.
OFFICIAL_SAM = {
    "vit_b": {"url": _SAM_URL + "sam_vit_b_01ec64.pth", "size_bytes": 375_042_383, "licence": "Apache-2.0",
              "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"},
    "vit_l": {"url": _SAM_URL + "sam_vit_l_0b3195.pth", "size_bytes": 1_249_524_607, "licence": "Apache-2.0",
              "sha256": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"},
    "vit_h": {"url": _SAM_URL + "sam_vit_h_4b8939.pth", "size_bytes": 2_564_550_879, "licence": "Apache-2.0",
              "sha256": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"},
}
_CHUNK = 1 << 20


class DownloadError(BundleError):
    """A weight file could not be obtained; the one-line message says what happened and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("SLICER_SAMBA_CACHE") or Path.home() / ".cache" / "slicer-samba")


def fetch(url, sha256, filename=None, progress=None, local_file=None, cache=None, timeout=30) -> Path:
    """Return the cached, verified file for `url`, downloading it (or copying `local_file`) if needed.

    progress(done_bytes, total_bytes_or_None) is called as data arrives; it may raise to cancel.
    """
    filename = filename or Path(urlparse(url).path).name
    if not sha256:
        raise DownloadError(f"{filename}: no known sha256, so it cannot be verified; pass the expected sha256")
    sha256 = sha256.lower()
    folder = Path(cache) if cache else cache_dir()
    final, part = folder / filename, folder / (filename + ".part")
    if final.is_file() and sha256_file(final) == sha256:
        return final
    done = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if local_file is not None:
            _copy_local(Path(local_file), part, filename, sha256)
        else:
            got = _download(url, part, filename, progress, timeout)
            if got != sha256:
                raise DownloadError(f"{filename} downloaded from {url} is corrupt (sha256 mismatch: expected {sha256}, "
                                    f"got {got}); it was deleted: try again, or choose a copy with 'Local file'")
        os.replace(part, final)  # atomic: a good cached file is only ever replaced by a verified one
        done = True
        return final
    except urllib.error.HTTPError as e:
        raise DownloadError(f"Could not download {filename} from {url} (HTTP {e.code} {e.reason}). Check the "
                            "address, or download it on another computer and choose it with 'Local file'.") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        reason = getattr(reason, "strerror", None) or str(reason) or type(e).__name__
        raise DownloadError(f"Could not download {filename} from {url} ({reason}). Download it on another computer "
                            "and choose it with 'Local file', or set a proxy (HTTPS_PROXY).") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(f"Not enough disk space in {folder} for {filename}. Free some space, or set "
                                "SLICER_SAMBA_CACHE to a folder on a larger disk.") from None
        raise DownloadError(f"Could not write {filename} in {folder} ({e.strerror or e}). Set SLICER_SAMBA_CACHE "
                            "to a writable folder.") from None
    finally:
        if not done:
            part.unlink(missing_ok=True)


def _download(url, part: Path, filename, progress, timeout) -> str:
    """Stream `url` into `part`, hashing as it goes; return the sha256 of what arrived."""
    digest, done = hashlib.sha256(), 0
    # A fresh opener reads the proxy settings (HTTPS_PROXY, NO_PROXY) as they are now.
    opener = urllib.request.build_opener()
    request = urllib.request.Request(url, headers={"User-Agent": "SlicerSAMBA"})
    with opener.open(request, timeout=timeout) as response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if progress:
            progress(0, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if total is not None and done != total:
        raise DownloadError(f"Could not download {filename} from {url} (the connection closed after {done} of "
                            f"{total} bytes). Try again, or download it on another computer and choose it with "
                            "'Local file'.")
    return digest.hexdigest()


def _copy_local(source: Path, part: Path, filename, sha256) -> None:
    if not source.is_file():
        raise DownloadError(f"{source}: file not found; choose the downloaded {filename}")
    got = sha256_file(source)
    if got != sha256:
        raise DownloadError(f"{source} is not a good copy of {filename} (sha256 mismatch: expected {sha256}, got "
                            f"{got}); it is corrupt or another file: delete it, download it again and choose it")
    shutil.copyfile(source, part)
    verify_sha256(part, sha256)  # the copy itself could be short (disk trouble)


def fetch_official_sam(model_type, progress=None, local_file=None, cache=None) -> Path:
    entry = _official(model_type)
    return fetch(entry["url"], entry["sha256"], progress=progress, local_file=local_file, cache=cache)


def _official(model_type) -> dict:
    if model_type not in OFFICIAL_SAM:
        raise BundleError(f"unknown SAM model type '{model_type}'; choose one of {', '.join(OFFICIAL_SAM)}")
    return OFFICIAL_SAM[model_type]
