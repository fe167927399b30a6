"""Residual networks as ODEs: the serial network and its layer-parallel twin.

Importing this subpackage imports torch; ``import mgrit_resnet`` alone does not.

Modules: ``spec`` (what a network is), ``ops`` (the layer operators and their
products with ``J^T``), ``activations``, ``layers`` (modules and
initialisation), ``serial`` (:class:`ODEResNet`), ``partition`` (layers and
states over the ranks), ``propagators`` (forward and adjoint propagation as
MGRIT problems), ``bridge`` (the solves and their autograd node) and
``parallel`` (:class:`LayerParallel`).
"""

from .activations import ACTIVATIONS as ACTIVATIONS
from .parallel import LayerParallel as LayerParallel
from .serial import ODEResNet as ODEResNet
from .spec import NetworkSpec as NetworkSpec

__all__ = ["ODEResNet", "LayerParallel", "NetworkSpec", "ACTIVATIONS"]
