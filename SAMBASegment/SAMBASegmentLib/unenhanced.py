"""Unenhanced copies: a training case's tumour shown as if it did not take up contrast.

Real labelled cases that a site can fine-tune on are mostly enhancing gliomas; a voting net fine-tuned on them
learns that a tumour always has enhancing tumour, and calls it in a non-enhancing one (docs/tried.md, "The voting
nets fine-tuned on sixteen real cases"). A copy of an enhancing case whose core, on T1CE, looks as it does on T1
(no contrast uptake) and whose enhancing tumour is labelled non-enhancing core teaches the net what defines ET: the
T1CE brighter than T1, not the tumour's shape. T1 is mapped onto T1CE by a straight line fitted on the healthy brain,
so the core keeps the case's own texture and the T1CE's scale.
"""

from __future__ import annotations

import numpy as np

from SAMBACore.brats import ET, MODALITIES, NETC, region_masks

T1, T1CE = MODALITIES.index("t1"), MODALITIES.index("t1ce")


def can_erase(channels: np.ndarray, labels: np.ndarray) -> bool:
    """True when the case has T1 (the core's look without contrast) and enhancing tumour to erase."""
    return bool(channels[T1].any() and (labels == ET).any())


def erase_enhancement(channels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(channels, labels) of the unenhanced copy: image channels (4, K, J, I) z-scored as voting.image_channels
    gives them, internal labels. The T1CE inside the tumour core becomes a + b * T1, (a, b) fitted on the brain
    outside the whole tumour; ET becomes NETC. The inputs are not changed."""
    if not can_erase(channels, labels):
        raise ValueError("An unenhanced copy needs T1 and enhancing tumour in the case.")
    regions = region_masks(labels)
    healthy = (channels[T1] != 0) & (channels[T1CE] != 0) & ~regions["WT"]
    slope, intercept = np.polyfit(channels[T1][healthy], channels[T1CE][healthy], 1)
    out = channels.copy()
    core = regions["TC"]
    out[T1CE][core] = intercept + slope * channels[T1][core]
    return out, np.where(labels == ET, NETC, labels).astype(labels.dtype)
