"""Which channels a model gets: the BraTS volumes loaded together (any of the four), else one volume."""

from __future__ import annotations

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import MODALITIES, ModalityError, assign_modalities, modality_of
from SAMBACore.inputs import check_image, check_same_geometry


def gather_channels(scene, primary) -> tuple[np.ndarray, list[str]]:
    """(channels, names): float32 array (C, K, J, I) and the node name of each channel.

    A vector volume (a colour photo loaded in Slicer, one slice) gives one channel per component.
    If `primary` is one of the BraTS modalities, it and the other BraTS volumes loaded (any of the
    four, each named by its modality, on its grid) come in the order models are trained on (t1,
    t1ce, t2, flair; brats_present tells which they are); otherwise the primary volume alone, so a
    single MRI or a 2D photo loaded as a volume works too.
    """
    nodes = [primary]
    if modality_of(primary.GetName()) in MODALITIES:
        found = brats_nodes(scene)
        if primary in found.values():
            nodes = [found[m] for m in MODALITIES if m in found]
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


def brats_nodes(scene) -> dict:
    """The loaded scalar volumes named as BraTS contrasts, by modality (any of the four); {} when a
    contrast is claimed by two volumes (then only the selected one is used)."""
    nodes = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            nodes.setdefault(node.GetName(), node)
    try:
        assigned = assign_modalities(list(nodes), allow_missing=True)
    except ModalityError:
        return {}
    return {key: nodes[name] for key, name in assigned.items()}


def brats_present(names) -> tuple[str, ...] | None:
    """The contrasts the gathered channels are (MODALITIES order), when every one is a distinct BraTS
    contrast; None otherwise (a photo, an MRI named otherwise)."""
    keys = tuple(modality_of(name) for name in names)
    if all(k in MODALITIES for k in keys) and len(set(keys)) == len(keys):
        return keys
    return None
