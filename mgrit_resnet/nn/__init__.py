"""Residual networks as ODEs: the serial network and its layer-parallel twin.

Importing this subpackage imports torch; ``import mgrit_resnet`` alone does not.
"""

from .activations import ACTIVATIONS as ACTIVATIONS
from .layers import NetworkSpec as NetworkSpec
from .parallel import LayerParallel as LayerParallel
from .serial import ODEResNet as ODEResNet

__all__ = ["ODEResNet", "LayerParallel", "NetworkSpec", "ACTIVATIONS"]
