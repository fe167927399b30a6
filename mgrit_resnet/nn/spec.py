"""What a network is: the ``[network]`` table of the config, checked, and what follows from it.

The step ``h``, the torch dtype, the activation, the layer operators and the
shape of an input sample all derive from a :class:`NetworkSpec`; so does the
input check both networks make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_choice, check_float, check_int
from ..config import DEVICES, NETWORK_KINDS, check_head_pool
from ..config import DTYPES as DTYPE_NAMES
from .activations import ACTIVATIONS, Activation
from .ops import ConvOps, DenseOps

#: The torch dtype of every ``network.dtype`` the config offers.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}

#: The ``[network]`` keys that only a user network (``kind = "module"``) reads.
USER_NETWORK_KEYS = ("module", "options")
#: The ``[network]`` keys that only a network of stages reads (:mod:`~mgrit_resnet.nn.configured`).
STAGE_KEYS = ("depths", "widths")
#: Keys of ``[network]`` that only the layer-parallel network reads.
PARALLEL_KEYS = ("coarse_weights",)
#: The input checks' verdicts by code, for ranks that compare them (0: a valid input).
INPUT_PROBLEMS = ("not a tensor", "of the wrong shape", "not floating-point", "not finite")
#: The code and the message of the one problem whose message does not depend on the input.
NON_FINITE_CODE, NON_FINITE_INPUT = INPUT_PROBLEMS.index("not finite") + 1, "the network input contains NaN or infinite values"


@dataclass(frozen=True)
class NetworkSpec:
    """What a network is: the ``[network]`` table of the config, checked.

    Parameters
    ----------
    kind
        ``"dense"`` (inputs ``(batch, in_features)``) or ``"conv"`` (inputs
        ``(batch, in_channels, image_size, image_size)``).
    width
        Dense width, or number of channels of the convolutional layers.
    depth
        Number of residual layers ``N``; each is a step of ``h = t_final / N``.
    head_pool
        conv: the classifier reads the final state average-pooled to
        ``head_pool x head_pool`` (``torch.nn.functional.adaptive_avg_pool2d``)
        and flattened, ``width * head_pool**2`` features; 1 (the default) is
        global average pooling. At most ``image_size``; a dense network takes 1.

    The other fields are the ``[network]`` keys of the same names (see the config reference).
    """

    kind: str = "dense"
    in_features: int = 2
    in_channels: int = 1
    image_size: int = 8
    width: int = 8
    depth: int = 64
    t_final: float = 1.0
    activation: str = "tanh"
    n_classes: int = 5
    dtype: str = "float32"
    device: str = "cpu"
    head_pool: int = 1

    def __post_init__(self) -> None:
        check_choice("network.kind", self.kind, NETWORK_KINDS)
        if self.kind == "module":
            raise ValueError(
                "network.kind = 'module' is your own network, not a NetworkSpec: build it with ODEResNet.from_config / "
                "LayerParallel.from_config, or ODEResNet(block=make_block, ...) / LayerParallel(block=make_block, ...)"
            )
        for name in ("in_features", "in_channels", "image_size", "width", "depth"):
            check_int(f"network.{name}", getattr(self, name), minimum=1)
        check_int("network.n_classes", self.n_classes, minimum=2)
        if check_float("network.t_final", self.t_final) <= 0:
            raise ValueError(f"network.t_final must be a real number > 0; got {self.t_final!r}")
        check_choice("network.activation", self.activation, tuple(ACTIVATIONS))
        check_choice("network.dtype", self.dtype, DTYPE_NAMES)
        check_choice("network.device", self.device, DEVICES)
        check_head_pool(self.kind, self.head_pool, self.image_size)

    @classmethod
    def from_config(cls, section: Any) -> NetworkSpec:
        """From a config ``[network]`` section (or a mapping with its keys; those of user networks and empty stage lists are ignored)."""
        values = section.as_dict() if hasattr(section, "as_dict") else dict(section)
        if values.get("depths"):
            raise ValueError(
                f"network.depths = {values['depths']} makes a network of stages, not a NetworkSpec: build it with "
                "mgrit_resnet.nn.serial_from_config / parallel_from_config (or StagedResNet / StagedParallel)"
            )
        for key in (*USER_NETWORK_KEYS, *STAGE_KEYS, *PARALLEL_KEYS):
            values.pop(key, None)
        return cls(**values)

    @property
    def h(self) -> float:
        """The layer step ``t_final / depth``."""
        return self.t_final / self.depth

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    @property
    def act(self) -> Activation:
        """The activation, with its hand-written derivative."""
        return ACTIVATIONS[self.activation]

    @property
    def ops(self) -> DenseOps | ConvOps:
        """The residual layers' operator ``W x + b`` with its vector-Jacobian products (autograd's kernels)."""
        return DenseOps() if self.kind == "dense" else ConvOps(self.width)

    def fast_ops(self) -> DenseOps | ConvOps:
        """The operators with the fastest adjoint products (conv: not bitwise autograd's)."""
        return DenseOps() if self.kind == "dense" else ConvOps(self.width, fast_input_vjp=True)

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input sample."""
        if self.kind == "dense":
            return (self.in_features,)
        return (self.in_channels, self.image_size, self.image_size)

    def check_input(self, x: Any) -> str | None:
        """Why ``x`` is not a valid batch of inputs, or ``None`` when it is."""
        return self.input_problem(x)[1]

    def input_problem(self, x: Any) -> tuple[int, str | None]:
        """:meth:`check_input` with a code: ``(0, None)`` for a valid batch, else ``(k, why)``.

        ``k`` is one more than the problem's index in :data:`INPUT_PROBLEMS`.
        """
        return input_problem(x, self._shape_problem)

    def state_problem(self, x: Any) -> tuple[int, str | None]:
        """As :meth:`input_problem`, for a batch of layer states: ``(batch, width)`` (dense) or ``(batch, width, H, W)`` (conv)."""
        return input_problem(x, self.state_shape_problem)

    def state_shape_problem(self, x: torch.Tensor) -> str | None:
        """Why ``x`` is not a batch of states of these layers by its shape, or ``None``."""
        dims = 2 if self.kind == "dense" else 4
        if x.dim() != dims or x.shape[1] != self.width or min(x.shape) < 1:
            expected = f"batch, {self.width}" if self.kind == "dense" else f"batch, {self.width}, H, W"
            return f"the states of {self.kind} layers of width {self.width} must have shape ({expected}); got {tuple(x.shape)}"
        return None

    def _shape_problem(self, x: torch.Tensor) -> str | None:
        shape = self.input_shape()
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
            expected = ", ".join(["batch", *map(str, shape)])
            return f"the {self.kind} network input must have shape ({expected}); got {tuple(x.shape)}"
        return None


def batch_shape_problem(x: torch.Tensor) -> str | None:
    """Why ``x`` is not a batch of at least one sample (the only shape check of a user network), or ``None``."""
    if x.dim() < 1 or x.shape[0] < 1:
        return f"the network input must have a batch dimension of size >= 1; got shape {tuple(x.shape)}"
    return None


def input_problem(x: Any, shape_problem: Any = batch_shape_problem) -> tuple[int, str | None]:
    """The input check of both kinds of network, with a code: ``(0, None)`` for a valid batch, else ``(k, why)``.

    ``x`` must be a floating-point tensor with finite entries; ``shape_problem(x)``
    says what is wrong with its shape (a built-in network knows its input
    shape; a user network leaves all but the batch dimension to its opening).
    ``k`` is one more than the problem's index in :data:`INPUT_PROBLEMS`.
    """
    if not isinstance(x, torch.Tensor):
        return 1, f"the network input must be a torch.Tensor; got {type(x).__name__}"
    why = shape_problem(x)
    if why is not None:
        return 2, why
    if not x.is_floating_point():
        return 3, f"the network input must be a floating-point tensor; got {x.dtype}"
    if not bool(torch.isfinite(x).all()):
        return NON_FINITE_CODE, NON_FINITE_INPUT
    return 0, None
