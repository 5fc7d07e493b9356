"""SAMBASegment's logic without Qt: four volume nodes in, one segmentation node out.

The segmenter is injected (any callable from the four arrays to internal labels), so the same
logic runs the threshold baseline today and the SAMBA pipeline once its models are bundled,
and tests can hand it whatever they need.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES
from SAMBACore.inputs import check_image, check_same_geometry
from SAMBASegmentLib.threshold import segment_threshold

Progress = Callable[[float, str], None]  # fraction done 0-1, what is happening


class Segmenter(Protocol):
    def __call__(self, images: dict[str, np.ndarray]) -> np.ndarray: ...


def arrays_from_nodes(nodes: dict) -> dict[str, np.ndarray]:
    """float32 copies of the four inputs, checked for emptiness, NaNs and matching grids."""
    missing = [m for m in MODALITIES if nodes.get(m) is None]
    if missing:
        raise ValueError(f"Select a volume for {', '.join(missing)}.")
    images = {m: bridge.array_from_volume(nodes[m]).astype(np.float32) for m in MODALITIES}
    for m in MODALITIES:
        check_image(nodes[m].GetName(), images[m])
    reference = nodes[MODALITIES[0]]
    check_same_geometry(
        reference.GetName(),
        (images[MODALITIES[0]].shape, bridge.ijk_to_ras(reference)),
        {nodes[m].GetName(): (images[m].shape, bridge.ijk_to_ras(nodes[m])) for m in MODALITIES[1:]},
    )
    return images


class SAMBASegmentCore:
    """Runs a segmenter on the four loaded volumes and adds the result to the scene at the end."""

    def __init__(self, segmenter: Segmenter = segment_threshold):
        self.segmenter = segmenter

    def segment_arrays(self, nodes: dict, progress: Progress | None = None) -> np.ndarray:
        progress = progress or (lambda fraction, message: None)
        progress(0.0, "Reading the four volumes")
        images = arrays_from_nodes(nodes)
        progress(0.1, "Segmenting")
        labels = self.segmenter(images)
        progress(0.9, "Creating the segmentation")
        return labels

    def process(self, scene, nodes: dict, output=None, name: str = "Tumour segmentation", progress: Progress | None = None):
        """Segment into `output` (or a new segmentation node): NETC, SNFH, ET on the T1 grid.

        Everything that can fail runs before the scene is touched, so a failure leaves it as it was.
        """
        labels = self.segment_arrays(nodes, progress)
        node = bridge.segmentation_from_labels(scene, labels, nodes[MODALITIES[0]], LABEL_SEGMENTS, name, into=output)
        if progress:
            progress(1.0, "Done")
        return node
