"""Which of the four contrasts a case has, and what can be told without some of them.

Shared by every module: SAMBA (SAMBASegmentLib/contrasts.py adds what its prompts read) and the
U-Nets (R2UNetSegmentLib/presence.py). Enhancing tumour is defined on T1CE (the tissue that takes up
the agent), and without it the tumour core cannot be told from edema either: without T1CE only the
whole tumour is produced, and the result says so.
"""

from __future__ import annotations

from SAMBACore.brats import ALL_REGIONS, MODALITIES
from SAMBACore.inputs import InputError

NAMES = {"t1": "T1", "t1ce": "T1CE", "t2": "T2", "flair": "FLAIR"}
WITHOUT_T1CE = ("No T1CE: only the whole tumour is segmented. Enhancing tumour is defined on contrast-enhanced "
                "T1, and without it the tumour core cannot be told from edema.")


def given(inputs: dict) -> tuple[str, ...]:
    """The contrasts of `inputs` (images or volume nodes, by modality) that are not None, MODALITIES order."""
    return tuple(m for m in MODALITIES if inputs.get(m) is not None)


def contrasts_present(images: dict) -> tuple[str, ...]:
    """The contrasts given (MODALITIES order); InputError when none is."""
    present = given(images)
    if not present:
        raise InputError("No image given: load at least one of T1, T1CE, T2 and FLAIR (all four give the best result).")
    return present


def whole_tumour_only(present) -> bool:
    return "t1ce" not in present


def regions_of(present) -> tuple[str, ...]:
    """The BraTS regions a result made from `present` holds: all three, or the whole tumour alone."""
    return ("WT",) if whole_tumour_only(present) else ALL_REGIONS


def describe(present) -> str:
    """'T1CE, FLAIR (no T1, T2)': what a result was made from, for its message."""
    used = ", ".join(NAMES[m] for m in present)
    missing = [NAMES[m] for m in MODALITIES if m not in present]
    return used + (f" (no {', '.join(missing)})" if missing else "")
