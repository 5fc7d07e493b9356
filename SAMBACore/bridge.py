"""The one place that touches MRML: volumes <-> numpy with geometry, labels <-> segmentations, files.

Written against the MRML API only, so it runs unchanged inside Slicer (on slicer.mrmlScene)
and headless on the slicer-core package (on a scene of our own). Arrays are in Slicer's
numpy order (k, j, i); geometry is the 4x4 IJK-to-RAS matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SAMBACore.brats import Segment
from SAMBACore.errors import BridgeError

BINARY_LABELMAP = "Binary labelmap"


def _register_segmentation_converters() -> None:
    # slicer-core has no module loader to do this; inside Slicer the rules are already there.
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        factory.RegisterConverterRule(rule())


def get_scene():
    """Slicer's scene inside the application, otherwise a new headless scene."""
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        scene = slicer.vtkMRMLScene()
        # Slicer adds its default colour tables at start-up; labelmap display nodes look them up.
        colors = slicer.vtkMRMLColorLogic()
        colors.SetMRMLScene(scene)
        colors.SetMRMLScene(None)
    _register_segmentation_converters()
    return scene


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def voxel_mm3(volume_node) -> float:
    """The volume of one voxel of the node's grid, in mm^3."""
    return float(np.prod(spacing_kji(volume_node)))


def spacing_kji(volume_node) -> tuple[float, float, float]:
    """The node's voxel size in mm in array order (k, j, i), as array_from_volume's axes."""
    return tuple(float(s) for s in reversed(volume_node.GetSpacing()))


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def array_from_volume(volume_node) -> np.ndarray:
    """A copy of the voxels, (k, j, i); a copy so that callers cannot change the scene by accident."""
    return np.array(slicer.util.arrayFromVolume(volume_node), copy=True)


def resample_to_reference(volume_node, reference_node) -> tuple[np.ndarray, float]:
    """`volume_node`'s voxels on `reference_node`'s grid, (k, j, i) float32, by linear interpolation
    through both IJK-to-RAS matrices (vtkImageReslice); voxels outside the volume are 0.

    Also returns the fraction of the reference grid that the volume covers (0: no overlap).
    Neither node is changed.
    """
    reference_matrix, matrix = ijk_to_ras(reference_node), ijk_to_ras(volume_node)
    reference_to_volume = np.linalg.inv(matrix) @ reference_matrix  # reference IJK -> volume IJK
    size = reference_node.GetImageData().GetDimensions()  # (I, J, K)
    reslice = vtk.vtkImageReslice()
    # A fresh image with origin 0 and spacing 1, so the matrices alone carry the geometry.
    reslice.SetInputData(_image_data(array_from_volume(volume_node).astype(np.float32)))
    reslice.SetResliceAxes(_vtk_matrix(reference_to_volume))
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    reslice.SetOutputExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    reslice.SetInterpolationModeToLinear()
    reslice.SetBackgroundLevel(0.0)
    reslice.Update()
    scalars = reslice.GetOutput().GetPointData().GetScalars()
    array = numpy_support.vtk_to_numpy(scalars).reshape(size[2], size[1], size[0]).astype(np.float32)
    return array, _coverage(reference_to_volume, size, volume_node.GetImageData().GetDimensions())


def _coverage(reference_to_volume: np.ndarray, reference_size, volume_size, samples: int = 100_000) -> float:
    """Fraction of reference voxels (a regular subsample) that fall inside the volume."""
    step = max(1, round((np.prod(reference_size) / samples) ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in reference_size], indexing="ij"), -1).reshape(-1, 3)
    ijk = grid @ reference_to_volume[:3, :3].T + reference_to_volume[:3, 3]
    tolerance = 1e-3  # a voxel centre exactly on the volume's edge is inside
    inside = ((ijk >= -tolerance) & (ijk <= np.array(volume_size) - 1 + tolerance)).all(axis=1)
    return float(inside.mean())


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    """(k, j, i) scalars, or (k, j, i, c) with c components per voxel (an RGB photo)."""
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    components = array.shape[3] if array.ndim == 4 else 1
    scalars = numpy_support.numpy_to_vtk(array.reshape(-1, components) if components > 1 else array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def volume_from_array(scene, array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str, labelmap: bool = False,
                      into=None):
    """Add a scalar (or labelmap) volume node holding a copy of `array` with the given geometry, or
    refill `into` (a node of the same class) in place; a (k, j, i, c) array gives a vector volume
    (c components per voxel, as Slicer loads a photo)."""
    if array.ndim not in (3, 4) or (array.ndim == 4 and labelmap):
        raise ValueError(f"Expected an array (k, j, i), or (k, j, i, components) for a vector volume; got {array.shape}.")
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else \
        "vtkMRMLVectorVolumeNode" if array.ndim == 4 else "vtkMRMLScalarVolumeNode"
    node = into if into is not None and into.GetClassName() == node_class else scene.AddNewNodeByClass(node_class, name)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_matrix))
    node.SetAndObserveImageData(_image_data(array))
    node.CreateDefaultDisplayNodes()
    return node


def _read(storage_node, node, path: Path) -> None:
    storage_node.SetFileName(str(path))
    if not storage_node.ReadData(node):
        raise BridgeError(f"Could not read {path}: check that it is a valid, complete image file.")


def _write(storage_node, node, path: Path) -> None:
    storage_node.SetFileName(str(path))
    if not storage_node.WriteData(node):
        raise BridgeError(f"Could not write {path}: check that the folder exists, is writable and has free space.")


def _load(scene, path, node, storage):
    """Read `path` into `node` through `storage`; on failure neither is left in the scene."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"{path} does not exist: check the path.")
    scene.AddNode(storage)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    try:
        _read(storage, node, path)
    except BridgeError:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise
    node.CreateDefaultDisplayNodes()
    return node


def load_volume(scene, path, name: str | None = None):
    """Read a NIfTI/NRRD/MHA volume through Slicer's storage node into a new volume node.

    The file is checked first (image_files.check_image_file): the storage node reads a truncated
    .nii.gz without an error, the missing voxels as zeros."""
    from SAMBACore.image_files import check_image_file

    check_image_file(path)
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name or Path(path).name.split(".")[0])
    return _load(scene, path, node, slicer.vtkMRMLVolumeArchetypeStorageNode())


def save_volume(volume_node, path) -> Path:
    """Write a volume through Slicer's storage node (.nii.gz, .nrrd, ...) without touching its own storage."""
    path = Path(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(True)
    _write(storage, volume_node, path)
    return path


def _oriented_mask(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(_image_data(mask.astype(np.uint8)))
    image.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras_matrix))
    return image


def segmentation_from_labels(scene, labels: np.ndarray, reference_volume, segments: dict[int, Segment], name: str, into=None):
    """A segmentation node with one segment per entry of `segments` (label value -> display).

    Every listed label gets a segment, empty or not, so the user sees that a sub-region was
    looked for and not found. Geometry comes from `reference_volume`, which must match `labels`.
    With `into`, that node's segments are replaced instead of adding a new node.
    """
    expected = tuple(reversed(reference_volume.GetImageData().GetDimensions()))
    if labels.shape != expected:
        raise ValueError(f"Label array {labels.shape} does not match the reference volume {expected}.")
    geometry = ijk_to_ras(reference_volume)
    node = into if into is not None else scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.GetSegmentation().RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    for value, display in segments.items():
        segment = slicer.vtkSegment()
        segment.SetName(display.name)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*display.color)
        segment.SetColorAutoGenerated(False)
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), display.terminology)
        segment.AddRepresentation(BINARY_LABELMAP, _oriented_mask(labels == value, geometry))
        node.GetSegmentation().AddSegment(segment, display.key)
    node.CreateDefaultDisplayNodes()
    return node


def labels_from_segmentation(segmentation_node, reference_volume, values: dict[str, int]) -> np.ndarray:
    """The segments named by id in `values` as one label array on the reference volume's grid."""
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    for segment_id in values:
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise KeyError(f"Segment {segment_id!r} is not in {segmentation_node.GetName()}.")
        ids.InsertNextValue(segment_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__labels")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume
        )
        if not ok:
            raise BridgeError(f"Could not export {segmentation_node.GetName()} to the reference grid.")
        exported = slicer.util.arrayFromVolume(labelmap)
        # ExportSegmentsToLabelmapNode numbers segments 1..n in the order given.
        out = np.zeros(exported.shape, np.uint8)
        for index, value in enumerate(values.values(), start=1):
            out[exported == index] = value
        return out
    finally:
        scene.RemoveNode(labelmap)


def save_segmentation(segmentation_node, path) -> Path:
    """Write a .seg.nrrd through Slicer's segmentation storage node, via a temporary file
    so that an existing file is never left half-written."""
    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise BridgeError(f"{path}: a Slicer segmentation file must end in .seg.nrrd.")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name[: -len(".seg.nrrd")] + ".partial.seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    try:
        _write(storage, segmentation_node, partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def load_segmentation(scene, path, name: str | None = None):
    """Read a .seg.nrrd through Slicer's storage node into a new segmentation node."""
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name or Path(path).name[: -len(".seg.nrrd")])
    return _load(scene, path, node, slicer.vtkMRMLSegmentationStorageNode())


def modality_nodes(scene, need_seg: bool = False) -> dict:
    """The loaded scalar volumes that are the four BraTS inputs, keyed by internal modality.

    Names are read with the BraTS conventions; a missing or ambiguous modality raises
    brats.ModalityError listing every volume found.
    """
    from SAMBACore.brats import assign_modalities

    nodes = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") and not need_seg:
            continue
        nodes.setdefault(node.GetName(), node)
    assigned = assign_modalities(list(nodes), need_seg=need_seg)
    return {key: nodes[name] for key, name in assigned.items()}


def ras_to_ijk(volume_node, ras) -> np.ndarray:
    """Continuous (i, j, k) voxel coordinates of RAS points (N, 3) in this volume."""
    ras = np.asarray(ras, float).reshape(-1, 3)
    points = np.column_stack([ras, np.ones(len(ras))])
    return (points @ np.linalg.inv(ijk_to_ras(volume_node)).T)[:, :3]


def ras_box_to_voxels(volume_node, corner_a, corner_b):
    """An axis-aligned RAS box (two opposite corners, mm) as inclusive (k, j, i) voxel corners:
    the voxel box holding all eight corners, so an oblique volume still gets the whole box."""
    corners = [(x, y, z) for x in (corner_a[0], corner_b[0]) for y in (corner_a[1], corner_b[1]) for z in (corner_a[2], corner_b[2])]
    ijk = ras_to_ijk(volume_node, corners)
    low, high = np.floor(ijk.min(axis=0)).astype(int), np.ceil(ijk.max(axis=0)).astype(int)
    return tuple(int(v) for v in low[::-1]), tuple(int(v) for v in high[::-1])


def roi_node_to_voxels(roi_node, volume_node):
    """A markups ROI drawn in Slicer as inclusive (k, j, i) voxel corners of `volume_node`."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return ras_box_to_voxels(volume_node, bounds[0::2], bounds[1::2])


def table_node(scene, name: str, columns: dict[str, list], table=None):
    """A table node (or `table`, refilled in place) with one column per entry: text columns for
    str values, numbers otherwise."""
    table = table or scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    data = vtk.vtkTable()
    for column, values in columns.items():
        text = any(isinstance(value, str) for value in values)
        array = vtk.vtkStringArray() if text else vtk.vtkDoubleArray()
        array.SetName(column)
        for value in values:
            array.InsertNextValue(str(value) if text else float(value))
        data.AddColumn(array)
    table.SetAndObserveTable(data)
    return table


def save_table(table_node, path) -> Path:
    """Write a table through Slicer's storage node: .csv or .tsv, plus the .schema file with the column
    types that Slicer writes beside it (and reads back)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise BridgeError(f"{path}: a table is written as .csv or .tsv.")
    _write(slicer.vtkMRMLTableStorageNode(), table_node, path)
    return path


def curve_chart(scene, name: str, columns: dict[str, list[float]], table=None, chart=None):
    """A table node of `columns` (the first is the x axis) and a line chart of the others against it,
    for training curves shown in a plot view. Pass the nodes back to update them in place.
    Returns (table node, plot chart node)."""
    table = table_node(scene, f"{name} table", columns, table)
    chart = chart or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    x_name, *y_names = columns
    if chart.GetNumberOfPlotSeriesNodes() == 0:
        for y_name in y_names:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {y_name}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName(x_name)
            series.SetYColumnName(y_name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle(x_name)
        chart.SetTitle(name)
    return table, chart
