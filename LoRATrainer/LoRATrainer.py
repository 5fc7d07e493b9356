"""LoRATrainer: LoRA adapters for SAM and the U-Nets, trained from BraTS folders or corrected segmentations.

The work is in LoRATrainerLib (no Qt); this file is the Slicer face: metadata, a thin widget,
the logic for the Python console, and the self-test.
"""

from pathlib import Path

import os
import sys

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LoRATrainerLib.selftest import run_self_test
from SAMBACore.brats import find_training_cases
from SAMBACore.slicer_widget import ParameterNodeWidget


class LoRATrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LoRA Trainer"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Adapts the segmentation models to a new site (scanner, population) with a few labelled cases by "
            "training small LoRA adapters. Choose a folder of BraTS cases (each with its seg file). This release "
            "checks the training data; training itself is the next step on the project's roadmap."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, PyTorch and PEFT."


@parameterNodeWrapper
class LoRATrainerParameterNode:
    dataFolder: Path


class LoRATrainerLogic(ScriptedLoadableModuleLogic):
    """From the Python console: `LoRATrainerLogic().findCases(folder)` lists the usable cases."""

    def getParameterNode(self):
        return LoRATrainerParameterNode(super().getParameterNode())

    def findCases(self, folder):
        return find_training_cases(folder)


class LoRATrainerWidget(ParameterNodeWidget):
    logicClass = LoRATrainerLogic

    def setup(self):
        super().setup()
        self.ui.checkDataButton.connect("clicked(bool)", self.onCheckData)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None):
        folder = self._parameterNode.dataFolder
        self.ui.checkDataButton.enabled = bool(folder) and Path(folder).is_dir()

    def onCheckData(self):
        with slicer.util.tryWithErrorDisplay("The folder cannot be used for training.", waitCursor=True):
            cases, skipped = self.logic.findCases(self._parameterNode.dataFolder)
            note = f"; skipped {len(skipped)}: " + "; ".join(skipped) if skipped else ""
            self.ui.statusLabel.setText(f"{len(cases)} usable case(s){note}")


class LoRATrainerTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        run_self_test(LoRATrainerLogic().findCases, log=self.delayDisplay)
