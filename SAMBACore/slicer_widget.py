"""Parameter-node plumbing shared by the three module widgets (Slicer's scripted-module template).

Imported only by the module files inside the Slicer application: it needs Slicer's Qt wrappers,
which the headless core and its tests never load.
"""

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin


class ParameterNodeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads Resources/UI/<module>.ui, binds it to the logic's parameter node with connectGui,
    and re-checks whether Apply can run whenever a parameter changes.

    Subclasses set `logicClass`, then implement `_checkCanApply` and their button slots.
    """

    logicClass = None

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logicClass()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Subclasses may override to fill defaults (e.g. pick inputs by name) before binding."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        """Overridden by each module: enable its buttons when the parameters allow a run."""



class BackgroundJobWidget(ParameterNodeWidget):
    """A ParameterNodeWidget whose long work runs on a worker thread (SAMBACore.background), polled
    by a QTimer: progress bar, status text, Cancel. Results reach the scene only in `_jobSucceeded`,
    on the main thread, so a cancelled or failed run leaves the scene as it was.

    The .ui needs applyButton, cancelButton, progressBar and statusLabel.
    """

    def setup(self):
        super().setup()
        import qt

        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._pollJob)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

    @property
    def running(self) -> bool:
        return getattr(self, "_job", None) is not None

    def _startJob(self, work):
        """Run work(progress) in the background; `progress(fraction, message)` raises on Cancel."""
        from SAMBACore.background import BackgroundJob

        self._job = BackgroundJob(work).start()
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = True
        self._timer.start()
        self._checkCanApply()

    def onCancelButton(self):
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling at the next step..."

    def _pollJob(self):
        job = self._job
        for fraction, message in job.poll():
            self.ui.progressBar.value = int(100 * fraction)
            self.ui.statusLabel.text = message
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.visible = False
        self._checkCanApply()
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled: nothing was changed."
        elif job.error is not None:
            # The error says what to do (the Lib packages' messages are written for the user).
            slicer.util.errorDisplay(f"{self._failureTitle}; nothing was changed.\n\n{job.error}")
            self.ui.statusLabel.text = "Failed: nothing was changed."
        else:
            self._jobSucceeded(job.result)

    _failureTitle = "The run failed"

    def _jobSucceeded(self, result):
        """Overridden by each module: put the result into the scene (main thread)."""

def ensure_packages(packages: dict[str, str]) -> bool:
    """Make sure the Python packages a module needs are importable; ask before installing any.

    `packages` maps import names to pinned pip requirements. torch comes from the PyTorch
    extension (its PyTorchUtils picks the build that fits this computer's GPU and driver).
    Returns False when the user declines or PyTorch cannot be had; nothing is changed then.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay("This module needs PyTorch: install the PyTorch extension from the "
                                     "Extension Manager, restart Slicer, and press Apply again.")
            return False
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
            return False
    missing = [requirement for name, requirement in packages.items() if importlib.util.find_spec(name) is None]
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        f"This module needs these Python packages: {', '.join(missing)}.\n\nInstall them now? They are "
        "downloaded from the Python package index; this can take a few minutes."
    ):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    return True
