"""Random contrast curves for training (SAMBA's voting net, the U-Nets and the cascade): each image's
intensities passed through a random monotone curve, so that the phantoms' contrast ratios stop being a cue.

On phantoms the enhancing tumour sits 2-4 interquartile ranges above healthy brain on T1CE and
edema far above necrosis on FLAIR; on real BraTS scans (../shared/real-dev) enhancing tumour is
1.0-1.4 above, and necrosis about as bright as edema on FLAIR. A net trained on the phantoms'
ratios under-calls the core on real scans (docs/tried.md). A monotone curve keeps what defines the
sub-regions (which tissue is brighter than which) and changes by how much: MONAI's
RandHistogramShift (random control points on the intensity range, interpolated, non-decreasing),
the intensity augmentation of nnU-Net's and SynthSeg's family. The brain's mean and standard
deviation are put back, as the nets are given z-scored images; voxels outside the brain stay 0.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import RandHistogramShift

from SAMBACore.brats import MODALITIES

CONTROL_POINTS = (4, 8)  # few points: broad changes of contrast, not noise
MIN_BRAIN_VOXELS = 10  # a patch (nearly) outside the brain is left as it is


def apply_contrast_curves(inputs: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Inputs (the four images first, then anything else: votes, flags) with each image channel, with `probability`, passed
    through a random monotone curve; `inputs` itself when `probability` is 0, else a float32 copy."""
    if probability <= 0:
        return inputs
    out = inputs.astype(np.float32, copy=True)
    shift = RandHistogramShift(num_control_points=CONTROL_POINTS, prob=1.0)
    for c in range(len(MODALITIES)):
        channel = out[c]
        brain = channel != 0
        if rng.random() >= probability or brain.sum() < MIN_BRAIN_VOXELS:
            continue
        mean, std = channel[brain].mean(), channel[brain].std()
        shift.set_random_state(int(rng.integers(2**31)))
        curved = np.asarray(shift(channel[None]))[0][brain]
        curved = (curved - curved.mean()) / (curved.std() + 1e-6) * std + mean
        channel[:] = 0
        channel[brain] = curved
    return out
