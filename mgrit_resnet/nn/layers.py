"""The modules both networks are built from: residual layers and their step,
the opening layer and classifiers, deterministic initialisation, the device.

The network description lives in :mod:`~mgrit_resnet.nn.spec` and the layer
operators in :mod:`~mgrit_resnet.nn.ops`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .activations import ACTIVATIONS, Activation
from .spec import NetworkSpec

_ROLE_OPENING, _ROLE_RESIDUAL, _ROLE_CLASSIFIER, _ROLE_HEAD, _ROLE_HEAD_OUTPUT, _ROLE_USER_BLOCK = 0, 1, 2, 3, 4, 5
_ROLE_STAGE, _ROLE_TRANSITION = 6, 7
# torch's global generator is shared by all threads (ranks of a ThreadWorld): one block is built at a time.
_RNG_LOCK = threading.RLock()


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

    It reads :func:`head_features` features: ``width`` (dense), ``width * head_pool**2``
    (conv, the state pooled by :func:`pool_for_head`). An auxiliary head with
    ``hidden > 0`` is a small MLP instead: linear to ``hidden`` features, the
    network's activation, linear to the classes.
    """
    features = head_features(spec.width, spec.head_pool)
    if head is not None and hidden > 0:
        first, last = nn.Linear(features, hidden), nn.Linear(hidden, spec.n_classes)
        _set(first, seed, _ROLE_HEAD, features, spec, device, head)
        _set(last, seed, _ROLE_HEAD_OUTPUT, hidden, spec, device, head)
        return nn.Sequential(first, _ActivationModule(spec.act), last)
    module = nn.Linear(features, spec.n_classes)
    role, index = (_ROLE_CLASSIFIER, 0) if head is None else (_ROLE_HEAD, head)
    _set(module, seed, role, features, spec, device, index)
    return module


def head_features(width: int, head_pool: int = 1) -> int:
    """The number of features a classifier head reads: the ``width`` channels pooled to ``head_pool x head_pool`` each."""
    return width * head_pool * head_pool


def pool_state(state: torch.Tensor, head_pool: int) -> torch.Tensor:
    """A conv state ``(batch, C, H, W)`` average-pooled to ``(batch, C, head_pool, head_pool)`` for a classifier head.

    ``head_pool > 1``: :func:`torch.nn.functional.adaptive_avg_pool2d`. 1: global
    average pooling, ``state.mean(dim=(2, 3))`` (kept as one ``1 x 1`` cell), the
    arithmetic of ``nn.AdaptiveAvgPool2d(1)`` and of every network built before
    ``network.head_pool``, bitwise.
    """
    if head_pool == 1:
        return state.mean(dim=(2, 3), keepdim=True)
    return F.adaptive_avg_pool2d(state, head_pool)


def pool_for_head(state: torch.Tensor, head_pool: int) -> torch.Tensor:
    """:func:`pool_state` flattened: the input ``(batch, C * head_pool**2)`` of a head on a conv state."""
    return torch.flatten(pool_state(state, head_pool), 1)


class HeadPool(nn.Module):
    """:func:`pool_state` as a module (the first module of the closing of a built-in conv network of stages).

    Parameters
    ----------
    head_pool
        The side of the pooled state, ``network.head_pool``.
    """

    def __init__(self, head_pool: int) -> None:
        super().__init__()
        self.head_pool = head_pool

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """``state`` average-pooled to ``head_pool x head_pool``."""
        return pool_state(state, self.head_pool)

    def extra_repr(self) -> str:
        return f"head_pool={self.head_pool}"


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
    """Logits from the final state (conv: pooled to ``spec.head_pool x spec.head_pool`` first, :func:`pool_for_head`)."""
    if spec.kind == "conv":
        state = pool_for_head(state, spec.head_pool)
    return classifier(state)


def staged_modules(
    kind: str,
    in_size: int,
    widths: list[int],
    activation: str,
    n_classes: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    head_pool: int = 1,
) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    """The opening, the transitions and the closing of a built-in network of stages of ``widths``.

    conv: the opening a 3x3 convolution from ``in_size`` channels, transition
    ``s`` a 3x3 convolution with stride 2 from ``widths[s]`` to ``widths[s + 1]``
    channels (it halves the resolution), each followed by the activation; the
    closing average pooling to ``head_pool x head_pool`` (:class:`HeadPool`;
    1: global), flattening and a linear classifier of ``widths[-1] * head_pool**2``
    inputs. dense: linear maps instead of the convolutions, no pooling
    (``head_pool`` must be 1). Drawn from ``(seed, role, index)`` streams as the
    one-stage network's opening and classifier are.
    """

    def seeded(module: nn.Module, role: int, index: int, fan_in: int) -> nn.Module:
        weight, bias = _uniform_init(seed, role, index, tuple(module.weight.shape), tuple(module.bias.shape), fan_in)
        module.to(device=device, dtype=dtype)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
        return module

    def layer(c_in: int, c_out: int, role: int, index: int, stride: int = 1) -> nn.Module:
        if kind == "dense":
            linear = seeded(nn.Linear(c_in, c_out), role, index, c_in)
        else:
            linear = seeded(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), role, index, c_in * 9)
        return nn.Sequential(linear, _ActivationModule(ACTIVATIONS[activation]))

    opening = layer(in_size, widths[0], _ROLE_OPENING, 0)
    transitions = [layer(widths[s], widths[s + 1], _ROLE_TRANSITION, s, stride=2) for s in range(len(widths) - 1)]
    features = head_features(widths[-1], head_pool)
    classifier = seeded(nn.Linear(features, n_classes), _ROLE_CLASSIFIER, 0, features)
    closing = nn.Sequential(HeadPool(head_pool), nn.Flatten(), classifier) if kind == "conv" else nn.Sequential(classifier)
    return opening, transitions, closing


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
    generator = torch.Generator().manual_seed(stream_seed(seed, role, index))
    bound = 1.0 / math.sqrt(fan_in)
    weight = (torch.rand(weight_shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(bias_shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return weight, bias


def stream_seed(seed: int, role: int, index: int) -> int:
    """The 64-bit seed of the random stream of ``(seed, role, index)``: one stream per layer and role."""
    state = np.random.SeedSequence([seed, role, index]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def stage_seed(seed: int, stage: int) -> int:
    """The seed of stage ``stage`` of a staged network: its layer ``n`` is then drawn from ``(seed, stage, n)``."""
    return stream_seed(seed, _ROLE_STAGE, stage)


def seeded_block(make_block: Callable[[int], Any], layer: int, seed: int, device: torch.device | None = None) -> Any:
    """``make_block(layer)`` under torch's global generator seeded from ``(seed, layer)``, which is restored afterwards.

    Whatever ``make_block`` draws (PyTorch's default initialisation included)
    comes from the layer's own stream, so every rank builds the same block
    for the same layer, at any rank count, and the serial twin builds it too.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with _RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(stream_seed(seed, _ROLE_USER_BLOCK, layer))
        return make_block(layer)


def rng_lock() -> Any:
    """The lock that :func:`seeded_block` holds; hold it to run a module under a forked global generator."""
    return _RNG_LOCK


def resolve_device(spec: NetworkSpec, local_rank: int = 0) -> torch.device:
    """CPU, or the GPU ``local_rank mod device_count`` for ``device = "cuda"``."""
    return device_named(spec.device, local_rank)


def device_named(name: str, local_rank: int = 0) -> torch.device:
    """CPU for ``"cpu"``, or the GPU ``local_rank mod device_count`` for ``"cuda"``."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("network.device = 'cuda' but torch sees no CUDA device here; allowed values: cpu, cuda (where a GPU is present)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
