"""SAMBASegment: brain-tumour sub-regions (NETC, SNFH, ET) from the four loaded BraTS volumes.

The work is in SAMBASegmentLib (no Qt); this file is the Slicer face: module metadata, a thin
widget bound to a parameter node, the logic entry point for the Python console, and the self-test.
"""

import os
import sys

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from SAMBACore import bridge
from SAMBACore.brats import MODALITIES, ModalityError
from SAMBACore.slicer_widget import ParameterNodeWidget
from SAMBASegmentLib.logic import SAMBASegmentCore
from SAMBASegmentLib.selftest import run_self_test


class SAMBASegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMBA Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Segments a brain tumour into necrotic/non-enhancing core (NETC), edema (SNFH) and enhancing "
            "tumour (ET) from the four BraTS MRI volumes (T1, T1CE, T2, FLAIR), which must share one voxel grid. "
            "Inputs are filled in from volume names. Until SAMBA model weights are bundled this module runs "
            "the classical threshold baseline. See https://github.com/SlicerSAMBA/SlicerSAMBA."
        )
        self.parent.acknowledgementText = (
            "SAMBA: Barakat, Magdy et al., BraTS 2023 (LNCS 14669). Built on 3D Slicer, Segment Anything, "
            "Ultralytics YOLOv8 and PEFT."
        )


@parameterNodeWrapper
class SAMBASegmentParameterNode:
    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


class SAMBASegmentLogic(ScriptedLoadableModuleLogic, SAMBASegmentCore):
    """From the Python console: `SAMBASegmentLogic().run(t1, t1ce, t2, flair)` returns the segmentation."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SAMBASegmentCore.__init__(self)

    def getParameterNode(self):
        return SAMBASegmentParameterNode(super().getParameterNode())

    def run(self, t1, t1ce, t2, flair, output=None, progress=None):
        nodes = dict(zip(MODALITIES, (t1, t1ce, t2, flair)))
        return self.process(slicer.mrmlScene, nodes, output=output, progress=progress)


class SAMBASegmentWidget(ParameterNodeWidget):
    logicClass = SAMBASegmentLogic

    def setup(self):
        super().setup()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def initializeParameterNode(self):
        super().initializeParameterNode()
        parameters = self._parameterNode
        if all(getattr(parameters, m) is None for m in MODALITIES):
            try:
                for key, node in bridge.modality_nodes(slicer.mrmlScene).items():
                    setattr(parameters, key, node)
            except ModalityError:
                pass  # the user picks them; Apply explains what is missing

    def _checkCanApply(self, caller=None, event=None):
        missing = [m for m in MODALITIES if getattr(self._parameterNode, m) is None]
        self.ui.applyButton.enabled = not missing
        self.ui.applyButton.toolTip = f"Select {', '.join(missing)} first." if missing else "Segment the tumour sub-regions."

    def onApplyButton(self):
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Segmentation failed; the scene is unchanged.", waitCursor=True):
            node = self.logic.run(
                parameters.t1, parameters.t1ce, parameters.t2, parameters.flair,
                output=parameters.outputSegmentation,
                progress=lambda fraction, message: self.ui.statusLabel.setText(message),
            )
            parameters.outputSegmentation = node
            self.ui.statusLabel.setText(f"Done: {node.GetName()}")


class SAMBASegmentTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        run_self_test(slicer.mrmlScene, SAMBASegmentLogic().process, log=self.delayDisplay)
