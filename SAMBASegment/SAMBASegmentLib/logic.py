"""SAMBASegment's logic without Qt: four volume nodes in, a segmentation (and agreement map) out.

The work is split in three so the GUI can run the middle part on a worker thread:
  prepare  (main thread)  nodes -> checked arrays, prompts in voxel coordinates
  compute  (any thread)   arrays -> SambaResult, with progress and cancel; touches no MRML
  finish   (main thread)  result -> segmentation node (+ agreement volume) in the scene
Everything that can fail happens before `finish`, so a failure or cancel leaves the scene as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, region_masks
from SAMBACore.inputs import check_image, check_same_geometry
from SAMBASegmentLib.pipeline import SambaResult, run_samba
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels, load_samba_models, resolve_bundle
from SAMBASegmentLib.threshold import segment_threshold

Progress = Callable[[float, str], None]  # fraction done 0-1, what is happening; may raise to cancel
METHODS = ("samba", "threshold")


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


@dataclass
class Request:
    """Everything `compute` needs, as plain data."""

    images: dict[str, np.ndarray]
    method: str = "samba"
    bundle: str = "phantom-demo"
    prompt: str = "yolo"
    mode: str = "samba"
    roi: tuple | None = None  # ((k, j, i) min, (k, j, i) max), inclusive
    mask: np.ndarray | None = None
    device: str = "cpu"
    volume_key: str = "case"
    options: dict = field(default_factory=dict)


class SAMBASegmentCore:
    """Keeps loaded models and SAM's slice embeddings between runs, so a second Apply is fast."""

    def __init__(self):
        self._models: dict[tuple, SambaModels] = {}
        self.cache = EmbeddingCache()

    def models(self, bundle: str, device: str) -> SambaModels:
        key = (str(resolve_bundle(bundle)), device)
        if key not in self._models:
            self._models = {key: load_samba_models(key[0], device)}  # one bundle in memory at a time
        return self._models[key]

    def prepare(self, nodes: dict, method: str = "samba", bundle: str = "phantom-demo", prompt: str = "yolo",
                mode: str = "samba", roi_node=None, prompt_segmentation=None, device: str = "cpu") -> Request:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        images = arrays_from_nodes(nodes)
        reference = nodes[MODALITIES[0]]
        roi = bridge.roi_node_to_voxels(roi_node, reference) if roi_node is not None else None
        mask = None
        if prompt_segmentation is not None:
            keys = {s.key: v for v, s in LABEL_SEGMENTS.items()}
            mask = region_masks(bridge.labels_from_segmentation(prompt_segmentation, reference, keys))["WT"]
        key = "|".join(f"{nodes[m].GetID()}@{nodes[m].GetImageData().GetMTime()}" for m in MODALITIES)
        return Request(images, method, bundle, prompt, mode, roi, mask, device, key)

    def compute(self, request: Request, progress: Progress | None = None) -> SambaResult:
        if request.method == "threshold":
            labels = segment_threshold(request.images)
            return SambaResult(labels, (labels > 0).astype(np.float32), {})
        models = self.models(request.bundle, request.device)
        return run_samba(request.images, models, prompt=request.prompt, mode=request.mode, roi=request.roi,
                         mask=request.mask, cache=self.cache, volume_key=request.volume_key,
                         device=request.device, progress=progress)

    def finish(self, scene, result: SambaResult, reference, output=None, name: str = "Tumour segmentation",
               agreement: bool = False):
        """Add (or fill `output`) the segmentation NETC, SNFH, ET on the reference grid; optionally the
        agreement map as a volume. Returns (segmentation node, agreement node or None)."""
        segmentation = bridge.segmentation_from_labels(scene, result.labels, reference, LABEL_SEGMENTS, name, into=output)
        agreement_node = None
        if agreement:
            agreement_node = bridge.volume_from_array(scene, result.agreement, bridge.ijk_to_ras(reference),
                                                      f"{segmentation.GetName()} SAM agreement")
        return segmentation, agreement_node

    def process(self, scene, nodes: dict, output=None, name: str = "Tumour segmentation",
                progress: Progress | None = None, **options):
        """prepare + compute + finish in one call (the Python console, the self-test, the CLI)."""
        request = self.prepare(nodes, **options)
        result = self.compute(request, progress)
        return self.finish(scene, result, nodes[MODALITIES[0]], output, name)[0]
