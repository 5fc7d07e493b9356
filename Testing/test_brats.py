"""BraTS conventions: modality names in both years and their variants, labels, regions."""

import numpy as np
import pytest

from SAMBACore import bridge, brats


@pytest.mark.parametrize(
    "name, key",
    [
        ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00001-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00001-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "flair"),
        ("BraTS-SSA-00002-000-seg.nii.gz", "seg"),
        ("BraTS2021_00000_t1.nii.gz", "t1"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
        ("BraTS2021_00000_t2.nii.gz", "t2"),
        ("BraTS2021_00000_flair.nii.gz", "flair"),
        ("BraTS2021_00000_seg.nii.gz", "seg"),
        ("T1CE", "t1ce"),
        ("FLAIR", "flair"),
        ("patient3 T1-Gd", "t1ce"),
        ("case_T2_FLAIR.nrrd", "flair"),
        ("T1w", "t1"),
        ("brain", None),
        ("t3", None),
    ],
)
def test_modality_of(name, key):
    assert brats.modality_of(name) == key


def test_find_case_files_2021_and_2023(tmp_path):
    for naming, case_id in (("2023", "BraTS-GLI-00007-000"), ("2021", "BraTS2021_00007")):
        case = tmp_path / naming
        case.mkdir()
        for key in brats.MODALITIES + ("seg",):
            (case / brats.case_file_name(case_id, key, naming)).write_bytes(b"")
        (case / "notes.txt").write_text("ignored")
        files = brats.find_case_files(case, need_seg=True)
        assert set(files) == set(brats.MODALITIES) | {"seg"}
        assert files["t1ce"].name == brats.case_file_name(case_id, "t1ce", naming)
        assert files["t1"].name == brats.case_file_name(case_id, "t1", naming)


def test_missing_and_ambiguous_modalities_are_one_clear_error():
    with pytest.raises(brats.ModalityError) as error:
        brats.assign_modalities(["x_t1.nii.gz", "x_t2.nii.gz", "x_flair.nii.gz", "y_flair.nii.gz", "brain.nii.gz"])
    message = str(error.value)
    assert "missing t1ce" in message
    assert "flair is ambiguous (x_flair.nii.gz, y_flair.nii.gz)" in message
    assert "brain.nii.gz -> ?" in message  # what was found is listed


def test_missing_seg_only_when_needed():
    names = ["a_t1.nii.gz", "a_t1ce.nii.gz", "a_t2.nii.gz", "a_flair.nii.gz"]
    assert "seg" not in brats.assign_modalities(names)
    with pytest.raises(brats.ModalityError, match="missing seg"):
        brats.assign_modalities(names, need_seg=True)


def test_label_conventions_round_trip():
    internal = np.array([0, 1, 2, 3, 3, 1], np.uint8)
    as_2021 = brats.from_internal_labels(internal, "2021")
    np.testing.assert_array_equal(as_2021, [0, 1, 2, 4, 4, 1])
    np.testing.assert_array_equal(brats.to_internal_labels(as_2021), internal)  # year read off the 4
    np.testing.assert_array_equal(brats.to_internal_labels(internal, "2023"), internal)
    with pytest.raises(ValueError, match="Unexpected label values \\[3\\]"):
        brats.to_internal_labels(np.array([0, 3, 4]), "2021")
    with pytest.raises(ValueError, match="Unexpected label values \\[5\\]"):
        brats.to_internal_labels(np.array([0, 5]))


def test_regions_are_nested():
    labels = np.array([0, 1, 2, 3])
    masks = brats.region_masks(labels)
    np.testing.assert_array_equal(masks["ET"], [0, 0, 0, 1])
    np.testing.assert_array_equal(masks["TC"], [0, 1, 0, 1])
    np.testing.assert_array_equal(masks["WT"], [0, 1, 1, 1])


def test_segment_display_has_names_colours_and_snomed():
    keys = [s.key for s in brats.LABEL_SEGMENTS.values()]
    assert keys == ["NETC", "SNFH", "ET"]
    for segment in list(brats.LABEL_SEGMENTS.values()) + list(brats.REGION_SEGMENTS.values()):
        parts = segment.terminology.split("~")
        assert len(parts) == 7, "Slicer's terminology entry has seven ~-separated fields"
        assert parts[1].startswith("SCT^49755003^")
        assert parts[2].startswith("SCT^") and parts[2].split("^")[1].isdigit()
        assert all(0 <= c <= 1 for c in segment.color)
    assert len({s.color for s in brats.LABEL_SEGMENTS.values()}) == 3


def test_modality_nodes_among_loaded_volumes(scene):
    geometry = np.eye(4)
    names = ["Case7_T1", "Case7_T1CE", "Case7_T2", "Case7_FLAIR", "Some other volume"]
    for name in names:
        bridge.volume_from_array(scene, np.zeros((2, 2, 2), np.float32), geometry, name)
    nodes = bridge.modality_nodes(scene)
    assert {k: n.GetName() for k, n in nodes.items()} == {
        "t1": "Case7_T1", "t1ce": "Case7_T1CE", "t2": "Case7_T2", "flair": "Case7_FLAIR"
    }
    scene.RemoveNode(nodes["t2"])
    with pytest.raises(brats.ModalityError, match="missing t2"):
        bridge.modality_nodes(scene)
