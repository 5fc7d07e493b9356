"""The phantom sample case SAMBA Segment offers in Slicer's Sample Data module, on a slicer-core scene."""

import numpy as np
import slicer
from LoRATrainerLib.scene_data import cases_from_scene

from SAMBACore import bridge
from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, find_case_files, to_internal_labels
from SAMBACore.phantom import make_case
from SAMBACore.sample_data import load_phantom_case, phantom_case_folder

SEED = 20003  # held out from training, like the demo's case


def test_the_sample_loads_as_named_volumes_and_a_ground_truth_segmentation(tmp_path):
    scene = slicer.vtkMRMLScene()
    nodes = load_phantom_case(scene, tmp_path, seed=SEED)
    # The modules fill their four inputs from the names: the sample must be found that way.
    assert bridge.modality_nodes(scene) == {m: nodes[m] for m in MODALITIES}
    # The label volume (and its storage node) was not left behind.
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeArchetypeStorageNode") == 4
    truth = nodes["truth"]
    assert [truth.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)] == [
        s.name for s in LABEL_SEGMENTS.values()]
    case = make_case(SEED)
    labels = bridge.labels_from_segmentation(truth, nodes["t1"], {s.key: v for v, s in LABEL_SEGMENTS.items()})
    assert np.array_equal(labels, case.labels)
    assert np.allclose(bridge.array_from_volume(nodes["flair"]), case.images["flair"], atol=1e-3)
    # LoRA Trainer's "segmentations in the scene" finds it as one training case.
    [training_case] = cases_from_scene(scene)
    assert np.array_equal(training_case.labels, case.labels)


def test_the_case_is_made_once_and_remade_whole_when_incomplete(tmp_path):
    folder = phantom_case_folder(tmp_path, seed=SEED)
    files = find_case_files(folder, need_seg=True)
    made = {key: path.stat().st_mtime_ns for key, path in files.items()}
    assert phantom_case_folder(tmp_path, seed=SEED) == folder
    assert {key: path.stat().st_mtime_ns for key, path in files.items()} == made  # reused, not rewritten
    files["t2"].unlink()  # e.g. a run interrupted by closing Slicer
    assert phantom_case_folder(tmp_path, seed=SEED) == folder
    again = find_case_files(folder, need_seg=True)
    truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(slicer.vtkMRMLScene(), again["seg"])))
    assert np.array_equal(truth, make_case(SEED).labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"phantom-{SEED}"]  # no partial folders left
