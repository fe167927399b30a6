"""Sphinx configuration for the mgrit_resnet documentation (built with ``-W``).

``make docs`` also puts a copy of MathJax in ``_static/mathjax`` so that the
pages render their equations offline; without it they load MathJax from its CDN.
The tutorials in ``tutorials/`` run during the build (sphinx-gallery); every
``plot_*.py`` there is one tutorial, ordered by file name.
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import mgrit_resnet  # noqa: E402

project = "mgrit_resnet"
author = "mgrit_resnet developers"
copyright = "mgrit_resnet developers"
version = release = mgrit_resnet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "matplotlib.sphinxext.plot_directive",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "config_reference",
    "theory_tables",
    "benchmark_figures",
]

exclude_patterns = ["_build", "tutorials"]
source_suffix = {".rst": "restructuredtext"}
nitpicky = False
# performance.rst includes benchmarks/README.md below its own title, so its headings start at H2.
suppress_warnings = ["myst.header"]

# Docstrings are NumPy style.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autosummary_generate = False

# Heat2D imports petsc4py, which `make docs` does not install (`make petsc` does):
# without it, document Heat2D against a stand-in so the build does not depend on PETSc.
try:
    import petsc4py  # noqa: F401  (importing it does not initialise PETSc)
except ImportError:
    autodoc_mock_imports = ["petsc4py"]

# Figures drawn at build time by `.. plot::` (the grid hierarchy, the stability region).
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.autolayout": True}

sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": False,
    "min_reported_time": 0,
}

html_theme = "furo"
html_title = f"mgrit_resnet {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

if (DOCS / "_static" / "mathjax" / "tex-chtml.js").is_file():
    mathjax_path = "mathjax/tex-chtml.js"
