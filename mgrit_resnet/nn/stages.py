"""Networks of several stages: the stages, what both staged networks check, and the serial twin :class:`StagedResNet`.

A staged network is ``opening -> stage 0 -> transition 0 -> stage 1 -> ... ->
stage S-1 -> closing``. Stage ``s`` is a residual network of its own
(``N_s`` layers ``x + h_s f(x)`` of one width, a built-in kind or your own
blocks, without opening or classifier); a transition is any module between
two stages (a strided convolution, pooling and a 1x1 convolution, a linear
map). The opening, the transitions and the closing are replicated, like a
one-stage network's opening and closing. Layer ``n`` of stage ``s`` is drawn
from ``(seed, s, n)``, so the network is the same at every rank count.

A transition must be a fixed function of its input and parameters, as a
block must: dropout and BatchNorm in training mode are refused at
construction (the same error on every rank, naming the module), any other
transition whose output or buffers change between two evaluations on the
same input when it is probed (with ``input_shape`` at construction, else on
its first call with each state shape), and ``train()`` / ``eval()`` leave the
transitions' modes as they were built. The opening and the closing may hold
dropout and BatchNorm in training mode, with the semantics of
:mod:`~mgrit_resnet.nn.user` (the same as a one-stage network's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .. import comm as comm_module
from .._checks import check_choice, check_int
from .activations import ACTIVATIONS
from .layers import rng_lock, stage_seed
from .serial import ODEResNet
from .spec import DTYPES, NetworkSpec, input_problem
from .user import (
    CLOSING,
    NOT_MODULE,
    OPENING,
    PROBE_RAISED,
    RESHAPES,
    combine,
    default_device,
    flat_buffer,
    load_flat,
    module_modes,
    module_nbytes,
    module_tensors,
    module_verdict,
    part_name,
    probe_transition,
    set_modes,
    transition_part,
)

#: The built-in kinds a stage may be.
STAGE_KINDS = ("dense", "conv")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged network: ``depth`` residual layers ``x + h f_n(x)`` with ``h = t_final / depth``.

    Either your own residual branch, ``Stage(depth, t_final, block=make_block)``
    (``f_n = make_block(n)``, any ``nn.Module`` that keeps the state's shape,
    as for :class:`~mgrit_resnet.nn.LayerParallel`), or a built-in kind,
    ``Stage(depth, t_final, kind="conv", width=16)`` (``f_n(x) = sigma(W_n x + b_n)``,
    a 3x3 convolution of ``width`` channels or a dense layer of ``width``
    features, with the built-in layers' hand-written adjoint).

    Parameters
    ----------
    depth
        The stage's number of layers ``N_s``.
    t_final
        The stage's final time ``T_s``; each layer is a step of ``T_s / N_s``.
    block
        ``make_block(layer) -> nn.Module``, ``layer`` counted from 0 in the stage.
    kind, width, activation
        A built-in stage: ``"dense"`` or ``"conv"``, its width (features or
        channels) and activation (as ``network.activation``).
    """

    depth: int
    t_final: float
    block: Callable[[int], Any] | None = None
    kind: str | None = None
    width: int | None = None
    activation: str = "tanh"

    def __post_init__(self) -> None:
        check_int("depth", self.depth, minimum=1)
        t = self.t_final
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise ValueError(f"t_final must be a finite real number > 0; got {t!r}")
        if self.block is not None:
            if self.kind is not None or self.width is not None:
                raise TypeError("a Stage has either block=make_block or a built-in kind= and width=, not both")
            if not callable(self.block):
                raise TypeError(f"block must be a callable make_block(layer) -> nn.Module; got {type(self.block).__name__}")
            return
        if self.kind is None or self.width is None:
            raise TypeError("a Stage needs block=make_block, or a built-in kind= ('dense' or 'conv') and width=")
        check_choice("kind", self.kind, STAGE_KINDS)
        check_int("width", self.width, minimum=1)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))

    @property
    def builtin(self) -> bool:
        """Whether the stage is a built-in kind (else your own blocks)."""
        return self.block is None

    def spec(self, dtype: torch.dtype, device: torch.device) -> NetworkSpec:
        """A built-in stage as a :class:`NetworkSpec` of its layers (the opening and classifier fields unused)."""
        names = {d: name for name, d in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {', '.join(map(str, names))} for a built-in stage; got {dtype}")
        return NetworkSpec(
            kind=self.kind, width=self.width, depth=self.depth, t_final=float(self.t_final), activation=self.activation,
            dtype=names[dtype], device=device.type,
        )  # fmt: skip


def check_stages(stages: Any, transitions: Any, ranks: int = 1) -> tuple[list[Stage], list[Any]]:
    """The stages (``Stage`` or mappings of its fields) and transitions as lists, checked: the same error on every rank.

    ``TypeError`` for a stage that is neither, ``ValueError`` for one
    transition too few or too many, and for a stage with fewer than
    ``2 * ranks - 1`` layers (every rank holds at least one layer of every stage).
    """
    if isinstance(stages, (Stage, Mapping)) or not isinstance(stages, (list, tuple)) or not stages:
        raise TypeError(f"stages must be a non-empty list of Stage (or of mappings of its fields); got {stages!r}")
    if transitions is None:
        transitions = []
    if isinstance(transitions, nn.Module) or not isinstance(transitions, (list, tuple)):
        raise TypeError(f"transitions must be a list of modules, one between every two stages; got {type(transitions).__name__}")
    checked = []
    for s, stage in enumerate(stages):
        if isinstance(stage, Mapping):
            unknown = sorted(set(stage) - {f.name for f in fields(Stage)})
            if unknown:
                raise TypeError(f"stages[{s}]: unknown keys {unknown}; a stage has {', '.join(f.name for f in fields(Stage))}")
            try:
                stage = Stage(**stage)
            except (TypeError, ValueError) as error:
                raise type(error)(f"stages[{s}]: {error}") from error
        if not isinstance(stage, Stage):
            raise TypeError(f"stages[{s}] must be a Stage (or a mapping of its fields); got {type(stage).__name__}")
        checked.append(stage)
    if len(transitions) != len(checked) - 1:
        raise ValueError(
            f"transitions must hold one module between every two stages: {len(checked)} stages need "
            f"{len(checked) - 1} transitions; got {len(transitions)}"
        )
    for s, stage in enumerate(checked):
        if stage.depth < 2 * ranks - 1:
            raise ValueError(
                f"stages[{s}].depth must be at least 2 * ranks - 1 = {2 * ranks - 1} so that every rank holds a layer "
                f"of every stage; got {stage.depth}"
            )
    return checked, list(transitions)


def network_dtype(dtype: Any, modules: list[Any]) -> torch.dtype:
    """``dtype``, else that of the first floating-point tensor of ``modules``, else torch's default."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
        return dtype
    for module in modules:
        if isinstance(module, nn.Module):
            for t in module_tensors(module):
                if t.is_floating_point():
                    return t.dtype
    return torch.get_default_dtype()


def replicate(backend: Any, opening: Any, transitions: list[Any], closing: Any, device: torch.device) -> list[nn.Module]:
    """Collective: ``[opening, *transitions, closing]`` checked (the same error on every rank) and made equal to rank 0's.

    ``None`` for the opening or the closing is the identity. Every one must be
    an ``nn.Module`` with its tensors on ``device``, and a transition must hold
    no dropout and no BatchNorm in training mode (:func:`~mgrit_resnet.nn.user.module_verdict`);
    rank 0's parameters and buffers are broadcast to the other ranks.
    """
    opening = nn.Identity() if opening is None else opening
    closing = nn.Identity() if closing is None else closing
    parts = [(OPENING, opening), *((transition_part(s), t) for s, t in enumerate(transitions)), (CLOSING, closing)]
    code, layer, message = 0, 0, None
    for part, module in parts:
        if not isinstance(module, nn.Module):
            code, message = NOT_MODULE, f"{part_name(part)} must be a torch.nn.Module; got {type(module).__name__}"
        else:
            code, message = module_verdict(part, module, device)
        if code:
            layer = part
            break
    modules = [module for _, module in parts]
    shape = (0, 0) if code else (sum(len(module_tensors(m)) for m in modules), module_nbytes(*modules))
    combine(backend, code, layer, shape, message, ends="the opening, the transitions and the closing")
    if backend.size > 1:
        flat = flat_buffer(*modules)
        backend.bcast_buffer(flat, 0)
        load_flat(tuple(modules), flat)
    return modules


def dry_run(module: nn.Module, x: torch.Tensor) -> Any:
    """``module(x)`` without a graph, under a forked generator, its buffers put back afterwards (a construction probe)."""
    buffers = list(module.buffers())
    before = [b.detach().clone() for b in buffers]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with rng_lock(), torch.random.fork_rng(devices=devices), torch.no_grad():
            return module(x)
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, before):
                b.copy_(value)


class StagedNetwork(nn.Module):
    """What :class:`StagedResNet` and :class:`~mgrit_resnet.nn.StagedParallel` share: the ends, the checks between stages.

    A subclass sets ``backend``, ``opening``, ``stages`` (modules of the
    layers alone, ``ends=False``), ``transitions``, ``closing``, ``device``,
    ``dtype``, ``input_shape`` and ``specs`` (the :class:`Stage` of each stage).
    """

    def _setup(self, input_shape: Any) -> None:
        self._seen: set[tuple] = set()
        self._fixed: set[tuple] = set()  # (transition, state shape, dtype) probed to be a fixed map
        self._transition_modes = module_modes(list(self.transitions))
        self.input_shape = None
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
            if shape is None or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
                raise ValueError(f"input_shape must be a tuple of positive integers (one sample's shape); got {input_shape!r}")
            self.input_shape = shape
            self._probe()

    @property
    def depths(self) -> list[int]:
        """The number of layers of every stage."""
        return [stage.depth for stage in self.specs]

    def train(self, mode: bool = True) -> StagedNetwork:
        """As ``nn.Module.train``, but the transitions (like your own blocks) keep the modes they were built and checked in."""
        super().train(mode)
        set_modes(list(self.transitions), self._transition_modes)
        return self

    def _input_problem(self, x: Any) -> tuple[int, str | None]:
        def shape_problem(x: torch.Tensor) -> str | None:
            if x.dim() < 1 or x.shape[0] < 1:
                return f"the network input must have a batch dimension of size >= 1; got shape {tuple(x.shape)}"
            if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
                return f"the network input must have shape ({', '.join(['batch', *map(str, self.input_shape)])}); got {tuple(x.shape)}"
            return None

        return input_problem(x, shape_problem)

    def _probe(self) -> None:
        """Collective: the opening, every transition and every stage's layers on a batch of two random samples of ``input_shape``."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn((2, *self.input_shape), generator=g, dtype=torch.float64).to(device=self.device, dtype=self.dtype)
        state = self._replicated(self.opening, "the opening", x, "inputs", probe=True)
        for s in range(len(self.stages)):
            self._fit(s, state)
            if s < len(self.transitions):  # a stage keeps the shape of its states: the transition takes the same shape
                out = self._replicated(self.transitions[s], f"transitions[{s}]", state, f"the states of stages[{s}]", probe=True)
                self._check_fixed(s, state)
                state = out

    def _transition(self, s: int, state: torch.Tensor) -> torch.Tensor:
        out = self._replicated(self.transitions[s], f"transitions[{s}]", state, f"the states of stages[{s}]")
        self._check_fixed(s, state)
        return out

    def _check_fixed(self, s: int, state: torch.Tensor) -> None:
        """Collective, once per state shape and dtype: transition ``s`` is a fixed map on ``state`` (:func:`.user.probe_transition`)."""
        key = (s, tuple(state.shape[1:]), state.dtype)
        if key in self._fixed:
            return
        code, message = probe_transition(transition_part(s), self.transitions[s], state.detach()[:2])
        combine(self.backend, code, transition_part(s), message=message)
        self._fixed.add(key)

    def _replicated(self, module: nn.Module, name: str, x: torch.Tensor, what: str, probe: bool = False) -> torch.Tensor:
        """``module(x)``; the first time for each input shape an error is ``ValueError`` naming the module (the same on every rank)."""
        key = (name, tuple(x.shape[1:]), x.dtype)
        if key in self._seen and not probe:
            return module(x)
        try:
            out = dry_run(module, x) if probe else module(x)
        except Exception as error:  # a replicated module raises alike on every rank
            raise ValueError(
                f"{name} cannot take {what}, of shape {tuple(x.shape[1:])} ({x.dtype}): {type(error).__name__}: {error}"
            ) from error
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{name} must return a torch.Tensor; got {type(out).__name__}")
        if not probe:
            self._seen.add(key)
        return out

    def _fit(self, s: int, state: torch.Tensor) -> None:
        """The check that ``state`` fits stage ``s`` (collective for your own blocks, once per state shape)."""
        source = "the opening" if s == 0 else f"transitions[{s - 1}]"
        fits = f"{source} gives states of shape {tuple(state.shape[1:])} ({state.dtype}), which do not fit stages[{s}]"
        stage = self.stages[s]
        parts = stage._parts
        if parts is None:
            why = stage.spec.state_shape_problem(state)
            if why is None and state.dtype != stage.dtype:
                why = f"its layers are {stage.dtype}"
            if why is not None:
                raise ValueError(f"{fits}: {why}")
            return

        def relabel(code: int, message: str) -> str:
            return f"{fits}: {message}" if code in (PROBE_RAISED, RESHAPES) else f"stages[{s}], {message}"

        parts.probe(self.backend, state, relabel)

    def _ends_view(self, grads: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The replicated modules' tensors (or gradients) on the CPU: the opening's, and the transitions' and the closing's."""

        def view(module: nn.Module, prefix: str) -> dict[str, Any]:
            items = module.named_parameters() if grads else module.state_dict(keep_vars=True).items()
            picked = ((k, t.grad if grads else t) for k, t in items)
            return {prefix + k: None if t is None else t.detach().cpu().clone() for k, t in picked}

        tail: dict[str, Any] = {}
        for s, transition in enumerate(self.transitions):
            tail.update(view(transition, f"transitions.{s}."))
        tail.update(view(self.closing, "closing."))
        return view(self.opening, "opening."), tail


class StagedResNet(StagedNetwork):
    """The serial twin of :class:`~mgrit_resnet.nn.StagedParallel`: plain PyTorch, trained by autograd.

    ``opening -> stage 0 -> transitions[0] -> stage 1 -> ... -> closing``, stage
    ``s`` an :class:`~mgrit_resnet.nn.ODEResNet` of its layers alone
    (``ends=False``) whose layer ``n`` is drawn from ``(seed, s, n)``.
    ``state_dict()`` keys: ``opening.*``, ``stages.{s}.layers.{n}.*``,
    ``transitions.{s}.*``, ``closing.*``.

    Parameters
    ----------
    stages
        A list of :class:`Stage` (or of mappings of its fields).
    transitions
        One ``nn.Module`` between every two stages (``len(stages) - 1`` of them).
    opening, closing
        The modules before the first and after the last stage (default: identity).
    seed
        The seed of the stages' layers.
    input_shape
        One sample's shape: inputs are checked against it, and the opening,
        transitions and stages are checked at construction (else on the first
        call with each new shape).
    device, dtype
        The network's device (default: the opening's, or the CPU) and dtype
        (default: that of the first floating-point tensor of the opening, the
        transitions or the closing, else torch's default); built-in stages are built in them.
    """

    def __init__(
        self,
        stages: list[Any],
        transitions: list[nn.Module] | None = None,
        *,
        opening: nn.Module | None = None,
        closing: nn.Module | None = None,
        seed: int = 0,
        input_shape: tuple[int, ...] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.specs, transitions = check_stages(stages, transitions)
        self.backend = comm_module.SerialBackend()
        self.device = default_device(opening, device)
        self.dtype = network_dtype(dtype, [opening, *transitions, closing])
        opening, *transitions, closing = replicate(self.backend, opening, transitions, closing, self.device)
        self.opening = opening
        self.stages = nn.ModuleList(self._stage(s, stage, seed) for s, stage in enumerate(self.specs))
        self.transitions = nn.ModuleList(transitions)
        self.closing = closing
        self._setup(input_shape)

    def _stage(self, s: int, stage: Stage, seed: int) -> ODEResNet:
        if stage.builtin:
            net = ODEResNet(stage.spec(self.dtype, self.device), seed=stage_seed(seed, s), ends=False)
            if net.device != self.device:
                raise ValueError(f"stages[{s}]: a built-in stage is built on {net.device}, the network's device is {self.device}")
            return net
        try:
            return ODEResNet(block=stage.block, depth=stage.depth, t_final=stage.t_final, seed=stage_seed(seed, s), device=self.device)
        except (TypeError, ValueError) as error:
            raise type(error)(f"stages[{s}], {error}") from error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the input batch ``x``."""
        _, problem = self._input_problem(x)
        if problem is not None:
            raise ValueError(problem)
        state = self._replicated(self.opening, "the opening", x.to(device=self.device, dtype=self.dtype), "inputs")
        for s, stage in enumerate(self.stages):
            self._fit(s, state)
            state = stage(state)
            if s < len(self.transitions):
                state = self._transition(s, state)
        return self.closing(state)
