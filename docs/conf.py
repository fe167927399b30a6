"""Sphinx configuration for the mgrit_resnet documentation (built with ``-W``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mgrit_resnet

project = "mgrit_resnet"
author = "mgrit_resnet developers"
copyright = "mgrit_resnet developers"
version = release = mgrit_resnet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
nitpicky = False

# Docstrings are NumPy style.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_typehints = "description"
autodoc_member_order = "bysource"

# Heat2D imports petsc4py, which `make docs` does not install (`make petsc` does):
# without it, document Heat2D against a stand-in so the build does not depend on PETSc.
try:
    import petsc4py  # noqa: F401  (importing it does not initialise PETSc)
except ImportError:
    autodoc_mock_imports = ["petsc4py"]

html_theme = "alabaster"
html_title = f"mgrit_resnet {release}"
