"""Stand-ins for the parts of the Slicer application that slicer-core does not ship.

slicer-core has Slicer's MRML, Segmentations and Volumes libraries but no Qt, so the module
files' base classes (slicer.ScriptedLoadableModule), the parameter-node wrapper and the `qt`
module cannot be imported here. These minimal stand-ins, and nothing else, let CI import the real module files
and run their Logic and Test classes on a real slicer-core scene. The widgets are not run.
"""

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import slicer

REPO = Path(__file__).resolve().parents[1]


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    """Never instantiated here; only the widget's base class must exist for the import."""


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass

    def getParameterNode(self):
        return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        print(message)


def _install() -> None:
    if "slicer.ScriptedLoadableModule" in sys.modules:
        return
    loadable = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(loadable, cls.__name__, cls)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls  # the annotated class itself; no GUI binding here
    wrapper.Choice = lambda choices: tuple(choices)  # only read by the GUI binding
    qt = types.ModuleType("qt")  # Qt itself: only the widgets use it, and they are not run here
    sys.modules[loadable.__name__] = loadable
    sys.modules[wrapper.__name__] = wrapper
    sys.modules.setdefault("qt", qt)
    slicer.ScriptedLoadableModule = loadable
    slicer.parameterNodeWrapper = wrapper


def import_module_file(module_name: str):
    """Import <module_name>/<module_name>.py the way Slicer would, with the stand-ins in place."""
    _install()
    path = REPO / module_name / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
