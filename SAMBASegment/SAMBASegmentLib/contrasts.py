"""Which contrasts a case has, and what SAMBA can tell from them.

Real cases often lack one: low-field sites skip T1CE (the contrast agent costs money) or T2, and
many public cases carry FLAIR and one T1 only. SAMBA runs on any non-empty subset of the four:
SAM votes on the contrasts present (the votes of the others are filled in from those), the YOLO
localizer and the ROI's propagation read the first present of FLAIR, T2, T1CE, T1 (the whole
tumour is brightest on FLAIR and T2), and the voting network sees a missing contrast as zeros.

Enhancing tumour is defined on T1CE (it is the tissue that takes up the agent), and without it the
tumour core cannot be told from edema either: without T1CE only the whole tumour is produced, and
the result says so. Nothing is guessed and shown as if it were measured.
"""

from __future__ import annotations

# What every module shares (names, messages, which regions a set of contrasts gives) is in SAMBACore.
from SAMBACore.contrasts import (NAMES, WITHOUT_T1CE, contrasts_present, describe, given,
                                 regions_of, whole_tumour_only)
from SAMBASegmentLib.slices import views_and_contrasts

__all__ = ["FLAIR_ALONE_BOX", "NAMES", "PROMPT_ORDER", "WITHOUT_T1CE", "contrasts_present", "describe", "given",
           "prompt_contrast", "regions_of", "usable_pairs", "whole_tumour_only"]

PROMPT_ORDER = ("flair", "t2", "t1ce", "t1")  # the whole tumour stands out most on the first

# Measured, not guessed (docs/results.md, "The same twenty with fewer contrasts"): on 20 held-out real cases with
# FLAIR alone the 3D U-Net's box missed four tumours that a drawn box found.
FLAIR_ALONE_BOX = ("FLAIR alone: on 20 real cases we measured, the automatic box (the 3D U-Net's) missed 4 tumours "
                   "with FLAIR alone that a drawn box found (whole-tumour Dice 0.67 automatic, 0.81 with a drawn box). "
                   "Check that the outline covers the tumour; if not, draw a box around it (prompt 'Drawn ROI', --roi "
                   "on the command line).")


def prompt_contrast(present) -> str:
    """The contrast the localizer and the ROI's propagation read."""
    return next(m for m in PROMPT_ORDER if m in present)


def usable_pairs(pairs, present) -> tuple[tuple[str, str], ...]:
    """A preset's (contrast, view) pairs that the case has; when it has none of the preset's contrasts,
    the preset's views on prompt_contrast (a FLAIR-only preset on a case without FLAIR runs on T2, say)."""
    usable = tuple(p for p in pairs if p[0] in present)
    if usable:
        return usable
    return tuple((prompt_contrast(present), view) for view in views_and_contrasts(pairs)[0])
