"""Imports point downwards: the layering of ../shared/ARCHITECTURE.md, checked on the source."""

import ast

import pytest
from conftest import ROOT

PACKAGE = ROOT / "mgrit_resnet"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def sources():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_comm_layer_imports_mpi4py(path):
    if path.relative_to(PACKAGE).as_posix() != "comm/mpi.py":
        assert not any(name.split(".")[0] == "mpi4py" for name in imported_modules(path))


@pytest.mark.parametrize("name", ["hierarchy.py", "mgrit.py", "comm/base.py", "comm/mpi.py", "result.py", "theory.py", "problems/base.py"])
def test_solver_layers_do_not_import_torch(name):
    assert not any(module.split(".")[0] == "torch" for module in imported_modules(PACKAGE / name))


def test_hierarchy_knows_only_integers():
    assert imported_modules(PACKAGE / "hierarchy.py") <= {"__future__", "bisect", "collections.abc", "dataclasses", "typing", "._checks"}


def test_problems_know_nothing_of_ranks():
    for path in (PACKAGE / "problems").glob("*.py"):
        assert not any("comm" in module or "hierarchy" in module for module in imported_modules(path))


def test_importing_the_package_does_not_import_torch_or_petsc():
    import subprocess
    import sys

    code = "import sys, mgrit_resnet; print('torch' in sys.modules, 'petsc4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
