"""SAMBASegment's logic without Qt: four volume nodes in, a segmentation (agreement map, volume table) out.

The work is split in three so the GUI can run the middle part on a worker thread:
  prepare  (main thread)  nodes -> checked arrays, prompts in voxel coordinates
  compute  (any thread)   arrays -> SambaResult, with progress and cancel; touches no MRML
  finish   (main thread)  result -> segmentation node (+ agreement volume, volume table) in the scene
Everything that can fail happens before `finish`, so a failure or cancel leaves the scene as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, NamedTuple

import numpy as np

from SAMBACore import bridge
from SAMBACore.brats import (ALL_REGIONS, LABEL_SEGMENTS, MODALITIES, REGION_SEGMENTS, internal_labels_of,
                             only_whole_tumour, region_masks, segments_for)
from SAMBACore.bundle_names import DEFAULT_BUNDLE
from SAMBACore.inputs import InputError, check_image, geometry_differences, skull_strip_warning, zero_background
from SAMBACore.metrics import volumes_ml
from SAMBASegmentLib.cascade_roi import cascade_whole_tumour
from SAMBASegmentLib.contrasts import given
from SAMBASegmentLib.core_outline import DEFAULT_CORE
from SAMBASegmentLib.pipeline import SambaResult, run_samba
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels, load_samba_models, resolve_bundle
from SAMBASegmentLib.threshold import segment_threshold

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # fraction done 0-1, what is happening; may raise to cancel
METHODS = ("samba", "threshold")


class Outputs(NamedTuple):
    """What `finish` added to the scene."""

    segmentation: object  # vtkMRMLSegmentationNode
    agreement: object | None  # vtkMRMLScalarVolumeNode, when asked for
    volumes: object | None  # vtkMRMLTableNode, when asked for


# A segmentation's agreement map and volume table, refilled by the next run into that segmentation.
AGREEMENT_REFERENCE, VOLUME_TABLE_REFERENCE = "SAMBAAgreementMap", "SAMBAVolumeTable"


def volume_columns(labels: np.ndarray, reference, regions=ALL_REGIONS) -> dict[str, list]:
    """Sub-region volumes in mL (NETC, SNFH, ET, TC, WT) as table columns, on the reference's voxel size;
    WT alone for a whole-tumour-only result (no T1CE)."""
    volumes = volumes_ml(internal_labels_of(labels, regions), tuple(reversed(reference.GetSpacing())))
    if only_whole_tumour(regions):
        volumes = {"WT": volumes["WT"]}
    names = {s.key: s.name for s in (*LABEL_SEGMENTS.values(), *REGION_SEGMENTS.values())}
    return {"Region": list(volumes), "Name": [names[key] for key in volumes],
            "Volume (mL)": [round(ml, 3) for ml in volumes.values()]}


def reference_node(nodes: dict):
    """The volume whose grid the inputs and the result are on: the first given of T1, T1CE, T2, FLAIR."""
    present = given(nodes)
    if not present:
        raise InputError("No volume selected: select at least one of T1, T1CE, T2 and FLAIR (all four give the "
                         "best result; without T1CE only the whole tumour is segmented).")
    return nodes[present[0]]


def arrays_from_nodes(nodes: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """float32 copies of the inputs given (any of the four) on the reference's grid (reference_node),
    checked for emptiness and NaNs, with their background moved to 0 (inputs.zero_background); and
    warnings.

    A volume on another grid is resampled onto the reference's (linear interpolation through both
    IJK-to-RAS matrices), with a warning naming it and what differed; one that does not overlap
    the reference at all is refused. Volumes that look not skull-stripped get a warning too
    (inputs.skull_strip_warning). The nodes themselves are never changed.
    """
    reference = reference_node(nodes)
    present = given(nodes)
    for a, b in combinations(present, 2):
        if nodes[a] is nodes[b]:
            raise InputError(f"{nodes[a].GetName()} is selected for both {a} and {b}: "
                             "select a different volume for each modality.")
    reference_grid = None  # the reference's, set on the first pass
    images, warnings = {}, []
    for m in present:
        node = nodes[m]
        array = bridge.array_from_volume(node).astype(np.float32)
        check_image(node.GetName(), array)  # before resampling, which would smear NaNs around
        array = zero_background(array)
        grid = (array.shape, bridge.ijk_to_ras(node))
        reference_grid = grid if node is reference else reference_grid
        differences = geometry_differences(reference_grid, grid)
        if differences:
            array, covered = bridge.resample_to_reference(node, reference)
            what = "; ".join(differences)
            if covered == 0:
                raise InputError(f"{node.GetName()} does not overlap {reference.GetName()} at all ({what}): check that "
                                 "both are from the same scan session, or align them (Transforms or registration) "
                                 "and try again.")
            warnings.append(_resampling_warning(node.GetName(), reference.GetName(), what, covered))
            check_image(f"{node.GetName()} resampled onto {reference.GetName()}", array)
            array = zero_background(array)
        images[m] = array
    skull = skull_strip_warning({nodes[m].GetName(): images[m] for m in images}, bridge.voxel_mm3(reference) / 1000.0)
    return images, warnings + ([skull] if skull else [])


def _resampling_warning(name: str, reference: str, what: str, covered: float) -> str:
    partly = f"; it covers only {covered:.0%} of {reference}, the rest is 0" if covered < 0.995 else ""
    return (f"{name} was on a different voxel grid than {reference} ({what}): resampled onto {reference}'s grid "
            f"with linear interpolation{partly}. Check that the volumes line up; register them first if they do not.")


@dataclass
class Request:
    """Everything `compute` needs, as plain data."""

    images: dict[str, np.ndarray]
    method: str = "samba"
    bundle: str = DEFAULT_BUNDLE
    prompt: str = "cascade"
    mode: str = "samba"
    roi: tuple | None = None  # ((k, j, i) min, (k, j, i) max), inclusive
    mask: np.ndarray | None = None
    device: str = "cpu"
    volume_key: str = "case"
    preset: str = "auto"  # which contrasts and views vote (pipeline.PRESETS)
    sam_file: str | None = None  # a SAM checkpoint the user picked, instead of the bundle's (picked_sam.py)
    sam_type: str | None = None
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. a volume was resampled: show them to the user
    voxel_mm3: float = 1.0  # of the reference grid: the smallest tumour-core piece kept is in mm^3
    core: str = DEFAULT_CORE  # how the tumour core is outlined (core_outline.CORE_METHODS)


class SAMBASegmentCore:
    """Keeps loaded models, SAM's slice embeddings and the 3D U-Net's box between runs, so a second
    Apply on the same volumes is fast."""

    def __init__(self):
        self._models: dict[tuple, SambaModels] = {}
        self.cache = EmbeddingCache()
        self._located: dict[tuple, np.ndarray] = {}  # (volume_key, device) -> the cascade's tumour

    def locate(self, volume_key: str, device: str, images, progress):
        """cascade_whole_tumour for these volumes, run once: a second Apply (another preset or mode) skips the
        3D U-Net (about 15 s on a CPU). One set of volumes is remembered, as for the models."""
        key = (volume_key, device)
        if key not in self._located:
            self._located = {key: cascade_whole_tumour(images, device, progress)}
        return self._located[key]

    def models(self, bundle: str, device: str, sam_file: str | None = None, sam_type: str | None = None) -> SambaModels:
        key = (str(resolve_bundle(bundle)), device, sam_file, sam_type)
        if key not in self._models:
            # one set of models in memory at a time
            self._models = {key: load_samba_models(key[0], device, sam_file=sam_file, sam_type=sam_type)}
            self.cache.clear()  # embeddings are the old encoder's: another bundle's would misread them
        return self._models[key]

    def prepare(self, nodes: dict, method: str = "samba", bundle: str = DEFAULT_BUNDLE, prompt: str = "cascade",
                mode: str = "samba", roi_node=None, prompt_segmentation=None, device: str = "cpu",
                preset: str = "auto", sam_file: str | None = None, sam_type: str | None = None,
                core: str = DEFAULT_CORE) -> Request:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        images, warnings = arrays_from_nodes(nodes)
        reference = reference_node(nodes)
        roi = bridge.roi_node_to_voxels(roi_node, reference) if roi_node is not None else None
        mask = None
        if prompt_segmentation is not None:
            keys = {s.key: v for v, s in LABEL_SEGMENTS.items()}
            mask = region_masks(bridge.labels_from_segmentation(prompt_segmentation, reference, keys))["WT"]
        key = "|".join(f"{m}:{nodes[m].GetID()}@{nodes[m].GetImageData().GetMTime()}" for m in images)
        return Request(images, method, bundle, prompt, mode, roi, mask, device, key, preset, sam_file,
                       sam_type if sam_file else None, warnings=warnings,
                       voxel_mm3=bridge.voxel_mm3(reference), core=core)

    def compute(self, request: Request, progress: Progress | None = None) -> SambaResult:
        if request.method == "threshold":
            if len(request.images) < len(MODALITIES):
                raise InputError("The threshold method needs all four volumes (T1, T1CE, T2, FLAIR): use SAMBA "
                                 "for fewer.")
            labels = segment_threshold(request.images)
            return SambaResult(labels, (labels > 0).astype(np.float32), {})
        models = self.models(request.bundle, request.device, request.sam_file, request.sam_type)
        return run_samba(request.images, models, prompt=request.prompt, mode=request.mode, roi=request.roi,
                         mask=request.mask, cache=self.cache, volume_key=request.volume_key,
                         device=request.device, progress=progress, preset=request.preset, voxel_mm3=request.voxel_mm3,
                         core=request.core,
                         locate=lambda images, device, report: self.locate(request.volume_key, device, images, report))

    def finish(self, scene, result: SambaResult, reference, output=None, name: str = "Tumour segmentation",
               agreement: bool = False, volume_table: bool = False) -> Outputs:
        """Add (or fill `output`) the segmentation NETC, SNFH, ET (the whole tumour alone when the result
        was made without T1CE) on the reference grid; optionally the
        agreement map as a volume and the volumes in mL as a table; those an earlier
        run into the same segmentation made are refilled, not added again."""
        segmentation = bridge.segmentation_from_labels(scene, result.labels, reference, segments_for(result.regions),
                                                       name, into=output)
        agreement_node = table = None
        if agreement:
            agreement_node = bridge.volume_from_array(scene, result.agreement, bridge.ijk_to_ras(reference),
                                                      f"{segmentation.GetName()} SAM agreement",
                                                      into=segmentation.GetNodeReference(AGREEMENT_REFERENCE))
            segmentation.SetNodeReferenceID(AGREEMENT_REFERENCE, agreement_node.GetID())
        if volume_table:
            table = bridge.table_node(scene, f"{segmentation.GetName()} volumes",
                                      volume_columns(result.labels, reference, result.regions),
                                      segmentation.GetNodeReference(VOLUME_TABLE_REFERENCE))
            segmentation.SetNodeReferenceID(VOLUME_TABLE_REFERENCE, table.GetID())
        return Outputs(segmentation, agreement_node, table)

    def process(self, scene, nodes: dict, output=None, name: str = "Tumour segmentation",
                progress: Progress | None = None, **options):
        """prepare + compute + finish in one call (the Python console, the self-test, the CLI)."""
        request = self.prepare(nodes, **options)
        for warning in request.warnings:
            log.warning(warning)
        result = self.compute(request, progress)
        for warning in result.warnings:
            log.warning(warning)
        return self.finish(scene, result, reference_node(nodes), output, name).segmentation
