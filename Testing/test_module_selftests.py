"""Each module file imports, and its Slicer self-test (the Test class) passes on a slicer-core scene."""

import pytest
import slicer

from SAMBACore import bridge
from slicer_app_stand_ins import import_module_file

MODULES = ("SAMBASegment", "R2UNetSegment", "LoRATrainer")


@pytest.fixture
def app_scene(monkeypatch):
    """slicer.mrmlScene as inside Slicer, removed again afterwards so other tests get their own scenes."""
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    assert bridge.get_scene() is scene
    yield scene
    scene.Clear(True)


def _measuring(name, run_self_test, measured):
    """The module's self-test body, recording the numbers it asserts on (conftest.py's `measured`);
    LoRA Trainer's is run with the test seed, so that scripts/learning_spread.py can vary it."""
    from conftest import TEST_SEED

    def run(*args, **kwargs):
        if name == "LoRATrainer":
            kwargs["seed"] = TEST_SEED
        result = run_self_test(*args, **kwargs)
        if name == "LoRATrainer":
            measured("dice_gain", result["final"] - result["base"])
            measured("loss_drop", result["loss"][0] - result["loss"][-1])
        else:
            measured("wt_dice", result["WT"]["dice"])
        return result

    return run


@pytest.mark.parametrize("name", MODULES)
def test_module_self_test_passes(name, app_scene, measured, monkeypatch):
    module = import_module_file(name)
    for suffix in ("", "Widget", "Logic", "Test"):
        assert hasattr(module, name + suffix)
    monkeypatch.setattr(module, "run_self_test", _measuring(name, module.run_self_test, measured))
    result = getattr(module, name + "Test")().run()
    assert result.wasSuccessful(), result.failures + result.errors
    assert result.testsRun == 1


def test_samba_logic_from_the_console(app_scene, tmp_path):
    """The one-call console use: SAMBASegmentLogic().run(t1, t1ce, t2, flair), result in slicer.mrmlScene,
    and a second run into the same output node replaces its segments instead of adding a node."""
    from SAMBACore.brats import MODALITIES, find_case_files
    from SAMBACore.phantom import write_case

    module = import_module_file("SAMBASegment")
    files = find_case_files(write_case(tmp_path, "C", seed=20010))
    nodes = [bridge.load_volume(app_scene, files[m]) for m in MODALITIES]
    segmentation = module.SAMBASegmentLogic().run(*nodes, method="threshold")
    assert segmentation.GetScene() is app_scene
    count = app_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    again = module.SAMBASegmentLogic().run(*nodes, output=segmentation, method="threshold")
    assert again is segmentation
    assert app_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3


def test_samba_volume_table_and_agreement_map_are_made_and_refilled(app_scene, tmp_path):
    """The widget's 'table of the sub-region volumes': rows NETC, SNFH, ET, TC, WT in mL, matching the
    labels; a second run into the same segmentation refills its table and agreement map instead of
    adding new ones (pressing Apply again does not pile up nodes)."""
    from SAMBACore.brats import MODALITIES, find_case_files
    from SAMBACore.metrics import volumes_ml
    from SAMBACore.phantom import write_case

    module = import_module_file("SAMBASegment")
    files = find_case_files(write_case(tmp_path, "C", seed=20011))
    nodes = {m: bridge.load_volume(app_scene, files[m]) for m in MODALITIES}
    logic = module.SAMBASegmentLogic()
    result = logic.compute(logic.prepare(nodes, method="threshold"))
    outputs = logic.finish(app_scene, result, nodes["t1"], volume_table=True, agreement=True)
    table = outputs.volumes.GetTable()
    regions = [table.GetValueByName(row, "Region").ToString() for row in range(table.GetNumberOfRows())]
    assert regions == ["NETC", "SNFH", "ET", "TC", "WT"]
    expected = volumes_ml(result.labels, tuple(reversed(nodes["t1"].GetSpacing())))
    assert expected["WT"] > 1  # the threshold baseline finds the phantom's tumour: the check below means something
    for row, region in enumerate(regions):
        assert table.GetValueByName(row, "Volume (mL)").ToDouble() == pytest.approx(expected[region], abs=1e-3)
    volumes = app_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    again = logic.finish(app_scene, result, nodes["t1"], output=outputs.segmentation, volume_table=True, agreement=True)
    assert again.volumes is outputs.volumes and again.agreement is outputs.agreement
    assert app_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert app_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert logic.finish(app_scene, result, nodes["t1"]).volumes is None  # not asked for: none made
