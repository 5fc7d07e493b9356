"""The Slicer extension's own files: CMake metadata, every file listed for install, .ui vs code, icons."""

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ("SAMBASegment", "R2UNetSegment", "LoRATrainer")
PACKAGES = MODULES + ("SAMBACore",)


def _cmake_entries(folder: Path, module: str) -> set[str]:
    text = (folder / "CMakeLists.txt").read_text()
    text = re.sub(r"#.*", "", text).replace("${MODULE_NAME}", module)
    entries = set()
    for block in re.findall(r"set\(\s*\w+_PYTHON_(?:SCRIPTS|RESOURCES)(.*?)\)", text, re.S):
        entries.update(block.split())
    return entries


def _files(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() or "__pycache__" in rel or rel.endswith(".pyc") or rel == "CMakeLists.txt":
            continue
        if rel.startswith("Testing/"):
            continue
        found.add(rel)
    return found


def test_top_level_cmake_has_what_the_extension_manager_needs():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert re.search(r'set\(EXTENSION_DEPENDS "[^"]*PyTorch', text)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    for package in PACKAGES:
        assert f"add_subdirectory({package})" in text


@pytest.mark.parametrize("package", PACKAGES)
def test_every_file_is_listed_for_install_and_every_listed_file_exists(package):
    folder = REPO / package
    listed = _cmake_entries(folder, package)
    assert not (_files(folder) - listed), f"not in {package}/CMakeLists.txt: {sorted(_files(folder) - listed)}"
    assert not (listed - _files(folder)), f"listed but missing: {sorted(listed - _files(folder))}"


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_builds_a_scripted_module_with_tests(module):
    text = (REPO / module / "CMakeLists.txt").read_text()
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert (REPO / module / "Testing" / "Python" / "CMakeLists.txt").is_file()


@pytest.mark.parametrize("module", MODULES)
def test_icon_is_a_128_pixel_png(module):
    data = (REPO / module / "Resources" / "Icons" / f"{module}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_extensions_index_entry():
    entry = json.loads((REPO / "SlicerSAMBA.json").read_text())
    assert entry["category"] == "Segmentation"
    assert entry["scm_url"].startswith("https://") and "PyTorch" in entry["build_dependencies"]


def _parameter_fields(tree: ast.Module) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", getattr(d, "attr", None)) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_ui_matches_the_code(module):
    source = (REPO / module / f"{module}.py").read_text()
    tree = ast.parse(source)
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widgets = {w.get("name") for w in root.iter("widget")}
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    assert used and used <= widgets, f"used in {module}.py but not in the .ui: {sorted(used - widgets)}"
    bound = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = _parameter_fields(tree)
    assert bound <= fields, f"bound in the .ui but no parameter: {sorted(bound - fields)}"
    assert fields <= bound, f"parameters with no widget: {sorted(fields - bound)}"


@pytest.mark.parametrize("module", MODULES)
def test_module_classes_and_lib_without_qt(module):
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {module, module + "Widget", module + "Logic", module + "Test"} <= classes
    for path in (REPO / module / f"{module}Lib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk") and not name.startswith(("slicer.app", "slicer.modules")), \
                    f"{path.name} imports {name}"
