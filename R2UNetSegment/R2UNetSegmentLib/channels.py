"""Which channels a model gets: the four BraTS volumes when they are loaded together, else one volume."""

from __future__ import annotations

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import MODALITIES, ModalityError, modality_of
from SAMBACore.inputs import check_image, check_same_geometry


def gather_channels(scene, primary) -> tuple[np.ndarray, list[str]]:
    """(channels, names): float32 array (C, K, J, I) and the node name of each channel.

    A vector volume (a colour photo loaded in Slicer, one slice) gives one channel per component.
    If `primary` is one of the BraTS modalities and the other three are loaded on its grid,
    the four come in the order models are trained on (t1, t1ce, t2, flair); otherwise the
    primary volume alone, so a single MRI or a 2D photo loaded as a volume works too.
    """
    nodes = [primary]
    if modality_of(primary.GetName()) in MODALITIES:
        try:
            found = bridge.modality_nodes(scene)
        except ModalityError:
            found = {}
        if primary in found.values():
            nodes = [found[m] for m in MODALITIES]
    arrays = [bridge.array_from_volume(node).astype(np.float32) for node in nodes]
    for node, array in zip(nodes, arrays):
        check_image(node.GetName(), array)
    if arrays[0].ndim == 4:  # a vector volume (an RGB photo): one channel per component
        name = primary.GetName()
        return np.moveaxis(arrays[0], -1, 0).copy(), [f"{name} component {c}" for c in range(arrays[0].shape[-1])]
    check_same_geometry(
        primary.GetName(),
        (arrays[0].shape, bridge.ijk_to_ras(nodes[0])),
        {node.GetName(): (a.shape, bridge.ijk_to_ras(node)) for node, a in zip(nodes[1:], arrays[1:])},
    )
    return np.stack(arrays), [node.GetName() for node in nodes]
