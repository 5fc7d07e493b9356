"""The tumour core outlined by SAM on T1CE, around the enhancing tumour the voting net found (`core="t1ce"`, the default).

Why: on real scans the phantom-trained voting nets find the enhancing tumour well but split the core off
too small or too large (docs/tried.md, "Why the core (TC) is poor"). The core of an enhancing glioma is
the enhancing rim and what it encloses, one object on T1CE, which a Segment Anything pretrained on medical
images outlines from a box. So, on each axial slice that holds enhancing tumour, SAM on T1CE is boxed
around that slice's enhancing tumour (grown by MARGIN voxels, the project's usual box margin), and the
core there becomes SAM's outline inside the whole tumour, plus the enhancing tumour itself. Slices
without enhancing tumour keep the voting net's split, so a non-enhancing core is left as it was; the
whole tumour and the enhancing tumour never change. Measured in docs/results.md ("The core outlined on
T1CE"): better on the three real cases it was designed on and on a fourth held out from its design, worse on
the tuning phantoms (within issue 14's 0.03 on the held-out ones); the default since session 36, "voting"
keeps the voting net's split.
"""

from __future__ import annotations

import numpy as np

from SAMBACore.brats import ET, NETC, SNFH
from SAMBASegmentLib.prompts import boxes_from_mask
from SAMBASegmentLib.sam_runner import EmbeddingCache, segment_stack
from SAMBASegmentLib.slices import from_view_slices, prompted_slices

CORE_METHODS = ("voting", "t1ce")
DEFAULT_CORE = "t1ce"  # decided on a real case held out from the design (docs/results.md)
MARGIN = 5  # voxels around each slice's enhancing tumour, as the 3D U-Net's and drawn boxes grow


def outline_core(labels: np.ndarray, t1ce: np.ndarray, sam, cache: EmbeddingCache | None = None,
                 volume_key: str = "case") -> np.ndarray:
    """Labels (NETC, SNFH, ET) with the core re-outlined by SAM on T1CE on the axial slices holding ET.

    `cache`/`volume_key` as in pipeline.sam_votes: the T1CE axial slices SAM already encoded for its
    votes (preset balanced) are not encoded again.
    """
    enhancing = labels == ET
    boxes = boxes_from_mask(enhancing, "axial", margin=MARGIN)
    if not boxes:
        return labels
    prompted = prompted_slices(t1ce, "axial", boxes)
    outlined = from_view_slices(segment_stack(sam, prompted, boxes, cache, (volume_key, "t1ce", "axial")), "axial")
    core = (outlined & (labels > 0)) | enhancing
    with_enhancing = enhancing.any(axis=(1, 2))[:, None, None]  # axial slice k holds ET
    result = labels.copy()
    on_slices = with_enhancing & (labels > 0)
    result[on_slices] = SNFH
    result[on_slices & core] = NETC
    result[enhancing] = ET
    return result
