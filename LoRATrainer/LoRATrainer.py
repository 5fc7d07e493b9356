"""LoRATrainer: LoRA adapters for SAM and the U-Nets, trained from BraTS folders or corrected segmentations.

The work is in LoRATrainerLib (no Qt); this file is the Slicer face: metadata, a thin widget,
the logic for the Python console, and the self-test.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import slicer
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LoRATrainerLib.logic import LoRATrainerCore
from LoRATrainerLib.selftest import run_self_test
from SAMBACore import bridge
from SAMBACore.bundle_names import DEFAULT_BUNDLE
from SAMBACore.slicer_widget import BackgroundJobWidget, ensure_packages

SOURCES = {"BraTS folder": "folder", "Scene segmentations": "scene"}
TARGETS = {"SAM LoRA": "sam", "SAM LoRA + decoder": "sam+decoder", "U-Net LoRA: U-Net": "unet",
           "U-Net LoRA: R2U-Net": "r2unet", "U-Net LoRA: cascade stage 2": "cascade_stage2"}


class LoRATrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LoRA Trainer"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Adapts SAMBA's Segment Anything model, or R2U-Net Segment's U-Net, R2U-Net or cascade, to a new site "
            "(scanner, population) with a few labelled cases, by training a small LoRA adapter: on SAM's image "
            "encoder (base bundle litemedsam-samba, the one SAMBA Segment uses by default, or another SAMBA "
            "bundle) or on every convolution of the chosen U-Net (base bundle phantom-r2unet or another R2U-Net "
            "bundle). Train on a folder of BraTS cases, or on the segmentations in the scene (results you "
            "corrected). A SAM adapter trains on the slices SAMBA Segment's default preset segments with the "
            "base on this device (FLAIR axial for litemedsam-samba on a CPU; FLAIR axial and coronal and T1CE "
            "axial on a GPU), unless you list views and contrasts in the Model section (each contrast listed is "
            "trained in each view listed). "
            "Loss and validation Dice appear in a plot view after each epoch; Save writes adapter.safetensors and "
            "adapter.json, which SAMBA Segment or R2U-Net Segment (and `slicer-samba segment|r2unet --adapter`) "
            "load on top of the same base bundle."
        )
        self.parent.acknowledgementText = "LoRA: Hu et al. 2021. Built on 3D Slicer, PyTorch, Segment Anything and PEFT."


@parameterNodeWrapper
class LoRATrainerParameterNode:
    dataSource: Annotated[str, Choice(list(SOURCES))] = "BraTS folder"
    dataFolder: Path
    valFraction: float = 0.2
    baseBundle: str = DEFAULT_BUNDLE
    target: Annotated[str, Choice(list(TARGETS))] = "SAM LoRA"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    samViews: str = ""  # empty: what SAMBA Segment's default preset segments with the base (train_lora.default_stacks)
    samContrasts: str = ""
    rank: int = 4
    alpha: float = 4.0
    learningRate: float = 0.0001
    epochs: int = 5
    batch: int = 8
    outputFolder: Path


class LoRATrainerLogic(ScriptedLoadableModuleLogic, LoRATrainerCore):
    """From the Python console:
    `t = LoRATrainerLogic(); trained = t.compute(t.prepare(folder="/data/site")); t.save(trained, "/data/adapter")`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LoRATrainerParameterNode(super().getParameterNode())


class LoRATrainerWidget(BackgroundJobWidget):
    logicClass = LoRATrainerLogic
    _failureTitle = "Training failed"

    def setup(self):
        super().setup()
        self._trained = None
        self._epochs = []
        self._table = self._chart = None
        self._plotted = 0
        self.ui.applyButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.saveButton.connect("clicked(bool)", self.onSaveButton)
        self.initializeParameterNode()

    def cleanup(self):
        self.logic.discard(self._trained)
        super().cleanup()

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        folder_ok = SOURCES[p.dataSource] == "scene" or (p.dataFolder and Path(p.dataFolder).is_dir())
        self.ui.dataFolderPathLineEdit.enabled = SOURCES[p.dataSource] == "folder"
        for field in (self.ui.samViewsLineEdit, self.ui.samContrastsLineEdit):
            field.enabled = TARGETS[p.target].startswith("sam")
        self.ui.applyButton.enabled = bool(folder_ok) and not self.running
        self.ui.applyButton.toolTip = "Train an adapter in the background." if folder_ok else "Choose a data folder first."
        self.ui.saveButton.enabled = self._trained is not None and bool(p.outputFolder) and not self.running

    def onTrainButton(self):
        if not ensure_packages({"segment_anything": "segment-anything==1.0", "monai": "monai==1.6.1", "peft": "peft==0.21.2"}):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Cannot start training.", waitCursor=True):
            from LoRATrainerLib.train_lora import stacks_from_text
            from SAMBACore.device import choose_device

            stacks = stacks_from_text(p.samViews, p.samContrasts) if TARGETS[p.target].startswith("sam") else {}
            request = self.logic.prepare(slicer.mrmlScene, SOURCES[p.dataSource], p.dataFolder, p.baseBundle,
                                         TARGETS[p.target], p.rank, p.alpha, p.learningRate, p.epochs, p.batch,
                                         p.valFraction, device=choose_device(p.device), **stacks)
            self.logic.discard(self._trained)
            self._trained, self._epochs = None, []
            self._startJob(lambda progress: self.logic.compute(request, progress, on_epoch=self._epochs.append))

    def _pollJob(self):
        super()._pollJob()
        if len(self._epochs) != self._plotted:
            self._showCurves()

    def _showCurves(self):
        entries = list(self._epochs)
        columns = {"epoch": [e["epoch"] for e in entries], "training loss": [e["loss"] for e in entries],
                   "validation Dice": [e["dice"] for e in entries]}
        self._table, self._chart = bridge.curve_chart(slicer.mrmlScene, "LoRA training", columns,
                                                      self._table, self._chart)
        self._plotted = len(entries)
        slicer.modules.plots.logic().ShowChartInLayout(self._chart)

    def _jobSucceeded(self, result):
        self._trained = result
        validation = result.info["validation"]
        self.ui.statusLabel.text = (f"Trained: validation Dice {validation['base']:.3f} (base) -> {validation['final']:.3f}. "
                                    "Press Save adapter to keep it.")
        self._checkCanApply()

    def onSaveButton(self):
        with slicer.util.tryWithErrorDisplay("The adapter was not saved.", waitCursor=True):
            folder = self.logic.save(self._trained, self._parameterNode.outputFolder)
            self.ui.statusLabel.text = f"Adapter saved to {folder}."


class LoRATrainerTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        run_self_test(LoRATrainerLogic(), log=self.delayDisplay)
