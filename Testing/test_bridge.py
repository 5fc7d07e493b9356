"""The MRML bridge keeps voxels and geometry exactly, through Slicer's own storage nodes."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio

from SAMBACore import bridge
from SAMBACore.brats import LABEL_SEGMENTS

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _oblique_image(array, spacing=(0.9, 1.3, 3.0), origin=(10.0, -20.0, 5.0), angle=0.3):
    """An anisotropic image rotated about two axes, so no axis of IJK lines up with RAS."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    c, s = math.cos(angle), math.sin(angle)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    image.SetDirection(tuple((rz @ rx).ravel()))
    return image


def _expected_ijk_to_ras(image):
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


@pytest.fixture
def oblique_file(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(100, 30, size=(7, 9, 11)).astype(np.float32)
    image = _oblique_image(array)
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, array, _expected_ijk_to_ras(image)


def test_load_volume_keeps_voxels_and_geometry(scene, oblique_file):
    path, array, expected = oblique_file
    node = bridge.load_volume(scene, path)
    np.testing.assert_array_equal(bridge.array_from_volume(node), array)
    np.testing.assert_allclose(bridge.ijk_to_ras(node), expected, atol=1e-6)


def test_volume_save_and_reload_round_trip(scene, oblique_file, tmp_path):
    path, array, expected = oblique_file
    node = bridge.volume_from_array(scene, array, expected, "made")
    out = bridge.save_volume(node, tmp_path / "again.nrrd")
    again = bridge.load_volume(scene, out)
    np.testing.assert_array_equal(bridge.array_from_volume(again), array)
    np.testing.assert_allclose(bridge.ijk_to_ras(again), expected, atol=1e-6)


def test_array_from_volume_is_a_copy(scene, oblique_file):
    node = bridge.load_volume(scene, oblique_file[0])
    bridge.array_from_volume(node)[:] = 0
    assert bridge.array_from_volume(node).any()


def test_labels_to_seg_nrrd_round_trip(scene, oblique_file, tmp_path):
    path, array, expected = oblique_file
    reference = bridge.load_volume(scene, path)
    labels = np.zeros(array.shape, np.uint8)
    labels[2:5, 3:7, 2:9] = 2
    labels[3, 4:6, 4:7] = 1
    labels[3:5, 5, 5] = 3
    node = bridge.segmentation_from_labels(scene, labels, reference, LABEL_SEGMENTS, "Tumour")
    out = bridge.save_segmentation(node, tmp_path / "tumour.seg.nrrd")

    # Read by slicerio, independently of Slicer: names, label values, voxels, geometry.
    seg = slicerio.read_segmentation(str(out))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == {s.name for s in LABEL_SEGMENTS.values()}
    for value, display in LABEL_SEGMENTS.items():
        segment = by_name[display.name]
        assert segment["terminology"]["type"][1] == display.snomed_type.split("^")[1]
        extracted = slicerio.extract_segments(seg, [(display.name, 1)])
        voxels = np.transpose(extracted["voxels"], (2, 1, 0))  # slicerio is (i, j, k)
        assert voxels.shape == labels.shape, "segments are written on the full reference grid"
        np.testing.assert_array_equal(voxels == 1, labels == value)
    ijk_to_lps = np.array(seg["ijkToLPS"])
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ ijk_to_lps, expected, atol=1e-6)

    # And back through Slicer's storage node onto the reference grid.
    again = bridge.load_segmentation(scene, out)
    back = bridge.labels_from_segmentation(again, reference, {s.key: v for v, s in LABEL_SEGMENTS.items()})
    np.testing.assert_array_equal(back, labels)


def test_empty_label_still_gets_a_segment(scene, oblique_file, tmp_path):
    reference = bridge.load_volume(scene, oblique_file[0])
    labels = np.zeros(oblique_file[1].shape, np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    node = bridge.segmentation_from_labels(scene, labels, reference, LABEL_SEGMENTS, "Edema only")
    assert node.GetSegmentation().GetNumberOfSegments() == 3
    seg = slicerio.read_segmentation(str(bridge.save_segmentation(node, tmp_path / "e.seg.nrrd")))
    assert len(seg["segments"]) == 3


def test_missing_file_leaves_scene_unchanged(scene, tmp_path):
    before = scene.GetNumberOfNodes()
    with pytest.raises(bridge.BridgeError, match="does not exist"):
        bridge.load_volume(scene, tmp_path / "nope.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(bridge.BridgeError, match="Could not read"):
        bridge.load_volume(scene, corrupt)
    assert scene.GetNumberOfNodes() == before


def test_failed_save_keeps_the_existing_file(scene, oblique_file, tmp_path, monkeypatch):
    reference = bridge.load_volume(scene, oblique_file[0])
    node = bridge.segmentation_from_labels(scene, np.zeros(oblique_file[1].shape, np.uint8), reference, LABEL_SEGMENTS, "x")
    target = tmp_path / "x.seg.nrrd"
    target.write_bytes(b"the user's earlier result")

    def half_write(storage, segmentation, path):
        path.write_bytes(b"half")
        raise bridge.BridgeError("disk full")

    monkeypatch.setattr(bridge, "_write", half_write)
    with pytest.raises(bridge.BridgeError, match="disk full"):
        bridge.save_segmentation(node, target)
    assert target.read_bytes() == b"the user's earlier result"
    assert list(tmp_path.glob("*.partial.*")) == []
    with pytest.raises(bridge.BridgeError, match="must end in .seg.nrrd"):
        bridge.save_segmentation(node, tmp_path / "x.nrrd")


def test_label_shape_mismatch_is_refused(scene, oblique_file):
    reference = bridge.load_volume(scene, oblique_file[0])
    with pytest.raises(ValueError, match="does not match"):
        bridge.segmentation_from_labels(scene, np.zeros((3, 3, 3), np.uint8), reference, LABEL_SEGMENTS, "x")


def test_roi_in_ras_maps_to_the_voxels_it_covers(scene, oblique_file):
    import slicer

    reference = bridge.load_volume(scene, oblique_file[0])
    matrix = bridge.ijk_to_ras(reference)
    inside = (matrix @ np.array([5, 4, 3, 1.0]))[:3]  # voxel i=5, j=4, k=3
    roi = slicer.vtkMRMLMarkupsROINode()
    roi.SetXYZ(*inside)
    roi.SetRadiusXYZ(0.1, 0.1, 0.1)
    low, high = bridge.roi_node_to_voxels(roi, reference)
    assert all(lo <= v <= hi for lo, v, hi in zip(low, (3, 4, 5), high))
    assert all(hi - lo <= 2 for lo, hi in zip(low, high)), "a tiny box covers only the voxels around it"


def _grid(shape_kji, spacing, angles, centre):
    """IJK-to-RAS of a grid of `shape_kji` voxels rotated by `angles` (about z, then x) centred on `centre`."""
    cz, sz, cx, sx = math.cos(angles[0]), math.sin(angles[0]), math.cos(angles[1]), math.sin(angles[1])
    rotation = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    middle = (np.array(shape_kji[::-1]) - 1) / 2  # (i, j, k)
    matrix[:3, 3] = np.asarray(centre) - matrix[:3, :3] @ middle
    return matrix


def _ras(shape_kji, matrix):
    """RAS position of every voxel centre, (K, J, I, 3)."""
    k, j, i = np.indices(shape_kji)
    ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return (ijk1 @ matrix.T)[..., :3]


def test_resample_onto_a_rotated_differently_spaced_grid_is_exact_for_a_linear_image(scene):
    """Linear interpolation reproduces a linear function of position exactly, so any error in
    how the two IJK-to-RAS matrices are combined shows up as a large difference."""
    centre = (12.0, -30.0, 40.0)
    reference_matrix = _grid((20, 22, 24), (1.2, 1.2, 1.2), (0.3, -0.2), centre)
    moving_matrix = _grid((60, 60, 60), (0.8, 1.1, 1.5), (-0.5, 0.4), (13.0, -29.0, 41.0))

    def linear(ras):
        return (3 * ras[..., 0] - 2 * ras[..., 1] + 0.5 * ras[..., 2] + 400).astype(np.float32)

    reference = bridge.volume_from_array(scene, np.ones((20, 22, 24), np.float32), reference_matrix, "T1")
    moving_values = linear(_ras((60, 60, 60), moving_matrix))
    moving = bridge.volume_from_array(scene, moving_values, moving_matrix, "T2")
    nodes_before = scene.GetNumberOfNodes()

    resampled, covered = bridge.resample_to_reference(moving, reference)
    assert resampled.shape == (20, 22, 24) and resampled.dtype == np.float32
    assert covered == 1.0
    np.testing.assert_allclose(resampled, linear(_ras((20, 22, 24), reference_matrix)), atol=0.02)
    # Nothing in the scene changed.
    assert scene.GetNumberOfNodes() == nodes_before
    np.testing.assert_array_equal(bridge.array_from_volume(moving), moving_values)
    np.testing.assert_allclose(bridge.ijk_to_ras(moving), moving_matrix)


def test_resample_reports_how_much_of_the_reference_is_covered(scene):
    reference_matrix = np.diag([1.0, 1.0, 1.0, 1.0])
    reference = bridge.volume_from_array(scene, np.ones((10, 10, 20), np.float32), reference_matrix, "T1")
    half = reference_matrix.copy()
    half[0, 3] = 10.0  # starts at the reference's voxel i = 10: covers i = 10..19
    shifted = bridge.volume_from_array(scene, np.full((10, 10, 20), 7.0, np.float32), half, "shifted")
    resampled, covered = bridge.resample_to_reference(shifted, reference)
    assert covered == pytest.approx(0.5, abs=0.05)
    assert (resampled[..., 10:] == 7).all() and not resampled[..., :10].any()

    far = reference_matrix.copy()
    far[:3, 3] = (500.0, 0.0, 0.0)
    away = bridge.volume_from_array(scene, np.ones((10, 10, 20), np.float32), far, "away")
    assert bridge.resample_to_reference(away, reference)[1] == 0.0


def test_table_node_and_curve_chart_are_filled_in_place():
    scene = slicer.vtkMRMLScene()
    table = bridge.table_node(scene, "t", {"Region": ["ET", "WT"], "Volume (mL)": [1.5, 20]})
    data = table.GetTable()
    assert data.GetColumnByName("Region").GetValue(1) == "WT"
    assert data.GetColumnByName("Volume (mL)").GetValue(1) == 20.0
    assert bridge.table_node(scene, "t", {"Region": ["NETC"]}, table) is table and table.GetNumberOfRows() == 1

    columns = {"epoch": [1, 2], "loss": [0.9, 0.5], "Dice": [0.2, 0.6]}
    chart_table, chart = bridge.curve_chart(scene, "training", columns)
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and chart_table.GetNumberOfRows() == 2
    columns = {key: values + [values[-1]] for key, values in columns.items()}
    assert bridge.curve_chart(scene, "training", columns, chart_table, chart) == (chart_table, chart)
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and chart_table.GetNumberOfRows() == 3
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
