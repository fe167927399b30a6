"""The pieces of a network of user blocks: flat buffers of a module, the construction checks, frozen modes.

A user network is ``opening -> x_{n+1} = x_n + h f_n(x_n) -> closing`` with
``f_n = make_block(n)`` any ``nn.Module`` that is a *fixed* function of its
input and parameters: MGRIT evaluates a layer many times per call and the
coarse levels evaluate it at other states, so a block must keep the state's
shape and dtype and must not change between calls (no batch statistics, no
dropout, no running buffers). The checks here find the ones that do not;
:class:`~mgrit_resnet.nn.LayerParallel` combines the ranks' verdicts so that
every rank raises the same error.

The replicated modules run on every rank, on the same input. The
transitions of a network of stages must be fixed maps too (checked by the
same verdicts, :func:`fixed_map`): dropout would draw each rank's mask from
that rank's own generator, and BatchNorm in training mode would renormalise
and change its running buffers at every call. The opening and the closing
may hold both (their ``train()`` / ``eval()`` modes are yours), with these
semantics: BatchNorm in training mode sees the same batch on every rank, so it
normalises alike and updates its running buffers alike everywhere (with data
groups, ``train.data_parallel > 1``, each group its own share); dropout draws
every rank's mask from that rank's torch generator, so the replicas apply the
same mask, and equal the serial twin's, only while every rank's generator is
in the same state. The processes of ``mpiexec`` start with the same default
seed and nothing here draws from the global generator (construction and
probes run under forked generators), so seed every rank alike
(``torch.manual_seed(s)`` on all of them, not by rank) and draw alike; ranks
as threads (:class:`~mgrit_resnet.comm.threads.ThreadWorld`) share one
generator and never agree. ``tests/test_replicated_modules.py`` pins this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .layers import device_named, rng_lock, seeded_block
from .spec import DTYPES, NetworkSpec

# Verdict codes (0: fine) and the exception each one raises.
NOT_MODULE, RAISED, BATCH_NORM, DROPOUT, WRONG_DEVICE, PROBE_RAISED, NOT_TENSOR, RESHAPES, STATEFUL, DIFFERS = range(1, 11)
ERRORS = {NOT_MODULE: TypeError, NOT_TENSOR: TypeError}
#: The layer index a verdict about the opening or the closing carries.
OPENING, CLOSING = -1, -2


def transition_part(index: int) -> int:
    """The layer index a verdict about transition ``index`` of a staged network carries."""
    return -3 - index


def fixed_map(layer: int) -> bool:
    """Whether part ``layer`` must be a fixed function of its input: a block or a transition (not the opening or the closing)."""
    return layer >= 0 or layer <= transition_part(0)


def part_name(layer: int) -> str:
    """``"layer n"``, ``"the opening"``, ``"the closing"`` or ``"transitions[s]"``."""
    if layer <= transition_part(0):
        return f"transitions[{transition_part(0) - layer}]"
    return {OPENING: "the opening", CLOSING: "the closing"}.get(layer, f"layer {layer}")


# ---------------------------------------------------------------------- flat buffers
def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers (non-persistent ones included), in registration order."""
    return [*module.parameters(), *module.buffers()]


def module_nbytes(*modules: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules``."""
    return sum(t.numel() * t.element_size() for m in modules for t in module_tensors(m))


def flat_buffer(*modules: nn.Module) -> torch.Tensor:
    """The parameters and buffers of ``modules`` as one flat host byte buffer (any mix of dtypes)."""
    pieces = [t.detach().reshape(-1).view(torch.uint8) for m in modules for t in module_tensors(m)]
    if not pieces:
        return torch.empty(0, dtype=torch.uint8)
    return torch.cat([p.cpu() for p in pieces])


def load_flat(module: nn.Module | tuple[nn.Module, ...], buffer: torch.Tensor) -> None:
    """Copy :func:`flat_buffer`'s bytes back into the tensors of ``module`` (one module or a tuple), in place."""
    offset = 0
    with torch.no_grad():
        for m in module if isinstance(module, tuple) else (module,):
            for t in module_tensors(m):
                size = t.numel() * t.element_size()
                piece = buffer[offset : offset + size]
                if offset % t.element_size():
                    piece = piece.clone()  # a view as a wider dtype needs an aligned start
                t.copy_(piece.view(t.dtype).view(t.shape))
                offset += size


# ---------------------------------------------------------------------- checks
def block_verdict(layer: int, block: Any, device: torch.device) -> tuple[int, str | None]:
    """What is wrong with ``make_block(layer)``'s result by its type and device: ``(0, None)`` or ``(code, message)``."""
    if not isinstance(block, nn.Module):
        return NOT_MODULE, f"layer {layer}: make_block({layer}) must return a torch.nn.Module; got {type(block).__name__}"
    return module_verdict(layer, block, device)


def module_verdict(layer: int, module: nn.Module, device: torch.device) -> tuple[int, str | None]:
    """Stateful layers by type (blocks and transitions: :func:`fixed_map`) and parameters or buffers off ``device``."""
    name = part_name(layer)
    if fixed_map(layer):
        block = layer >= 0
        for path, sub in module.named_modules():
            where = f"{name} ({type(sub).__name__} {path!r})" if path else f"{name} ({type(sub).__name__})"
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
                why = (
                    "so a layer would not be the same map at every MGRIT evaluation"
                    if block
                    else "at every call, evaluations included (and with data groups each group sees its own share of "
                    "the batch), so the transition, replicated on every rank, would not be one fixed map"
                )
                return BATCH_NORM, (
                    f"{where}: BatchNorm in training mode normalises with batch statistics and updates running buffers"
                    f"{', ' if block else ' '}{why}; use GroupNorm or LayerNorm, or call .eval() on it to make it a fixed affine map"
                )
            if isinstance(sub, nn.modules.dropout._DropoutNd):
                why = (
                    "draws a new mask at every evaluation, and MGRIT evaluates each layer many times per call"
                    if block
                    else "draws its mask from each rank's own random generator, so the transition, replicated on every "
                    "rank, would not be the same map on every rank (nor the serial twin's)"
                )
                return DROPOUT, f"{where}: dropout {why}; remove it (regularise the opening or the closing instead)"
    for what, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for path, t in tensors:
            if t.device != device:
                return WRONG_DEVICE, f"{name}: {what} {path!r} is on {t.device}, the network's device is {device}"
    return 0, None


def evaluate_twice(module: nn.Module, x: torch.Tensor) -> tuple[Any, Any, bool]:
    """``module(x)`` twice without a graph, under a forked generator: both results, and whether the first call changed a buffer.

    The module's buffers and torch's generator are as they were afterwards; an exception of ``module`` propagates.
    """
    buffers = list(module.buffers())
    before = [b.detach().clone() for b in buffers]
    try:
        with rng_lock(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            first = module(x)
            between = [b.detach().clone() for b in buffers]
            second = module(x)
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, before):
                b.copy_(value)
    return first, second, any(not _same(b, v) for b, v in zip(between, before))


def probe_block(layer: int, block: nn.Module, state: torch.Tensor) -> tuple[int, str | None]:
    """Run ``block`` twice on ``state``: it must return a tensor of the state's shape and dtype, the same both times,
    and leave its buffers as they were. The block's buffers and torch's generator are restored afterwards.
    """
    name = part_name(layer)
    try:
        first, second, changed = evaluate_twice(block, state)
    except Exception as error:  # reported on every rank, as a verdict
        return PROBE_RAISED, f"{name}: the block raised {type(error).__name__} on a state of shape {tuple(state.shape)}: {error}"
    if not isinstance(first, torch.Tensor):
        return NOT_TENSOR, f"{name}: the block must return a torch.Tensor; got {type(first).__name__}"
    if first.shape != state.shape or first.dtype != state.dtype:
        return RESHAPES, (
            f"{name}: the block maps a state of shape {tuple(state.shape)} ({state.dtype}) to {tuple(first.shape)} ({first.dtype}); "
            "a residual branch f_n in x + h f_n(x) must keep the state's shape and dtype"
        )
    if changed or not isinstance(second, torch.Tensor) or not _same(first, second):
        what = "its buffers" if changed else "its output"
        return STATEFUL, (
            f"{name}: {what} changed from one evaluation to the next on the same input; MGRIT evaluates every layer "
            "many times per call, so a block must be a fixed function of its input and parameters "
            "(no batch statistics, dropout or running buffers)"
        )
    return 0, None


def probe_transition(layer: int, module: nn.Module, state: torch.Tensor) -> tuple[int, str | None]:
    """Run transition ``module`` (part ``layer``) twice on ``state``: it must give the same result both times and leave its
    buffers as they were (the shape is the next stage's to check). Its buffers and torch's generator are restored afterwards.
    """
    name = part_name(layer)
    try:
        first, second, changed = evaluate_twice(module, state)
    except Exception as error:  # reported on every rank, as a verdict
        return PROBE_RAISED, f"{name} raised {type(error).__name__} on states of shape {tuple(state.shape)}: {error}"
    if changed or not isinstance(first, torch.Tensor) or not isinstance(second, torch.Tensor) or not _same(first, second):
        what = "its buffers" if changed else "its output"
        return STATEFUL, (
            f"{name}: {what} changed from one evaluation to the next on the same input; a transition runs on every rank "
            "(it is replicated), so it must be a fixed function of its input and parameters "
            "(no batch statistics, random draws or running buffers)"
        )
    return 0, None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    # A GPU may pick another kernel for the same call: allow its round-off there, nothing on the CPU.
    return a.device.type != "cpu" and a.is_floating_point() and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True))


def probe_state(opening: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The opening's output on a batch of two random inputs of ``input_shape`` (its buffers and the generator restored)."""
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device=device, dtype=dtype)
    buffers = list(opening.buffers())
    before = [b.detach().clone() for b in buffers]
    try:
        with rng_lock(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            return opening(x)
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, before):
                b.copy_(value)


def combine(
    backend: Any,
    code: int,
    layer: int,
    shape: tuple[int, int] = (0, 0),
    message: str | None = None,
    ends: str = "the opening and the closing",
) -> None:
    """Collective: raise on every rank the error of the first rank whose verdict ``(code, layer)`` is not fine.

    One small buffer gather of every rank's verdict and of ``shape`` (two
    integers that must agree on every rank: the count and the bytes of the
    replicated tensors, ``ends`` in the message); only when something failed, one more gather of the messages.
    """
    if backend.size == 1:
        if code:
            raise ERRORS.get(code, ValueError)(message)
        return
    rows = backend.allgather_buffer(np.array([code, layer, *shape], dtype=np.int64))
    failed = np.flatnonzero(rows[:, 0])
    if not failed.size and (rows[:, 2:] == rows[0, 2:]).all():
        return
    messages = backend.allgather(message)
    if not failed.size:
        raise ValueError(
            f"{ends} must be the same modules on every rank (they are replicated); "
            f"their parameters and buffers differ in number or size: {rows[:, 2:].tolist()} by rank"
        )
    rank = int(failed[0])
    raise ERRORS.get(int(rows[rank, 0]), ValueError)(f"{messages[rank]} (on rank {rank})")


# ---------------------------------------------------------------------- modes
def module_modes(modules: list[nn.Module]) -> list[list[bool]]:
    """The ``training`` flag of every submodule of every module."""
    return [[m.training for m in module.modules()] for module in modules]


def set_modes(modules: list[nn.Module], modes: list[list[bool]]) -> None:
    """Put back the flags :func:`module_modes` recorded."""
    for module, flags in zip(modules, modes):
        for m, flag in zip(module.modules(), flags):
            m.training = flag


# ---------------------------------------------------------------------- construction
def check_arguments(spec: Any, block: Any, depth: Any, t_final: Any, **block_only: Any) -> None:
    """``TypeError`` unless exactly one of ``spec`` (a NetworkSpec) and ``block`` (with ``depth`` and ``t_final``) is given."""
    if spec is not None:
        if block is not None:
            raise TypeError("pass either a NetworkSpec or block=make_block, not both")
        if not isinstance(spec, NetworkSpec):
            raise TypeError(f"the first argument must be a NetworkSpec (or pass block=make_block); got {type(spec).__name__}")
        given = [name for name, value in dict(depth=depth, t_final=t_final, **block_only).items() if value is not None]
        if given:
            raise TypeError(f"{', '.join(given)} go with block=make_block; a NetworkSpec describes the whole network")
        return
    if block is None:
        raise TypeError("pass a NetworkSpec or block=make_block (with depth= and t_final=)")
    if not callable(block):
        raise TypeError(f"block must be a callable make_block(layer) -> nn.Module; got {type(block).__name__}")
    if depth is None or t_final is None:
        raise TypeError("block=make_block needs depth= (the number of layers N) and t_final= (T; each layer is a step of h = T/N)")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1; got {depth!r}")
    if isinstance(t_final, bool) or not isinstance(t_final, (int, float)) or not t_final > 0 or t_final == float("inf"):
        raise ValueError(f"t_final must be a finite real number > 0; got {t_final!r}")


def check_ends(ends: Any, opening: Any, closing: Any) -> None:
    """``TypeError`` unless ``ends`` is a bool, and with ``ends=False`` no opening or closing is given."""
    if not isinstance(ends, bool):
        raise TypeError(f"ends must be true or false; got {ends!r}")
    if not ends and (opening is not None or closing is not None):
        raise TypeError("ends=False is the layers alone: pass no opening and no closing")


def default_device(opening: Any, device: Any) -> torch.device:
    """``device``, or the device of the opening's first parameter or buffer, or the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(opening, nn.Module):
        for t in module_tensors(opening):
            return t.device
    return torch.device("cpu")


class UserParts:
    """The checked, replicated parts of a user network on one rank.

    Attributes
    ----------
    opening, closing
        The replicated ends (``nn.Identity`` when not given), the same on every rank.
    blocks
        This rank's blocks by layer.
    device, dtype
        The network's device, and its dtype: that of the first floating-point
        tensor of the opening, the closing or the first block (else torch's default).
    modes
        The blocks' ``training`` flags, frozen at construction.
    """

    def __init__(
        self, backend: Any, make_block: Any, seed: int, layers: range, opening: Any, closing: Any, device: torch.device, input_shape: Any
    ) -> None:
        opening = nn.Identity() if opening is None else opening
        closing = nn.Identity() if closing is None else closing
        code, layer, message = 0, 0, None
        for part, module in ((OPENING, opening), (CLOSING, closing)):
            if not code:
                layer = part
                if not isinstance(module, nn.Module):
                    code, message = NOT_MODULE, f"{part_name(part)} must be a torch.nn.Module; got {type(module).__name__}"
                else:
                    code, message = module_verdict(part, module, device)
        blocks: dict[int, nn.Module] = {}
        for n in layers:
            if code:
                break
            layer = n
            try:
                block = seeded_block(make_block, n, seed, device)
            except Exception as error:  # reported on every rank, as a verdict
                code, message = RAISED, f"layer {n}: make_block({n}) raised {type(error).__name__}: {error}"
                break
            code, message = block_verdict(n, block, device)
            blocks[n] = block
        ends = code == 0 or layer >= 0
        shape = (len(module_tensors(opening)) + len(module_tensors(closing)), module_nbytes(opening, closing)) if ends else (0, 0)
        combine(backend, code, layer, shape, message)
        if backend.size > 1:
            flat = flat_buffer(opening, closing)
            backend.bcast_buffer(flat, 0)
            load_flat((opening, closing), flat)
        self.opening, self.blocks, self.closing, self.device = opening, blocks, closing, device
        floats = [t for m in (opening, closing, *blocks.values()) for t in module_tensors(m) if t.is_floating_point()]
        self.dtype = floats[0].dtype if floats else torch.get_default_dtype()
        self.modes = module_modes(list(blocks.values()))
        self.probed: set[tuple] = set()
        if input_shape is not None:
            shape = tuple(input_shape)
            if not all(isinstance(s, int) and s >= 1 for s in shape):
                raise ValueError(f"input_shape must be a tuple of positive integers (one sample's shape); got {input_shape!r}")
            self.probe(backend, probe_state(opening, shape, self.dtype, device))

    def probe(self, backend: Any, state: torch.Tensor, relabel: Callable[[int, str], str] | None = None) -> None:
        """Collective, once per state shape and dtype: :func:`probe_block` on every block of this rank; the same error on every rank.

        ``relabel(code, message)`` rewrites a refusal's message (a stage says which stage and what fed it).
        """
        key = (tuple(state.shape[1:]), state.dtype)
        if key in self.probed:
            return
        sample = state.detach()[:2]
        code, layer, message = 0, 0, None
        for n, block in self.blocks.items():
            code, message = probe_block(n, block, sample)
            if code:
                layer = n
                if relabel is not None:
                    message = relabel(code, message)
                break
        combine(backend, code, layer, message=message)
        self.probed.add(key)


def network_value(network: Any, key: str) -> Any:
    """``network[key]`` of a config ``[network]`` section or a mapping (``None`` when absent)."""
    return (network.as_dict() if hasattr(network, "as_dict") else dict(network)).get(key)


def user_network_parts(network: Any, local_rank: int = 0) -> dict[str, Any]:
    """The constructor arguments of a ``network.kind = "module"`` section: the user's blocks, opening and closing
    (from ``network.module``'s ``build(options)``) in ``network.dtype`` on the rank's device, ``depth`` and ``t_final``.

    For a builder that returns stages: ``stages`` (your own blocks converted so), ``transitions``, ``opening``,
    ``closing``, ``device`` and ``dtype``, the arguments of :class:`~mgrit_resnet.nn.StagedParallel`.
    """
    from .builder import network_parts

    parts = network_parts(network)
    device = device_named(network_value(network, "device") or "cpu", local_rank)
    dtype = DTYPES[network_value(network, "dtype") or "float32"]

    def convert(module: Any) -> Any:
        return module.to(device=device, dtype=dtype) if isinstance(module, nn.Module) else module

    def converted(make_block: Any) -> Any:
        return lambda layer: convert(make_block(layer))

    if isinstance(parts, dict):
        stages = [_converted_stage(stage, converted) for stage in parts["stages"]] if isinstance(parts["stages"], list) else parts["stages"]
        transitions = parts["transitions"]
        transitions = [convert(t) for t in transitions] if isinstance(transitions, list) else transitions
        return dict(
            stages=stages, transitions=transitions, opening=convert(parts["opening"]), closing=convert(parts["closing"]),
            device=device, dtype=dtype,
        )  # fmt: skip
    make_block, opening, closing = parts
    depth, t_final = network_value(network, "depth"), network_value(network, "t_final")
    opening, closing = convert(opening), convert(closing)
    return dict(block=converted(make_block), depth=depth, t_final=t_final, opening=opening, closing=closing, device=device)


def check_one_stage(parts: dict[str, Any]) -> dict[str, Any]:
    """``parts`` of :func:`user_network_parts` unless they are a network of stages (``TypeError``)."""
    if "stages" in parts:
        raise TypeError(
            "network.module's build(options) returns stages: build the network with mgrit_resnet.nn.serial_from_config / "
            "parallel_from_config (StagedResNet / StagedParallel)"
        )
    return parts


def _converted_stage(stage: Any, converted: Any) -> Any:
    """A stage (a ``Stage`` or a mapping of its fields) whose ``block`` converts what it makes; anything else as it is."""
    from dataclasses import is_dataclass, replace

    if is_dataclass(stage) and not isinstance(stage, type) and callable(getattr(stage, "block", None)):
        return replace(stage, block=converted(stage.block))
    if isinstance(stage, dict) and callable(stage.get("block")):
        return {**stage, "block": converted(stage["block"])}
    return stage
