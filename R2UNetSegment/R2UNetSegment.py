"""R2UNetSegment: R2U-Net / attention R2U-Net and a memory-bounded U-Net cascade.

The work is in R2UNetSegmentLib (no Qt); this file is the Slicer face: metadata, a thin widget,
the logic for the Python console, and the self-test.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from R2UNetSegmentLib.logic import MODELS, MODES, R2UNetSegmentCore, volumes_ml
from R2UNetSegmentLib.selftest import run_self_test
from SAMBACore.slicer_widget import BackgroundJobWidget, ensure_packages


class R2UNetSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "R2U-Net Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Segments a loaded volume with a U-Net, an R2U-Net (recurrent residual U-Net with attention gates) "
            "or a two-stage U-Net cascade, within a memory budget you set. Select one of the BraTS volumes "
            "to use those loaded (T1, T1CE, T2, FLAIR) as channels: a bundle trained with contrast dropout "
            "(presence flags) takes any set of them (the bundled 'phantom-cascade-any', a cascade), the bundled "
            "'phantom-r2unet' all four only; without T1CE only the whole tumour is produced, since "
            "enhancing tumour is defined on it. Or select any single volume for a single-channel model, or a colour photo (for "
            "example a dermoscopy image) for a 2D model. Mode 'auto' picks "
            "the fastest of full volume, patches and cascade that fits the budget. An optional LoRA adapter (made "
            "with LoRA Trainer) adapts one of the bundle's networks to a new site, merged into its weights. The "
            "bundled 'phantom-r2unet' models were trained on synthetic phantoms: they show the method works, not how "
            "it does on patients (on three real scans with all four contrasts the whole tumour was found with Dice "
            "0.20-0.65 by phantom-r2unet's cascade, 0.57-0.77 by phantom-cascade-any's: do not use them on patients)."
        )
        self.parent.acknowledgementText = (
            "R2U-Net: Alom et al. 2018; attention gates: Oktay et al. 2018. Built on 3D Slicer, PyTorch and MONAI."
        )


@parameterNodeWrapper
class R2UNetSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    bundle: str = "phantom-r2unet"
    model: Annotated[str, Choice(list(MODELS))] = "unet"
    mode: Annotated[str, Choice(list(MODES))] = "auto"
    memoryBudget: str = ""
    patchSize: int = 64
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    adapterFolder: Path  # optional: an empty field reads as Path(".")
    outputSegmentation: vtkMRMLSegmentationNode


class R2UNetSegmentLogic(ScriptedLoadableModuleLogic, R2UNetSegmentCore):
    """From the Python console: `R2UNetSegmentLogic().run(volume, mode="cascade", budget="2GB")`
    returns the segmentation; keywords as in R2UNetSegmentCore.prepare."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        R2UNetSegmentCore.__init__(self)

    def getParameterNode(self):
        return R2UNetSegmentParameterNode(super().getParameterNode())

    def run(self, volume, output=None, progress=None, **options):
        return self.process(slicer.mrmlScene, volume, output=output, progress=progress, **options)


class R2UNetSegmentWidget(BackgroundJobWidget):
    logicClass = R2UNetSegmentLogic
    _failureTitle = "Segmentation failed"

    def setup(self):
        super().setup()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None):
        ready = self._parameterNode.inputVolume is not None
        self.ui.applyButton.enabled = ready and not self.running
        self.ui.applyButton.toolTip = "Segment the input volume." if ready else "Select an input volume first."

    def onApplyButton(self):
        if not ensure_packages({"monai": "monai==1.6.1"}):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Cannot start: the scene is unchanged.", waitCursor=True):
            from SAMBACore.device import choose_device

            adapter = p.adapterFolder if p.adapterFolder and p.adapterFolder.name else None
            request = self.logic.prepare(slicer.mrmlScene, p.inputVolume, bundle=p.bundle, model=p.model, mode=p.mode,
                                         budget=p.memoryBudget, patch_size=p.patchSize, device=choose_device(p.device),
                                         adapter=adapter)
            self._reference = p.inputVolume
            self._startJob(lambda progress: self.logic.compute(request, progress))

    def _jobSucceeded(self, result):
        p = self._parameterNode
        p.outputSegmentation = self.logic.finish(slicer.mrmlScene, result, self._reference, p.outputSegmentation)
        volumes = volumes_ml(result.labels, result.classes, self._reference)
        self.ui.statusLabel.text = (f"Done in {result.seconds:.1f} s ({result.describe()}): "
                                    + ", ".join(f"{name} {ml:.1f} mL" for name, ml in volumes.items()))


class R2UNetSegmentTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        run_self_test(slicer.mrmlScene, R2UNetSegmentLogic(), log=self.delayDisplay)
