"""R2UNetSegment: R2U-Net / attention R2U-Net and a memory-bounded U-Net cascade.

The work is in R2UNetSegmentLib (no Qt); this file is the Slicer face: metadata, a thin widget,
the logic for the Python console, and the self-test.
"""

import os
import sys

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from R2UNetSegmentLib.channels import gather_channels
from R2UNetSegmentLib.selftest import run_self_test
from SAMBACore.slicer_widget import ParameterNodeWidget


class R2UNetSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "R2U-Net Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Segments a loaded volume with R2U-Net (recurrent residual U-Net with attention gates) or a "
            "two-stage U-Net cascade that fits in a memory budget. Select one of the four BraTS volumes to "
            "use all four as channels, or any single volume. This release gathers and checks the inputs; "
            "the networks and their weights are the next step on the project's roadmap."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, PyTorch and MONAI."


@parameterNodeWrapper
class R2UNetSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode


class R2UNetSegmentLogic(ScriptedLoadableModuleLogic):
    """From the Python console: `R2UNetSegmentLogic().channels(volume)` gives the model input."""

    def getParameterNode(self):
        return R2UNetSegmentParameterNode(super().getParameterNode())

    def channels(self, inputVolume, scene=None):
        return gather_channels(scene or slicer.mrmlScene, inputVolume)


class R2UNetSegmentWidget(ParameterNodeWidget):
    logicClass = R2UNetSegmentLogic

    def setup(self):
        super().setup()
        self.ui.checkInputsButton.connect("clicked(bool)", self.onCheckInputs)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None):
        self.ui.checkInputsButton.enabled = self._parameterNode.inputVolume is not None

    def onCheckInputs(self):
        with slicer.util.tryWithErrorDisplay("The input cannot be segmented.", waitCursor=True):
            channels, names = self.logic.channels(self._parameterNode.inputVolume)
            self.ui.statusLabel.setText(f"{len(names)} channel(s), {channels.shape[1:]} voxels: {', '.join(names)}")


class R2UNetSegmentTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        logic = R2UNetSegmentLogic()
        run_self_test(slicer.mrmlScene, lambda scene, volume: logic.channels(volume, scene), log=self.delayDisplay)
