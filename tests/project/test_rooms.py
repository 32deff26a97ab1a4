"""One map of the rooms, and the traps of mapping folders into one import root, read statically.

The rooms come from pyproject's ``package-dir`` (``tests/support/rooms.py``). Checked here: the
facade's
docstring, the README's layout table and the layer test name the same rooms; every folder that
holds Python is a listed package (else it works editable and is missing from the wheel); nothing
imports a room by its bare folder name (``import runtime`` works from the repository root and
nowhere else); every lazily loaded package attribute is also imported for type checkers.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from rooms import ROOT, ROOT_PACKAGE, listed_packages, package_dir, parse_source, rooms
from test_layers import RANK

# where Python lives in the repository besides the library's rooms
OTHER_CODE = ("tests", "benchmarks", "deploy")


def _py_files(folders: list[str]) -> list[Path]:
    out = []
    for folder in folders:
        out += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(out)


def test_the_facade_docstring_lists_every_room_in_layer_order() -> None:
    doc = importlib.import_module(ROOT_PACKAGE).__doc__ or ""
    listed = re.findall(r"^\s{4}raysource\.(\w+)\s{2,}", doc, re.M)
    assert set(listed) == set(rooms()), set(listed) ^ set(rooms())
    ranks = [RANK[room] for room in listed]
    assert ranks == sorted(ranks, reverse=True), listed  # top layer first


def test_the_readme_layout_table_maps_every_package_to_its_folder() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| folder | import as | what |") :]
    table = table[: table.index("\n\n")]
    rows = re.findall(r"^\| `([\w/]+)/` \| `([\w.]+)` \|", table, re.M)
    assert dict((package, folder) for folder, package in rows) == package_dir()


def test_every_folder_with_python_is_a_listed_package() -> None:
    """A sub-package missing from pyproject imports fine editable and is absent from the wheel."""
    folder_of = {folder: package for package, folder in package_dir().items()}
    missing = []
    for path in _py_files(sorted({f.split("/")[0] for f in folder_of})):
        folder = path.parent.relative_to(ROOT).as_posix()
        if folder not in folder_of:
            missing.append(folder)
    assert not missing, f"folders not in pyproject's package-dir/packages: {sorted(set(missing))}"
    assert sorted(listed_packages()) == sorted(package_dir())


def _bare_imports(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of a module whose first part is one of ``names``:
    ``import x``, ``from x import y`` (also inside functions) and ``import_module("x")``."""
    found = []
    for node in ast.walk(parse_source(path.read_text(), str(path))):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        found += [(node.lineno, m) for m in modules if m.split(".")[0] in names]
    return sorted(found)


def _folder_names() -> set[str]:
    return {folder.split("/")[0] for folder in package_dir().values()}


def test_no_module_imports_a_room_by_its_bare_folder_name() -> None:
    names = _folder_names()
    files = _py_files(sorted(names) + [f for f in OTHER_CODE if (ROOT / f).is_dir()])
    assert len(files) > 100
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module!r}"
        for path in files
        for line, module in _bare_imports(path, names)
    ]
    assert not bad, bad


def test_the_bare_import_check_sees_each_form(tmp_path: Path) -> None:
    """The check above is not vacuous: each way of naming a room bare is caught, the import
    root is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import runtime.core\nfrom journal.api import Journal\n"
        "def f():\n    from sharding import system\n"
        "importlib.import_module('readside.views')\n"
        "from raysource.runtime import core\nimport facade\n"
    )
    assert _bare_imports(sample, _folder_names()) == [
        (1, "runtime.core"),
        (2, "journal.api"),
        (4, "sharding"),
        (5, "readside.views"),
        (7, "facade"),
    ]


def _lazy_modules() -> list[str]:
    out = []
    for package, folder in package_dir().items():
        init = ROOT / folder / "__init__.py"
        if init.is_file() and "lazy_getattr(" in init.read_text():
            out.append(package)
    return out


def test_there_are_lazy_packages() -> None:
    assert {"raysource", "raysource.journal", "raysource.snapshots"} <= set(_lazy_modules())


@pytest.mark.parametrize("package", _lazy_modules())
def test_every_lazy_name_is_imported_for_type_checkers(package: str) -> None:
    """A name served by ``__getattr__`` is invisible to a type checker unless an
    ``if TYPE_CHECKING:`` import binds it too."""
    module = importlib.import_module(package)
    tree = parse_source(Path(module.__file__).read_text())
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    lazy = [name for name in module.__all__ if name not in vars(module)]  # never cached there
    assert lazy, package
    unbound = sorted(set(lazy) - bound)
    assert not unbound, f"{package}: lazy names without a TYPE_CHECKING import: {unbound}"
    for name in lazy:
        getattr(module, name)  # and each one loads


def test_the_store_errors_list_every_error_class() -> None:
    """``raysource.journal.errors.__all__`` is written out (type checkers read it to see what
    ``raysource.errors`` re-exports): it must name every error class of the module."""
    from raysource.journal import errors

    classes = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.RaysourceError)
    }
    assert set(errors.__all__) == classes, set(errors.__all__) ^ classes


def test_every_test_lives_in_a_folder_of_the_tests_map() -> None:
    """No test file at the top of tests/; every folder is in tests/README.md's map and on
    pytest's ``pythonpath`` (its modules import the support helpers by name)."""
    import tomllib

    tests = ROOT / "tests"
    assert sorted(p.name for p in tests.glob("*.py")) == ["conftest.py"]
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    documented = set(re.findall(r"^\| `(\w+)/` \|", (tests / "README.md").read_text(), re.M))
    assert folders == documented, folders ^ documented
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    on_path = {Path(p).name for p in ini["pythonpath"]}
    assert on_path == folders - {"contract"}, on_path ^ (folders - {"contract"})
