"""Training cases from the Slicer scene: the four loaded volumes and a segmentation of them.

Human in the loop: a segmentation SAMBA made and a radiologist corrected in the Segment Editor
becomes training data for the next adapter. Everything goes through SAMBACore.bridge, so this
runs in Slicer and on a slicer-core scene alike. The segmentation is exported onto the T1
volume's grid (Slicer resamples it if it was drawn on another one); the four volumes themselves
must share one grid, since models read them voxel by voxel.
"""

from __future__ import annotations

from LoRATrainerLib.training_data import Case
from SAMBACore import bridge
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES
from SAMBACore.inputs import InputError, check_image, check_same_geometry, zero_background


def _label_segments(segmentation_node) -> dict[str, int]:
    """Segment id -> internal label, for segments whose id or name is a BraTS label's key or name
    (NETC, SNFH, ET, as SAMBA writes them, or the names shown in Slicer)."""
    wanted = {}
    for value, segment in LABEL_SEGMENTS.items():
        wanted[segment.key.lower()] = value
        wanted[segment.name.lower()] = value
    segmentation = segmentation_node.GetSegmentation()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        name = segmentation.GetNthSegment(index).GetName()
        value = wanted.get(segment_id.lower(), wanted.get(name.lower()))
        if value is not None:
            found[segment_id] = value
    return found


def case_from_nodes(volume_nodes: dict, segmentation_node, name: str | None = None) -> Case:
    """One training case from the four volume nodes (keyed by modality) and a segmentation node."""
    reference = volume_nodes["t1"]
    geometry = {key: (bridge.array_from_volume(node).shape, bridge.ijk_to_ras(node)) for key, node in volume_nodes.items()}
    check_same_geometry(reference.GetName(), geometry["t1"],
                        {volume_nodes[key].GetName(): geometry[key] for key in MODALITIES[1:]})
    images = {}
    for key in MODALITIES:
        images[key] = bridge.array_from_volume(volume_nodes[key]).astype("float32")
        check_image(volume_nodes[key].GetName(), images[key])
        images[key] = zero_background(images[key])  # as segment does: a shifted volume trains like the unshifted one
    values = _label_segments(segmentation_node)
    if not values:
        segmentation = segmentation_node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        raise InputError(f"{segmentation_node.GetName()} has no BraTS segments (it has: {', '.join(names) or 'none'}): "
                         "name them " + ", ".join(s.key for s in LABEL_SEGMENTS.values()) + " to train on them.")
    labels = bridge.labels_from_segmentation(segmentation_node, reference, values)
    return Case(name or segmentation_node.GetName(), images, labels)


def cases_from_scene(scene) -> list[Case]:
    """A case for every segmentation node with BraTS segments, on the scene's four BraTS volumes."""
    volume_nodes = bridge.modality_nodes(scene)
    cases = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if _label_segments(node):
            cases.append(case_from_nodes(volume_nodes, node))
    if not cases:
        raise InputError("No segmentation with BraTS segments (NETC, SNFH, ET) in the scene: segment the case "
                         "(SAMBASegment), correct it in the Segment Editor, then train on it.")
    return cases
