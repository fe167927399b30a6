"""mgrit_resnet: layer-parallel training of residual networks with MGRIT.

The public names are re-exported here; everything else is implementation.
"""

from . import problems as problems
from . import theory as theory
from .config import Config as Config
from .config import load_config as load_config
from .hierarchy import Hierarchy as Hierarchy
from .mgrit import MGRIT as MGRIT
from .result import SolveResult as SolveResult

__version__ = "0.1.0"
__all__ = ["MGRIT", "SolveResult", "Hierarchy", "Config", "load_config", "problems", "theory", "nn", "__version__"]


def __getattr__(name: str):
    # ``mr.nn`` imports torch; load it on first use so that ``import mgrit_resnet`` stays light.
    if name == "nn":
        import importlib

        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
