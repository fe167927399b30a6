"""The pieces both networks are built from: the network description, the
residual-layer operators with their vector-Jacobian products, deterministic
initialisation, and the input check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_float, check_int
from ..config import NETWORK_KINDS
from .activations import ACTIVATIONS, Activation

DTYPES = {"float32": torch.float32, "float64": torch.float64}
_ROLE_OPENING, _ROLE_RESIDUAL, _ROLE_CLASSIFIER, _ROLE_HEAD, _ROLE_HEAD_OUTPUT = 0, 1, 2, 3, 4


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

    def __post_init__(self) -> None:
        check_choice("network.kind", self.kind, NETWORK_KINDS)
        for name in ("in_features", "in_channels", "image_size", "width", "depth"):
            check_int(f"network.{name}", getattr(self, name), minimum=1)
        check_int("network.n_classes", self.n_classes, minimum=2)
        if check_float("network.t_final", self.t_final) <= 0:
            raise ValueError(f"network.t_final must be a real number > 0; got {self.t_final!r}")
        check_choice("network.activation", self.activation, tuple(ACTIVATIONS))
        check_choice("network.dtype", self.dtype, tuple(DTYPES))
        check_choice("network.device", self.device, ("cpu", "cuda"))

    @classmethod
    def from_config(cls, section: Any) -> NetworkSpec:
        """From a config ``[network]`` section (or a mapping with its keys)."""
        values = section.as_dict() if hasattr(section, "as_dict") else dict(section)
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
        if not isinstance(x, torch.Tensor):
            return f"the network input must be a torch.Tensor; got {type(x).__name__}"
        shape = self.input_shape()
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
            expected = ", ".join(["batch", *map(str, shape)])
            return f"the {self.kind} network input must have shape ({expected}); got {tuple(x.shape)}"
        if not x.is_floating_point():
            return f"the network input must be a floating-point tensor; got {x.dtype}"
        if not bool(torch.isfinite(x).all()):
            return "the network input contains NaN or infinite values"
        return None


class DenseOps:
    """``z = W x + b`` for inputs of shape ``(batch, width)`` and its products with ``J^T``."""

    @staticmethod
    def pre(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def input_vjp(gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return gz.mm(weight)

    @staticmethod
    def param_vjp(gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gz.t().mm(x), gz.sum(0)


class ConvOps:
    """3x3 convolution with padding 1 (``width`` channels in and out) and its products with ``J^T``.

    With ``fast_input_vjp`` the input product is the convolution with the
    transposed, flipped kernel: the same operator, about twice as fast on CPU
    as ``convolution_backward`` here, but not bitwise what autograd computes.
    The one-level path keeps autograd's kernel so that it stays bitwise equal.
    """

    def __init__(self, channels: int, fast_input_vjp: bool = False) -> None:
        self.channels = channels
        self.fast_input_vjp = fast_input_vjp

    @staticmethod
    def pre(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=1)

    def _backward(self, gz, x, weight, mask):
        return torch.ops.aten.convolution_backward(gz, x, weight, [self.channels], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    def input_vjp(self, gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.fast_input_vjp:
            return F.conv2d(gz, weight.transpose(0, 1).flip(2, 3), padding=1)
        return self._backward(gz, x, weight, [True, False, False])[0]

    def param_vjp(self, gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, grad_weight, grad_bias = self._backward(gz, x, weight, [False, True, True])
        return grad_weight, grad_bias


def residual_step(ops: Any, act: Activation, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h: float) -> torch.Tensor:
    """``x + h * sigma(W x + b)``: one residual layer, the forward Euler step.

    One fused ``add`` with ``alpha = h`` rather than a multiply and an add:
    half the passes over the state, and :class:`~mgrit_resnet.nn.propagators.ForwardProblem`
    takes the same step, so the layer-parallel network matches this one bitwise.
    """
    return torch.add(x, act.apply(ops.pre(x, weight, bias)), alpha=h)


class ResidualLayer(nn.Module):
    """The parameters of one residual layer (its step lives in :func:`residual_step`)."""

    def __init__(self, spec: NetworkSpec, index: int, seed: int, device: torch.device) -> None:
        super().__init__()
        w = spec.width
        shape = (w, w) if spec.kind == "dense" else (w, w, 3, 3)
        fan_in = w if spec.kind == "dense" else w * 9
        weight, bias = _uniform_init(seed, _ROLE_RESIDUAL, index, shape, (w,), fan_in)
        self.weight = nn.Parameter(weight.to(device=device, dtype=spec.torch_dtype))
        self.bias = nn.Parameter(bias.to(device=device, dtype=spec.torch_dtype))


def make_opening(spec: NetworkSpec, seed: int, device: torch.device) -> nn.Module:
    """Lifting to the state space: linear (dense) or 3x3 convolution (conv); the activation follows in :func:`open_state`."""
    if spec.kind == "dense":
        module = nn.Linear(spec.in_features, spec.width)
        fan_in = spec.in_features
    else:
        module = nn.Conv2d(spec.in_channels, spec.width, 3, padding=1)
        fan_in = spec.in_channels * 9
    _set(module, seed, _ROLE_OPENING, fan_in, spec, device)
    return module


def make_classifier(spec: NetworkSpec, seed: int, device: torch.device, head: int | None = None, hidden: int = 0) -> nn.Module:
    """The linear classifier on the (pooled) final state; ``head=k`` draws auxiliary head ``k`` from its own stream.

    An auxiliary head with ``hidden > 0`` is a small MLP instead: linear to
    ``hidden`` features, the network's activation, linear to the classes.
    """
    if head is not None and hidden > 0:
        first, last = nn.Linear(spec.width, hidden), nn.Linear(hidden, spec.n_classes)
        _set(first, seed, _ROLE_HEAD, spec.width, spec, device, head)
        _set(last, seed, _ROLE_HEAD_OUTPUT, hidden, spec, device, head)
        return nn.Sequential(first, _ActivationModule(spec.act), last)
    module = nn.Linear(spec.width, spec.n_classes)
    role, index = (_ROLE_CLASSIFIER, 0) if head is None else (_ROLE_HEAD, head)
    _set(module, seed, role, spec.width, spec, device, index)
    return module


class _ActivationModule(nn.Module):
    """The network's activation as a module (inside an MLP head)."""

    def __init__(self, act: Activation) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act.apply(x)


def open_state(spec: NetworkSpec, opening: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The initial state ``x_0 = sigma(opening(x))``."""
    return spec.act.apply(opening(x))


def classify(spec: NetworkSpec, classifier: nn.Module, state: torch.Tensor) -> torch.Tensor:
    """Logits from the final state (global average pooling first for conv)."""
    if spec.kind == "conv":
        state = state.mean(dim=(2, 3))
    return classifier(state)


def _set(module: nn.Module, seed: int, role: int, fan_in: int, spec: NetworkSpec, device: torch.device, index: int = 0) -> None:
    weight, bias = _uniform_init(seed, role, index, tuple(module.weight.shape), tuple(module.bias.shape), fan_in)
    module.to(device=device, dtype=spec.torch_dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)


def _uniform_init(seed: int, role: int, index: int, weight_shape: tuple, bias_shape: tuple, fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in float64 from a generator seeded by (seed, role, index).

    Every layer has its own stream, so a rank can build only its own layers and
    the network is the same at every rank count, in float32 and float64 alike.
    """
    state = np.random.SeedSequence([seed, role, index]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    bound = 1.0 / math.sqrt(fan_in)
    weight = (torch.rand(weight_shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(bias_shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return weight, bias


def resolve_device(spec: NetworkSpec, local_rank: int = 0) -> torch.device:
    """CPU, or the GPU ``local_rank mod device_count`` for ``device = "cuda"``."""
    if spec.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("network.device = 'cuda' but torch sees no CUDA device here; allowed values: cpu, cuda (where a GPU is present)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
