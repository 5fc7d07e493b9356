"""Training the voting net without running SAM: votes made from the true whole tumour, perturbed.

Running LiteMedSAM for the votes of one training case costs minutes on a CPU (about a second a
slice), so a voting net for a pretrained SAM is trained on votes simulated the way such a SAM errs:
each vote the true whole tumour grown or shrunk by up to two voxels, and its first and last
slices along the vote's view sometimes missed (a box-prompted SAM loses a tumour's faint ends).
Half of the cases get one such vote copied twelve times, as the "fast" preset gives the net (one
vote run, the others filled in from it). In a bundle whose whole tumour is the votes' majority
(whole_tumour: votes) the net only splits what the votes outline, so it learns the sub-regions
from the images; the votes tell it where to look.

Contrast dropout (ModDrop, Neverova et al. 2016; the zero-filled missing input of HeMIS-style
training): with probability `drop` a sample's T1, T2 or FLAIR channels are zeroed at random, as
voting_inputs gives a contrast the case does not have. T1CE is never dropped: without it the net
is not used (only the whole tumour is produced).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SAMBACore.brats import MODALITIES
from SAMBASegmentLib.slices import VIEWS

MAX_GROW = 2  # voxels a simulated vote is grown or shrunk by, at most
MAX_MISSED_ENDS = 3  # slices a simulated vote may miss at each end of the tumour along its view
SINGLE_VOTE_FRACTION = 0.5  # cases whose 12 votes are one vote copied (as the fast preset fills them)
CROP_MARGIN = 40  # voxels kept around the tumour: the net runs within the votes' box + 24 (pipeline)
DROPPABLE = tuple(m for m in MODALITIES if m != "t1ce")


def one_vote(whole: np.ndarray, axis: int, rng: np.random.Generator) -> np.ndarray:
    """The true whole tumour grown or shrunk by 0-2 voxels, its end slices along `axis` maybe missed."""
    grow = int(rng.integers(-MAX_GROW, MAX_GROW + 1))
    vote = whole
    if grow > 0:
        vote = ndimage.binary_dilation(whole, iterations=grow)
    elif grow < 0:
        vote = ndimage.binary_erosion(whole, iterations=-grow)
        if not vote.any():  # a tumour thinner than the erosion: SAM would still see something
            vote = whole
    vote = vote.copy()
    occupied = np.flatnonzero(np.moveaxis(vote, axis, 0).reshape(vote.shape[axis], -1).any(axis=1))
    if occupied.size > 2 * MAX_MISSED_ENDS + 1:
        stack = np.moveaxis(vote, axis, 0)
        stack[occupied[0]:occupied[0] + int(rng.integers(0, MAX_MISSED_ENDS + 1))] = False
        end = occupied[-1] + 1
        stack[end - int(rng.integers(0, MAX_MISSED_ENDS + 1)):end] = False
    return vote


def simulated_votes(whole: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(12, K, J, I) bool votes, modality-major as the pipeline's ALL_VOTES, from the true whole tumour."""
    if rng.random() < SINGLE_VOTE_FRACTION:
        return np.repeat(one_vote(whole, 0, rng)[None], len(MODALITIES) * len(VIEWS), axis=0)
    return np.stack([one_vote(whole, axis, rng) for _ in MODALITIES for axis in range(len(VIEWS))])


def crop_to_tumour(arrays: list[np.ndarray], whole: np.ndarray, margin: int = CROP_MARGIN) -> list[np.ndarray]:
    """Each array (spatial axes last) cut to the tumour's bounding box grown by `margin`: what the
    net sees at inference, and a tenth of the memory of a whole case."""
    voxels = np.argwhere(whole)
    if voxels.size == 0:
        return arrays
    low = np.maximum(voxels.min(axis=0) - margin, 0)
    high = np.minimum(voxels.max(axis=0) + margin + 1, whole.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    return [np.ascontiguousarray(a[(Ellipsis,) + box]) for a in arrays]


def drop_contrasts(inputs: np.ndarray, rng: np.random.Generator, drop: float) -> np.ndarray:
    """With probability `drop`, a copy of voting inputs with a random non-empty set of T1, T2 and
    FLAIR zeroed (as voting_inputs gives a missing contrast); otherwise `inputs` itself."""
    if drop <= 0 or rng.random() >= drop:
        return inputs
    count = int(rng.integers(1, len(DROPPABLE) + 1))
    dropped = rng.choice(len(DROPPABLE), size=count, replace=False)
    inputs = inputs.copy()
    for d in dropped:
        inputs[MODALITIES.index(DROPPABLE[d])] = 0
    return inputs
