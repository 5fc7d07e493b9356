"""A classical intensity-threshold segmenter: the baseline every learned model must beat.

It needs no weights, so it is what the demo and self-test run until the SAMBA models are
bundled, and afterwards the floor the benchmarks compare against. The rules are the ones a
radiologist reads off the images: edema and tumour are bright on FLAIR, the enhancing rim is
the brightest thing on T1CE, and whatever the rim encloses is core.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SAMBACore.brats import ET, NETC, SNFH

FLAIR_Z = 2.0  # whole tumour: FLAIR this many robust SDs above the brain median
T1CE_Z = 2.0  # enhancing: T1CE this many robust SDs above the brain median


def _robust_z(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Standardise by the brain's median and MAD, so a bright tumour does not shift the scale."""
    values = image[brain]
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * 1.4826 or 1.0
    return (image - median) / mad


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    return labelled == (1 + int(np.argmax(sizes)))


def _fill_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every slice of every view: a rim open in 3D is usually closed in 2D."""
    filled = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        filled |= np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    return filled


def segment_threshold(images: dict[str, np.ndarray]) -> np.ndarray:
    """Internal labels (1 NETC, 2 SNFH, 3 ET) from the four co-registered, skull-stripped images."""
    brain = images["flair"] > 0
    if not brain.any():
        return np.zeros(brain.shape, np.uint8)
    flair = ndimage.gaussian_filter(_robust_z(images["flair"], brain), 1.0)
    t1ce = ndimage.gaussian_filter(_robust_z(images["t1ce"], brain), 0.7)

    whole = ndimage.binary_opening((flair > FLAIR_Z) & brain, iterations=2)
    whole = _largest_component(whole)
    if not whole.any():
        return np.zeros(brain.shape, np.uint8)
    whole = ndimage.binary_fill_holes(ndimage.binary_closing(whole, iterations=2)) & brain

    enhancing = (t1ce > T1CE_Z) & ndimage.binary_dilation(whole, iterations=3)
    enhancing = ndimage.binary_opening(enhancing)
    core = _fill_per_slice(ndimage.binary_closing(enhancing, iterations=2)) | enhancing
    whole |= core

    labels = np.zeros(brain.shape, np.uint8)
    labels[whole] = SNFH
    labels[core] = NETC
    labels[enhancing] = ET
    return labels
