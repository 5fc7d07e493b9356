"""The extension's packaging against the files on disk, without building it.

A Slicer extension installs only what its CMakeLists.txt list, so a Lib file or resource that
is not listed works from the source tree and is missing from the installed extension. These
tests also keep the module .ui files, the modules' `self.ui.<name>` uses and their
@parameterNodeWrapper fields in step, and keep the Lib packages free of GUI imports.
"""

import ast
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("SAMBASegment", "R2UNetSegment", "LoRATrainer")
CORE = "SAMBACore"
RAW_URL = "https://raw.githubusercontent.com/SlicerSAMBA/SlicerSAMBA/main/"
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json")
# Properties allowed by that schema ("additionalProperties": false).
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type",
               "build_dependencies", "build_subdirectory", "enabled", "tier"}
FORBIDDEN_ROOTS = {"qt", "ctk", "PythonQt"}
FORBIDDEN_SLICER = {"app", "modules"}


# --------------------------------------------------------------------------- CMake reading
_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|[()]|[^\s()#"]+')
_VAR = re.compile(r"\$\{(\w+)\}")


def _cmake_commands(path):
    """[(name, args, enclosing if() conditions)] with set()/list(APPEND) variables expanded.

    Unquoted arguments are split on ';' after expansion (CMake lists); quoted ones stay whole.
    Unknown variables are left as written, e.g. ${Slicer_USE_FILE}.
    """
    tokens = [t for t in _TOKEN.findall(path.read_text()) if not t.startswith("#")]
    variables, commands, conditions = {}, [], []
    i = 0
    while i < len(tokens):
        name = tokens[i]
        assert i + 1 < len(tokens) and tokens[i + 1] == "(", f"{path}: cannot parse near {name!r}"
        depth, j, args = 1, i + 2, []
        while depth:
            tok = tokens[j]
            depth += {"(": 1, ")": -1}.get(tok, 0)
            if tok not in "()":
                quoted = tok.startswith('"')
                value = _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)),
                                 tok[1:-1] if quoted else tok)
                args += [value] if quoted else [v for v in value.split(";") if v]
            j += 1
        i = j
        name = name.lower()
        if name == "set" and args:
            variables[args[0]] = ";".join(args[1:])
        elif name == "list" and args[:1] == ["APPEND"]:
            variables[args[1]] = ";".join(filter(None, [variables.get(args[1], "")] + args[2:]))
        if name in ("endif", "else", "elseif"):
            conditions.pop()
        commands.append((name, args, tuple(conditions)))
        if name in ("if", "else", "elseif"):
            conditions.append(" ".join(args))
    return commands


def _calls(commands, name):
    return [args for n, args, _ in commands if n == name.lower()]


def _keyword_args(args, keywords):
    """{KEYWORD: [values]} for a macro call; flags map to []; ';'-lists are split."""
    result, current = {}, None
    for arg in args:
        if arg in keywords:
            current = arg
            result.setdefault(arg, [])
        elif current is not None:
            result[current] += [v for v in arg.split(";") if v]
    return result


def _one_call(folder, macro, keywords):
    cmake = ROOT / folder / "CMakeLists.txt"
    assert cmake.is_file(), f"{cmake.relative_to(ROOT)} missing"
    commands = _cmake_commands(cmake)
    calls = _calls(commands, macro)
    assert len(calls) == 1, f"{folder}/CMakeLists.txt: expected one {macro}() call, found {len(calls)}"
    return commands, _keyword_args(calls[0], keywords)


def _listed(folder):
    """(scripts, resources) a folder's CMakeLists.txt installs, as paths relative to it."""
    if folder == CORE:
        _, kw = _one_call(folder, "ctkMacroCompilePythonScript",
                          {"TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR",
                           "INSTALL_DIR", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET"})
        assert "SOURCE_DIR" not in kw, "SAMBACore: list files relative to SAMBACore/, no SOURCE_DIR"
    else:
        _, kw = _one_call(folder, "slicerMacroBuildScriptedModule",
                          {"NAME", "TITLE", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS",
                           "WITH_SUBDIR"})
    # Both macros append ".py" to a script given without an extension.
    scripts = [s if Path(s).suffix else s + ".py" for s in kw.get("SCRIPTS", [])]
    return scripts, kw.get("RESOURCES", [])


def _files_on_disk(folder):
    """Every file the folder should install: not Testing/, caches, hidden files or CMakeLists."""
    base = ROOT / folder
    found = set()
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = Path(dirpath).relative_to(base)
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")
                       and not (rel_dir == Path(".") and d == "Testing")]
        for f in filenames:
            if f.startswith(".") or f.endswith(".pyc") or (rel_dir == Path(".") and f == "CMakeLists.txt"):
                continue
            found.add((rel_dir / f).as_posix())
    return found


# --------------------------------------------------------------------------- top level
def _top_level():
    return _cmake_commands(ROOT / "CMakeLists.txt")


def _extension_vars():
    return {args[0]: args[1:] for args in _calls(_top_level(), "set") if args[0].startswith("EXTENSION_")}


@pytest.mark.parametrize("field", ["HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION",
                                   "ICONURL", "SCREENSHOTURLS", "DEPENDS"])
def test_top_level_cmake_has_metadata(field):
    values = _extension_vars().get("EXTENSION_" + field)
    assert values and all(v.strip() for v in values), f"EXTENSION_{field} missing or empty"


def test_top_level_cmake_metadata_values():
    ext = _extension_vars()
    assert "PyTorch" in ext["EXTENSION_DEPENDS"]
    assert ext["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert re.fullmatch(r"[^()]+ \([^()]+\)(, [^()]+ \([^()]+\))*", " ".join(ext["EXTENSION_CONTRIBUTORS"])), \
        "EXTENSION_CONTRIBUTORS must read 'Name (Organisation), ...'"
    icon = ext["EXTENSION_ICONURL"][0]
    assert icon.startswith(RAW_URL) and (ROOT / icon[len(RAW_URL):]).is_file(), \
        f"EXTENSION_ICONURL does not name a file of this repository: {icon}"
    for url in ext["EXTENSION_SCREENSHOTURLS"]:
        assert url.startswith(RAW_URL + "Screenshots/"), url


def test_top_level_cmake_structure():
    commands = _top_level()
    names = [(n, " ".join(a)) for n, a, _ in commands]
    assert ("cmake_minimum_required", "VERSION 3.16.3") in names
    assert ("project", "SlicerSAMBA") in names
    order = [("find_package", "Slicer REQUIRED"), ("include", "${Slicer_USE_FILE}")]
    order += [("add_subdirectory", d) for d in (CORE,) + MODULES]
    order += [("include", "${Slicer_EXTENSION_GENERATE_CONFIG}"), ("include", "${Slicer_EXTENSION_CPACK}")]
    for cmd in order:
        assert cmd in names, f"top-level CMakeLists.txt lacks {cmd[0]}({cmd[1]})"
    positions = [names.index(cmd) for cmd in order]
    assert positions == sorted(positions), "top-level CMakeLists.txt: commands out of order"
    subdirs = {" ".join(a) for a in _calls(commands, "add_subdirectory")}
    with_cmake = {p.parent.name for p in ROOT.glob("*/CMakeLists.txt")}
    assert with_cmake <= subdirs, f"folders with a CMakeLists.txt not added: {with_cmake - subdirs}"


def test_extension_index_entry():
    entry = json.loads((ROOT / "SlicerSAMBA.json").read_text())
    assert set(entry) <= SCHEMA_KEYS, f"keys the schema forbids: {set(entry) - SCHEMA_KEYS}"
    assert entry["$schema"].rstrip("#") == SCHEMA_URL
    assert entry["category"] == "Segmentation" == _extension_vars()["EXTENSION_CATEGORY"][0]
    assert entry["scm_url"] == "https://github.com/SlicerSAMBA/SlicerSAMBA.git"
    assert entry.get("scm_revision")
    assert "PyTorch" in entry["build_dependencies"]
    assert set(entry["build_dependencies"]) == set(_extension_vars()["EXTENSION_DEPENDS"])
    assert entry.get("tier", 5) in (1, 3, 5)


# --------------------------------------------------------------------------- CMake vs disk
@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_builds_scripted_module(module):
    commands, kw = _one_call(module, "slicerMacroBuildScriptedModule",
                             {"NAME", "TITLE", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR"})
    assert kw.get("NAME") == [module]
    assert "WITH_GENERIC_TESTS" in kw, f"{module}: slicerMacroBuildScriptedModule without WITH_GENERIC_TESTS"
    tests = [(a, c) for n, a, c in commands if n == "slicer_add_python_unittest"]
    assert (["SCRIPT", f"{module}.py"], ("BUILD_TESTING",)) in tests, \
        f"{module}: no slicer_add_python_unittest(SCRIPT {module}.py) inside if(BUILD_TESTING)"
    for n, a, c in commands:
        if n == "add_subdirectory":
            assert c == ("BUILD_TESTING",), f"{module}: add_subdirectory({a[0]}) outside if(BUILD_TESTING)"
            assert (ROOT / module / a[0] / "CMakeLists.txt").is_file(), f"{module}/{a[0]}/CMakeLists.txt missing"


def test_core_cmake_installs_package_next_to_modules():
    _, kw = _one_call(CORE, "ctkMacroCompilePythonScript",
                      {"TARGET_NAME", "SCRIPTS", "RESOURCES", "DESTINATION_DIR", "INSTALL_DIR",
                       "NO_INSTALL_SUBDIR", "GLOBAL_TARGET"})
    assert kw.get("TARGET_NAME") == [CORE]
    # Both end in /SAMBACore so that the files land as the package qt-scripted-modules/SAMBACore/.
    assert kw.get("DESTINATION_DIR") == [f"${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}/{CORE}"]
    assert kw.get("INSTALL_DIR") == [f"${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/{CORE}"]
    assert "NO_INSTALL_SUBDIR" in kw


@pytest.mark.parametrize("folder", (CORE,) + MODULES)
def test_cmake_lists_every_file(folder):
    scripts, resources = _listed(folder)
    on_disk = _files_on_disk(folder)
    missing_py = sorted(f for f in on_disk if f.endswith(".py") and f not in scripts)
    missing_other = sorted(f for f in on_disk if not f.endswith(".py") and f not in scripts + resources)
    assert not missing_py, f"{folder}/CMakeLists.txt: add to the SCRIPTS list: {missing_py}"
    assert not missing_other, f"{folder}/CMakeLists.txt: add to the RESOURCES list: {missing_other}"


@pytest.mark.parametrize("folder", (CORE,) + MODULES)
def test_cmake_lists_only_existing_files(folder):
    scripts, resources = _listed(folder)
    assert scripts, f"{folder}/CMakeLists.txt lists no scripts"
    listed = scripts + resources
    assert len(listed) == len(set(listed)), f"{folder}/CMakeLists.txt lists a file twice"
    stale = [f for f in listed if not (ROOT / folder / f).is_file()]
    assert not stale, f"{folder}/CMakeLists.txt lists files that do not exist: {stale}"


# --------------------------------------------------------------------------- icons
@pytest.mark.parametrize("module", MODULES)
def test_module_icon_is_128_png(module):
    with Image.open(ROOT / module / "Resources" / "Icons" / f"{module}.png") as im:
        assert im.format == "PNG" and im.size == (128, 128), (im.format, im.size)


def test_module_icons_differ():
    data = [(ROOT / m / "Resources" / "Icons" / f"{m}.png").read_bytes() for m in MODULES]
    assert len(set(data)) == len(MODULES)


# --------------------------------------------------------------------------- module files
def _module_tree(module):
    path = ROOT / module / f"{module}.py"
    assert path.is_file(), f"module file missing: {module}/{module}.py"
    return ast.parse(path.read_text(), filename=str(path))


def _ui_root(module):
    tree = _module_tree(module)
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    assert ui.is_file(), f"{module}/{module}.py exists but {ui.relative_to(ROOT)} is missing"
    root = ET.parse(ui).getroot()
    assert root.tag == "ui" and root.get("version") and root.find("widget") is not None, \
        f"{ui.relative_to(ROOT)} is not a Qt Designer file"
    return tree, root


def _ui_object_names(root):
    return {e.get("name") for tag in ("widget", "layout", "action", "actiongroup", "buttongroup")
            for e in root.iter(tag) if e.get("name")}


def _parameter_bindings(root):
    """{widget name: parameter name} for widgets with a SlicerParameterName property."""
    bindings = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                value = (prop.findtext("string") or "").strip()
                assert value, f"widget {widget.get('name')}: empty SlicerParameterName"
                bindings[widget.get("name")] = value
    return bindings


def _decorator_name(node):
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)


def _parameter_fields(tree, module):
    classes = [c for c in tree.body if isinstance(c, ast.ClassDef)
               and any(_decorator_name(d) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert len(classes) == 1, f"{module}.py: expected one @parameterNodeWrapper class, found {len(classes)}"
    return {s.target.id for s in classes[0].body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def _unbound_parameters(tree, module):
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(getattr(t, "id", None) == "_UNBOUND_PARAMETERS" for t in targets):
                value = ast.literal_eval(stmt.value)
                assert isinstance(value, tuple) and all(isinstance(v, str) for v in value), \
                    f"{module}.py: _UNBOUND_PARAMETERS must be a tuple of field names"
                return set(value)
    return set()


@pytest.mark.parametrize("module", MODULES)
def test_module_defines_module_widget_logic_test(module):
    defined = {c.name for c in _module_tree(module).body if isinstance(c, ast.ClassDef)}
    expected = {module, f"{module}Widget", f"{module}Logic", f"{module}Test"}
    assert expected <= defined, f"{module}.py lacks classes {sorted(expected - defined)}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_every_widget_the_module_uses(module):
    tree, root = _ui_root(module)
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    unknown = sorted(used - _ui_object_names(root))
    assert not unknown, f"{module}.py uses self.ui.<name> not in {module}.ui: {unknown}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameters_match_parameter_node_fields(module):
    tree, root = _ui_root(module)
    fields = _parameter_fields(tree, module)
    bound = {v.split(".")[0] for v in _parameter_bindings(root).values()}
    unbound = _unbound_parameters(tree, module)
    assert not bound - fields, f"{module}.ui binds SlicerParameterName(s) that are no field: {sorted(bound - fields)}"
    assert not unbound - fields, f"{module}.py: _UNBOUND_PARAMETERS names no field: {sorted(unbound - fields)}"
    assert not unbound & bound, f"{module}.py: _UNBOUND_PARAMETERS lists bound fields: {sorted(unbound & bound)}"
    loose = sorted(fields - bound - unbound)
    assert not loose, f"{module}: fields bound to no widget; bind them or list them in _UNBOUND_PARAMETERS: {loose}"


@pytest.mark.parametrize("module", MODULES)
def test_lib_package_imports_no_gui(module):
    lib = ROOT / module / f"{module}Lib"
    assert (lib / "__init__.py").is_file(), f"{module}Lib/__init__.py missing"
    offences = []
    for path in sorted(lib.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + ([f"slicer.{a.name}" for a in node.names] if node.module == "slicer" else [])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                names = [f"slicer.{node.attr}"]
            for name in names:
                parts = name.split(".")
                if parts[0] in FORBIDDEN_ROOTS or (parts[0] == "slicer" and parts[1:2] and parts[1] in FORBIDDEN_SLICER):
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not offences, "Lib packages must not use qt, ctk, slicer.app or slicer.modules:\n" + "\n".join(offences)
