"""Imports point downwards: the layering of ../shared/ARCHITECTURE.md, checked on the source.

Every module has a layer; a module may import only from its own layer or the
layers below it, and the import graph of the package (lazy, function-level
imports included) has no circle.
"""

import ast

import pytest
from conftest import ROOT

PACKAGE = ROOT / "mgrit_resnet"

# Bottom to top. Top-level modules are named by file; a folder's modules share its layer.
LAYERS = [
    ("base", {"_checks", "_arrays", "_petsc", "_descriptions", "_files", "_toml", "hierarchy", "result", "config"}),
    ("comm", {"comm"}),
    ("problems", {"problems"}),
    ("solver", {"mgrit", "theory"}),
    ("nn", {"nn"}),
    ("training", {"training"}),
    ("studies", {"studies"}),
    ("cli", {"cli", "__main__"}),
]
ENTRY = "__init__"  # the package's own re-exports may name any layer


def module_name(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["mgrit_resnet", *parts])


def sources():
    return sorted(PACKAGE.rglob("*.py"))


MODULES = {module_name(p): p for p in sources()}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def package_imports(path):
    """The package's modules that ``path`` imports, resolved (``from . import x`` names submodule ``x`` where it is one)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [(module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in targets:
            if not module.startswith("mgrit_resnet"):
                continue
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if submodules:
                found.update(submodules)
            if len(submodules) < len(names) or not names:
                found.add(module)
    found.discard(me)
    return found


def layer_of(module):
    parts = module.split(".")[1:]
    if not parts:
        return None
    for index, (_, members) in enumerate(LAYERS):
        if parts[0] in members:
            return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    me = module_name(path)
    if me == "mgrit_resnet":
        return
    mine = layer_of(me)
    upward = [m for m in package_imports(path) if m != "mgrit_resnet" and layer_of(m) > mine]
    assert not upward, f"{me} (layer {LAYERS[mine][0]}) imports from higher layers: {sorted(upward)}"


def test_no_import_circle():
    graph = {name: package_imports(path) & set(MODULES) for name, path in MODULES.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_top_level_holds_the_core_and_the_subpackages_only():
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith(".") and p.name != "__pycache__"}
    files = {name for name in top if name.endswith(".py")}
    folders = {name for name in top if (PACKAGE / name).is_dir()}
    core = {f"{name}.py" for _, members in LAYERS[:4] for name in members if (PACKAGE / f"{name}.py").is_file()}
    assert files == core | {"__init__.py", "__main__.py"}
    assert folders == {"comm", "problems", "nn", "training", "studies", "cli"}


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_comm_layer_imports_mpi4py(path):
    if path.relative_to(PACKAGE).as_posix() != "comm/mpi.py":
        assert not any(name.split(".")[0] == "mpi4py" for name in imported_modules(path))


TORCH_FREE = [
    "hierarchy.py",
    "mgrit.py",
    "config.py",
    "comm/base.py",
    "comm/mpi.py",
    "result.py",
    "theory.py",
    "problems/base.py",
    "training/checks.py",
]


@pytest.mark.parametrize("name", TORCH_FREE)
def test_solver_layers_do_not_import_torch(name):
    assert not any(module.split(".")[0] == "torch" for module in imported_modules(PACKAGE / name))


def test_hierarchy_knows_only_integers():
    assert imported_modules(PACKAGE / "hierarchy.py") <= {"__future__", "bisect", "collections.abc", "dataclasses", "typing", "._checks"}


def test_problems_know_nothing_of_ranks():
    for path in (PACKAGE / "problems").glob("*.py"):
        assert not any("comm" in module or "hierarchy" in module for module in imported_modules(path))


@pytest.mark.parametrize("path", sorted((PACKAGE / "studies").glob("*.py")), ids=lambda p: p.name)
def test_studies_neither_parse_arguments_nor_print(path):
    tree = ast.parse(path.read_text())
    assert "argparse" not in imported_modules(path)
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "print" not in calls


def test_importing_the_package_does_not_import_torch_or_petsc():
    import subprocess
    import sys

    code = "import sys, mgrit_resnet; print('torch' in sys.modules, 'petsc4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
