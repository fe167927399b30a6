"""Residual networks as ODEs: the serial network and its layer-parallel twin.

Importing this subpackage imports torch; ``import mgrit_resnet`` alone does not.

Modules: ``spec`` (what a network is), ``ops`` (the layer operators and their
products with ``J^T``), ``activations``, ``layers`` (modules and
initialisation), ``serial`` (:class:`ODEResNet`), ``partition`` (layers and
states over the ranks), ``propagators`` (forward and adjoint propagation as
MGRIT problems), ``bridge`` (the solves and their autograd node), ``warm``
(warm starts), ``parallel`` (:class:`LayerParallel`), ``stages``
(:class:`Stage`, the serial :class:`StagedResNet`), ``staged``
(:class:`StagedParallel`) and ``configured`` (either kind of network from the config).
"""

from .activations import ACTIVATIONS as ACTIVATIONS
from .configured import parallel_from_config as parallel_from_config
from .configured import serial_from_config as serial_from_config
from .parallel import LayerParallel as LayerParallel
from .serial import ODEResNet as ODEResNet
from .spec import NetworkSpec as NetworkSpec
from .staged import StagedParallel as StagedParallel
from .stages import Stage as Stage
from .stages import StagedResNet as StagedResNet

__all__ = [
    "ODEResNet",
    "LayerParallel",
    "NetworkSpec",
    "ACTIVATIONS",
    "Stage",
    "StagedParallel",
    "StagedResNet",
    "serial_from_config",
    "parallel_from_config",
]
