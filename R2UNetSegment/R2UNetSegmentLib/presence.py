"""Any set of contrasts for the U-Nets: missing channels zero, plus one presence flag per contrast.

A network trained with presence flags ("presence_flags": true in its component config) takes the
four BraTS channels (t1, t1ce, t2, flair; a missing one all zeros after normalisation) followed by
four flag channels, constant 1 where that contrast is present and 0 where it is missing: 8
channels (the cascade's stage 2 then adds its one-hot stage-1 labels). Training drops a random
subset of the contrasts of a sample with probability CONTRAST_DROPOUT (always keeping one), so one
model serves every subset. A network without flags (the bundles made before) takes exactly the
four contrasts and refuses fewer, saying what is missing.

Enhancing tumour is defined on T1CE, and without it the core cannot be told from edema: without
T1CE only the whole tumour is produced (brats.WHOLE_TUMOUR_SEGMENTS), as SAMBA does.
"""

from __future__ import annotations

import numpy as np

from SAMBACore.brats import MODALITIES
from SAMBACore.contrasts import NAMES, contrasts_present
from SAMBACore.inputs import InputError

ANY_CONTRAST_BUNDLE = "phantom-cascade-any"  # the bundled cascade trained with presence flags

CONTRAST_DROPOUT = 0.5  # share of training samples that lose some of their contrasts
# The sets real sites often have (issue 14): low-field sites skip T1CE (the agent costs money) or
# T2, and many public cases carry only FLAIR and one T1. Uniform dropout keeps FLAIR alone in 1 of
# 14 dropped samples; drop_contrasts(..., site_subsets=True) keeps one of these in half of them.
SITE_SUBSETS = (("flair",), ("t1", "flair"), ("t1ce", "flair"), ("t1ce", "t2"))


def has_flags(network) -> bool:
    """Whether the network was trained with presence flags (build_model sets the attribute from its config)."""
    return bool(getattr(network, "presence_flags", False))


def stack(images: dict) -> tuple[np.ndarray, tuple[str, ...]]:
    """(4, *S) float32 in MODALITIES order, zeros where a contrast is missing, and the contrasts present."""
    present = contrasts_present(images)
    shape = np.shape(images[present[0]])
    return np.stack([np.asarray(images[m], np.float32) if m in present else np.zeros(shape, np.float32)
                     for m in MODALITIES]), present


def with_flags(image: np.ndarray, present) -> np.ndarray:
    """(4, *S) image -> (8, *S): the missing channels zeroed, then one constant flag channel per contrast."""
    flags = np.array([m in present for m in MODALITIES], np.float32)
    out = np.empty((image.shape[0] + len(MODALITIES),) + image.shape[1:], np.float32)
    out[:len(MODALITIES)] = image * flags.reshape((-1,) + (1,) * (image.ndim - 1))
    out[len(MODALITIES):] = flags.reshape((-1,) + (1,) * (image.ndim - 1))
    return out


def drop_contrasts(rng: np.random.Generator, present, probability: float = CONTRAST_DROPOUT,
                   site_subsets: bool = False) -> tuple[str, ...]:
    """The contrasts a training sample keeps: all of `present`, or with `probability` a random
    non-empty proper subset of them (each equally likely); with `site_subsets`, half of those drops
    keep one of SITE_SUBSETS (of those `present` holds) instead."""
    present = tuple(present)
    if len(present) < 2 or rng.random() >= probability:
        return present
    if site_subsets:
        sites = [s for s in SITE_SUBSETS if set(s) < set(present)]
        if sites and rng.random() < 0.5:
            site = sites[rng.integers(len(sites))]
            return tuple(m for m in present if m in site)
    while True:
        keep = rng.random(len(present)) < 0.5
        if 0 < keep.sum() < len(present):
            return tuple(m for m, k in zip(present, keep) if k)


def check_contrasts(network, present, bundle: str = "the bundle") -> None:
    """InputError, before any work, when a network without presence flags is given fewer than four contrasts."""
    missing = [m for m in MODALITIES if m not in present]
    if missing and not has_flags(network):
        raise InputError(
            f"Missing {', '.join(NAMES[m] for m in missing)}: this network of {bundle} was trained on the four "
            "contrasts (T1, T1CE, T2, FLAIR) and takes only all four channels. Load the missing contrast(s), or "
            f"choose a bundle trained with contrast dropout, such as the bundled {ANY_CONTRAST_BUNDLE} (or your own: "
            "slicer-samba train unet|r2unet|cascade does so by default).")
