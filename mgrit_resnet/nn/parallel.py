"""The layer-parallel network: its layers split over ranks, propagated by MGRIT forward and adjoint.

The solves and the autograd node that joins them live in :mod:`~mgrit_resnet.nn.bridge`,
the split of layers and states over the ranks in :mod:`~mgrit_resnet.nn.partition`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import comm as comm_module
from .._checks import check_choice, check_int
from ..config import COARSE_WEIGHTS
from ..hierarchy import Hierarchy
from ..mgrit import options_from_config
from .bridge import CallStats, LayerFunction, LayerSolves
from .layers import ResidualLayer, classify, make_classifier, make_opening, open_state, resolve_device, seeded_block
from .module_steps import ModuleSteps
from .ops import ConvOps, DenseOps
from .partition import owner_of_layer
from .spec import INPUT_PROBLEMS, NON_FINITE_CODE, NON_FINITE_INPUT, NetworkSpec, input_problem
from .user import UserParts, check_arguments, check_ends, check_one_stage, default_device, network_value, set_modes, user_network_parts
from .warm import WarmStart, fingerprint, gather_trajectories, split_trajectories, warm_bytes


def check_input_everywhere(backend: Any, code: int, message: str | None) -> None:
    """Collective: raise the same ``ValueError`` on every rank if any rank's input check found a problem.

    ``(code, message)`` is this rank's verdict (:func:`~mgrit_resnet.nn.spec.input_problem`).
    Every rank contributes its code to one small buffer gather; the message of
    the first rank that found a problem is made again where it is known
    (every rank passes the same input).
    """
    if backend.size == 1:
        if message is not None:
            raise ValueError(message)
        return
    codes = backend.allgather_buffer(np.array([code], dtype=np.int64))[:, 0]
    failed = np.flatnonzero(codes)
    if not failed.size:
        return
    rank, theirs = int(failed[0]), int(codes[failed[0]])
    if theirs == code:
        raise ValueError(f"{message} (on rank {rank})")
    if theirs == NON_FINITE_CODE:
        raise ValueError(f"{NON_FINITE_INPUT} (on rank {rank})")
    raise ValueError(
        f"the network input differs on rank {rank}: there it is {INPUT_PROBLEMS[theirs - 1]} (every rank must pass the same input)"
    )


class LayerParallel(nn.Module):
    """A residual network whose layers are split over ranks and propagated with MGRIT.

    Every rank holds the opening layer and the classifier (or closing), and
    only its own residual layers (:attr:`owned_layers`). The forward pass solves the layer
    recursion with nonlinear MGRIT, the backward pass solves the adjoint
    recursion with linear MGRIT backwards in layer-time, and a single
    :class:`torch.autograd.Function` joins them, so ``loss.backward()`` fills
    ``.grad`` of the owned and the replicated parameters and of the input
    exactly as autograd would for :class:`ODEResNet` (to the solver tolerance).
    The final state is broadcast, so logits and loss are the same on every rank.

    Two kinds of network: the built-in ones, ``LayerParallel(spec, ...)``
    (hand-written adjoint, the fast path), and your own,
    ``LayerParallel(block=make_block, depth=N, t_final=T, opening=..., closing=..., ...)``:
    layer ``n`` is the step ``x + h f_n(x)`` with ``f_n = make_block(n)``,
    ``h = T / N``, differentiated by autograd (see :mod:`~mgrit_resnet.nn.module_steps`).
    A rank calls ``make_block`` only for its own layers (and once for each
    layer it borrows for its coarse steps), under torch's generator seeded from
    ``(seed, n)``, so the network is the same at every rank count and the same
    as ``ODEResNet(block=make_block, ..., seed=seed)``. A block must be a fixed
    function of its input and parameters that keeps the state's shape and
    dtype: MGRIT evaluates every layer many times per call. BatchNorm in
    training mode and dropout are refused (use GroupNorm or LayerNorm, or an
    eval-mode BatchNorm, a fixed affine map), and so is any block whose output
    or buffers change between two evaluations on the same input; the blocks'
    ``training`` flags are frozen at construction (``train()`` / ``eval()``
    reach only the opening and the closing). Every rank checks its blocks and
    all raise the same error, naming the layer. The opening and closing are
    replicated (rank 0's parameters and buffers are broadcast at construction)
    and run under ordinary autograd.

    Parameters
    ----------
    spec
        The network (:class:`NetworkSpec`), for the built-in kinds.
    block
        ``make_block(layer) -> nn.Module``: the residual branch ``f_n`` of a user network.
    depth, t_final
        With ``block``: the number of layers ``N`` and the final time ``T``.
    opening, closing
        With ``block``: the modules before and after the layers (default: identity).
    ends
        ``False``: no opening and no classifier (or closing): the network is the
        layers alone, ``x_0 -> x_N``, taking and returning states (a stage of a
        :class:`~mgrit_resnet.nn.StagedParallel`). With ``block``, ``opening``
        and ``closing`` must then be ``None``.
    input_shape
        With ``block``: one sample's shape; when given, every block is checked
        at construction on a state of the opening's output shape, otherwise on
        the first call with each new state shape.
    device
        With ``block``: where every parameter must be (default: the opening's device, or the CPU).
    comm
        An mpi4py communicator or ``None`` for one rank.
    seed
        Initialisation seed; the same seed gives the same network as ``ODEResNet``.
    levels, coarsening, min_coarse, relax, c_weight, cycle, tol, tol_kind, max_iter, initial_guess, skip_first_down, relax_warm_start
        MGRIT options (see :class:`~mgrit_resnet.MGRIT`), used by both solves.
    fwd_iters, bwd_iters
        One-shot mode: a fixed number of forward / adjoint MGRIT iterations
        per call instead of iterating to ``tol``. ``None`` (default) iterates to ``tol``.
    warm_start
        Start each solve from the states of the previous call with the same
        ``key`` (see :meth:`forward`) and the same input batch.
    track_grad_error
        After each backward, also compute the exact layer-serial
        vector-Jacobian product for the same output gradient and record the
        relative error of the MGRIT one (parameters and input gradient) in
        ``stats.grad_error``. Costs a serial forward and backward sweep.
    coarse_weights
        A coarse step over an interval of layers uses the weights of its first
        layer (``"first"``) or the mean weights of its layers (``"mean"``; see
        :mod:`~mgrit_resnet.nn.propagators`); for user blocks, a block of the
        interval's first layer holding the mean of its blocks' parameters and
        floating-point buffers.
    """

    def __init__(
        self,
        spec: NetworkSpec | None = None,
        *,
        block: Any = None,
        depth: int | None = None,
        t_final: float | None = None,
        opening: nn.Module | None = None,
        closing: nn.Module | None = None,
        ends: bool = True,
        input_shape: tuple[int, ...] | None = None,
        device: Any = None,
        comm: Any = None,
        seed: int = 0,
        levels: int = 2,
        coarsening: int | list[int] = 2,
        min_coarse: int = 2,
        relax: str | list[str] = "FCF",
        c_weight: float = 1.0,
        cycle: str = "V",
        tol: float = 1e-9,
        tol_kind: str = "absolute",
        max_iter: int = 50,
        initial_guess: str = "zero",
        skip_first_down: bool = False,
        relax_warm_start: bool = True,
        fwd_iters: int | None = None,
        bwd_iters: int | None = None,
        warm_start: bool = False,
        track_grad_error: bool = False,
        coarse_weights: str = "first",
    ) -> None:
        check_arguments(spec, block, depth, t_final, opening=opening, closing=closing, input_shape=input_shape, device=device)
        check_ends(ends, opening, closing)
        super().__init__()
        self.spec = spec
        self.ends = ends
        self.backend = comm_module.backend_for(comm)
        if isinstance(self.backend, comm_module.MPIBackend):  # an exception on one rank must not leave the others waiting
            comm_module.install_abort_on_error(self.backend.comm)
        depth = spec.depth if spec is not None else depth
        self.depth, self.t_final = depth, spec.t_final if spec is not None else t_final
        size = self.backend.size
        if depth < 2 * size - 1:
            raise ValueError(f"network.depth must be at least 2 * ranks - 1 = {2 * size - 1} so that every rank holds a layer; got {depth}")
        for name, value in (("fwd_iters", fwd_iters), ("bwd_iters", bwd_iters)):
            if value is not None:
                check_int(name, value, minimum=1)
        for name, value in (("warm_start", warm_start), ("track_grad_error", track_grad_error)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be true or false; got {value!r}")
        self.fwd_iters, self.bwd_iters = fwd_iters, bwd_iters
        self.warm_start = warm_start
        check_choice("coarse_weights", coarse_weights, COARSE_WEIGHTS)

        mgrit = dict(
            levels=levels, coarsening=coarsening, min_coarse=min_coarse, relax=relax, c_weight=c_weight, cycle=cycle, tol=tol,
            tol_kind=tol_kind, max_iter=max_iter, initial_guess=initial_guess, skip_first_down=skip_first_down,
            relax_warm_start=relax_warm_start,
        )  # fmt: skip
        self._warm: dict[Hashable, WarmStart] = {}
        if spec is not None:
            self._solves = LayerSolves.build(spec, self.backend, mgrit, fwd_iters, bwd_iters, track_grad_error, coarse_weights)
            self.owned_layers = self._solves.owned_layers
            self.device = resolve_device(spec, comm_module.local_rank(self.backend) if spec.device == "cuda" else 0)
            self.dtype = spec.torch_dtype
            self.opening = make_opening(spec, seed, self.device) if ends else None
            self.layers = nn.ModuleDict({str(n): ResidualLayer(spec, n, seed, self.device) for n in self.owned_layers})
            self.classifier = make_classifier(spec, seed, self.device) if ends else None
            self._closing_name, self._parts = "classifier", None
            self._layer_keys = {n: ["weight", "bias"] for n in range(depth)}
            return
        self.device = default_device(opening, device)
        steps = ModuleSteps(lambda n: seeded_block(block, n, seed, self.device), depth, t_final)
        self._solves = LayerSolves.build(steps, self.backend, mgrit, fwd_iters, bwd_iters, track_grad_error, coarse_weights)
        self.owned_layers = self._solves.owned_layers
        parts = UserParts(self.backend, block, seed, self.owned_layers, opening, closing, self.device, input_shape)
        self.dtype = parts.dtype
        self.opening = parts.opening
        self.layers = nn.ModuleDict({str(n): parts.blocks[n] for n in self.owned_layers})
        self.closing = parts.closing
        self._closing_name, self._parts = "closing", parts
        self._layer_keys = {}
        for part in self.backend.allgather({n: list(parts.blocks[n].state_dict()) for n in self.owned_layers}):
            self._layer_keys.update(part)

    @classmethod
    def from_config(cls, network: Any, mgrit: Any, comm: Any = None, seed: int = 0, **options: Any) -> LayerParallel:
        """Build from the config's ``[network]`` and ``[mgrit]`` sections; ``options`` as in the constructor.

        The ``[mgrit]`` section (or a mapping of some of its keys) is read as
        :meth:`MGRIT.from_config <mgrit_resnet.MGRIT.from_config>` reads it.
        ``network.kind = "module"`` builds a user network from ``network.module``'s
        ``build(options)`` (see :mod:`~mgrit_resnet.nn.builder`), in
        ``network.dtype`` on the rank's device.
        """
        mgrit_options = options_from_config(mgrit)
        options = {"coarse_weights": network_value(network, "coarse_weights") or "first", **options}
        if network_value(network, "kind") != "module":
            return cls(NetworkSpec.from_config(network), comm=comm, seed=seed, **mgrit_options, **options)
        backend = comm_module.backend_for(comm)
        parts = user_network_parts(network, comm_module.local_rank(backend) if network_value(network, "device") == "cuda" else 0)
        check_one_stage(parts)
        return cls(**parts, comm=backend, seed=seed, **mgrit_options, **options)

    # ------------------------------------------------------------------ what the solves are
    @property
    def stats(self) -> CallStats:
        """What the last forward and backward call did (on this rank)."""
        return self._solves.stats

    @property
    def track_grad_error(self) -> bool:
        """Whether each backward also measures its error against the exact layer-serial one (``stats.grad_error``)."""
        return self._solves.track_grad_error

    @track_grad_error.setter
    def track_grad_error(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"track_grad_error must be true or false; got {value!r}")
        self._solves.track_grad_error = value

    @contextmanager
    def exact_calls(self) -> Iterator[None]:
        """Within it, calls propagate layer-serially: the exact network, differentiable, whatever the solver settings.

        A reference for a one-shot step: the gradient of a loss through calls
        made here is serial backprop's (to rounding), and they neither read nor
        change the warm starts, so the one-shot steps around them go on as if
        they had not been made. Each call costs ``N`` layer steps each way.
        """
        with self._solves.exact_calls():
            yield

    def set_iterations(self, fwd_iters: int, bwd_iters: int) -> None:
        """One-shot: the fixed forward and adjoint MGRIT iterations of the calls from now on (every rank must set the same)."""
        check_int("fwd_iters", fwd_iters, minimum=1)
        check_int("bwd_iters", bwd_iters, minimum=1)
        for solver, iters in ((self._solves.forward, fwd_iters), (self._solves.adjoint, bwd_iters)):
            solver.tol, solver.max_iter = 0.0, iters  # read at every solve
        self.fwd_iters, self.bwd_iters = fwd_iters, bwd_iters

    @property
    def hierarchy(self) -> Hierarchy:
        """The forward solves' MGRIT hierarchy over the layer-time points (the adjoint's is its mirror image)."""
        return self._solves.forward.hierarchy

    @property
    def ops(self) -> DenseOps | ConvOps | None:
        """The built-in layer operators the MGRIT solves step with (one level: autograd's own kernels); ``None`` for user blocks."""
        return self._solves.ops

    def train(self, mode: bool = True) -> LayerParallel:
        """As ``nn.Module.train``, but a user network's blocks keep the modes they were built in."""
        super().train(mode)
        if self._parts is not None:
            set_modes([self.layers[str(n)] for n in self.owned_layers], self._parts.modes)
        return self

    # ------------------------------------------------------------------ ownership
    def layer_owner(self, layer: int) -> int:
        """The rank that holds residual layer ``layer``."""
        check_int("layer", layer, minimum=0, maximum=self.depth - 1)
        return owner_of_layer(layer, self._solves.layer_bounds)

    def _owned_parameters(self) -> list[nn.Parameter]:
        steps = self._solves.steps
        return [p for n in self.owned_layers for p in steps.parameters(self.layers[str(n)])]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, key: Hashable | None = None) -> torch.Tensor:
        """Logits for the input batch ``x``, the same on every rank (collective).

        Without ends (``ends=False``): the final state ``x_N`` for the states ``x = x_0``.

        Parameters
        ----------
        x
            The input batch; every rank passes the same one.
        key
            With ``warm_start``, names the batch (e.g. its index in the epoch):
            the solves start from the states left by the last call with the
            same key, provided the input is bit-for-bit the same batch;
            otherwise they start cold.
        """
        self._check_input(x)
        x = x.to(device=self.device, dtype=self.dtype)
        warm = self.warm_entry(key, fingerprint(x)) if self.warm_start and key is not None else None
        return self._close(self.propagate(self._open(x), warm))

    def propagate(self, x0: torch.Tensor, warm: Any = None) -> torch.Tensor:
        """``x_N`` for the initial state ``x0`` by forward MGRIT, differentiable by adjoint MGRIT (collective).

        The middle of :meth:`forward`, without the input check, the opening and
        the closing: ``x0`` is a state (the same on every rank); the result is
        the same on every rank, and so is the gradient it passes back to ``x0``.
        ``warm`` is :meth:`warm_entry`'s entry of the batch, or ``None``.
        """
        weights, weight_bytes = self._layer_weights()
        self._solves.stats = CallStats(weight_bytes=weight_bytes)
        if self._solves.layer_serial:
            warm = None
        return LayerFunction.apply(x0, self._solves, weights, warm, torch.is_grad_enabled(), *self._owned_parameters())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exact network, by layer-serial propagation pipelined over the ranks (collective, no autograd).

        Use it to evaluate a network trained with inexact (one-shot) solves:
        the result does not depend on solver settings or warm starts.
        """
        self._check_input(x)
        x = x.to(device=self.device, dtype=self.dtype)
        return self._close(self.propagate_exact(self._open(x)))

    @torch.no_grad()
    def propagate_exact(self, x0: torch.Tensor) -> torch.Tensor:
        """``x_N`` for the initial state ``x0`` by layer-serial propagation pipelined over the ranks (collective, no autograd).

        On several ranks the batch goes through in parts, one behind the other
        (:meth:`~mgrit_resnet.nn.bridge.LayerSolves.pipelined_forward`), so
        the ranks share the work.
        """
        solves = self._solves
        weights = {n: solves.steps.own(self.layers[str(n)]) for n in self.owned_layers}
        return solves.pipelined_forward(x0, weights)

    @property
    def steps(self) -> Any:
        """What the solves step with: it builds the forward and adjoint problems of a call (built-in or user blocks)."""
        return self._solves.steps

    def open(self, x: torch.Tensor) -> torch.Tensor:
        """The opening applied to the input batch ``x``: the initial state ``x_0`` (replicated; collective for user blocks)."""
        return self._open(x)

    def close(self, state: torch.Tensor) -> torch.Tensor:
        """The closing (classifier) applied to a final state ``x_N``: the logits."""
        return self._close(state)

    def _open(self, x: torch.Tensor) -> torch.Tensor:
        """The initial state (a user network's blocks are checked on the first state of each shape: collective)."""
        if self._parts is None:
            return open_state(self.spec, self.opening, x) if self.ends else x
        x0 = self.opening(x)
        self._parts.probe(self.backend, x0)
        return x0

    def _close(self, state: torch.Tensor) -> torch.Tensor:
        if self._parts is not None:
            return self.closing(state)
        return classify(self.spec, self.classifier, state) if self.ends else state

    def _check_input(self, x: Any) -> None:
        """Collective: raise the same ``ValueError`` on every rank if any rank's ``x`` is not a valid input."""
        if self.spec is None:
            code, message = input_problem(x)
        else:
            code, message = self.spec.input_problem(x) if self.ends else self.spec.state_problem(x)
        check_input_everywhere(self.backend, code, message)

    def warm_entry(self, key: Hashable, fingerprint: tuple) -> WarmStart | None:
        """The warm-start entry of the batch ``key``: the one held when its input had this :func:`fingerprint`, else a new, cold one.

        ``None`` within :meth:`exact_calls`, which leave the entries as they are.
        """
        if self._solves.layer_serial:
            return None
        entry = self._warm.get(key)
        if entry is None or entry.fingerprint != fingerprint:
            entry = self._warm[key] = WarmStart(fingerprint)
        return entry

    def _layer_weights(self) -> tuple[dict, int]:
        """Collective: this rank's layers and the other ranks' layers its coarse steps use, and the bytes sent."""
        solves = self._solves
        own = {n: solves.steps.own(self.layers[str(n)]) for n in self.owned_layers}
        return solves.steps.fetch(self.backend, solves.foreign, solves.layer_bounds, own, self.device)

    # ------------------------------------------------------------------ whole-model views
    def full_state_dict(self, root_only: bool = False) -> dict[str, torch.Tensor] | None:
        """Collective: the whole network's parameters (and buffers) on every rank (CPU), keyed as ``ODEResNet.state_dict()``.

        ``root_only``: gathered on rank 0 alone (the others get ``None``), as a checkpoint needs them.
        """
        return self._gather_full(grads=False, root_only=root_only)

    def full_grad_dict(self) -> dict[str, torch.Tensor | None]:
        """Collective: the gradients after ``backward``, keyed as :meth:`full_state_dict` (its parameters: buffers have none)."""
        return self._gather_full(grads=True)

    def _gather_full(self, grads: bool, root_only: bool = False) -> dict[str, Any] | None:
        def view(module: nn.Module, prefix: str) -> dict[str, Any]:
            items = module.named_parameters() if grads else module.state_dict(keep_vars=True).items()
            picked = ((k, t.grad if grads else t) for k, t in items)
            return {prefix + k: None if t is None else t.detach().cpu().clone() for k, t in picked}

        local: dict[str, Any] = {}
        for n in self.owned_layers:
            local.update(view(self.layers[str(n)], f"layers.{n}."))
        parts = self.backend.gather(local) if root_only else self.backend.allgather(local)
        if parts is None:
            return None
        opening, closing = self._ends()
        out = view(opening, "opening.")
        for part in parts:  # in rank order, so in layer order
            out.update(part)
        out.update(view(closing, f"{self._closing_name}."))
        return out

    def _ends(self) -> tuple[nn.Module, nn.Module]:
        """The opening and the closing (or classifier); empty modules without ends."""
        if not self.ends and self._parts is None:
            return nn.Identity(), nn.Identity()
        return self.opening, getattr(self, self._closing_name)

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's part of a whole-network state dict (from :meth:`full_state_dict` or ``ODEResNet.state_dict()``)."""
        opening, closing = self._ends()
        expected = [f"opening.{k}" for k in opening.state_dict()]
        expected += [f"layers.{n}.{k}" for n in range(self.depth) for k in self._layer_keys[n]]
        expected += [f"{self._closing_name}.{k}" for k in closing.state_dict()]
        missing = [k for k in expected if k not in state]
        if missing or len(state) != len(expected):
            extra = sorted(set(state) - set(expected))
            raise ValueError(f"state dict does not match this network (depth {self.depth}): missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for key, tensor in self.state_dict(keep_vars=True).items():
                tensor.copy_(state[key])

    def warm_start_bytes(self) -> int:
        """Bytes of the warm-start states this rank holds (forward and adjoint, every key)."""
        return warm_bytes(self._warm)

    def warm_state_dict(self, packed: bool = False, root_only: bool = False) -> dict[Hashable, dict[str, Any]] | None:
        """Collective: the warm-start states of every key, as whole trajectories (CPU), on every rank.

        With ``root_only`` on rank 0 only, ``None`` elsewhere (the checkpoint's way).

        A trajectory holds ``None`` at the points a warm start does not read
        (see :meth:`MGRIT.restart_states`). With ``packed``, each trajectory
        is a few stacked tensors instead of a list of states (see
        :func:`~mgrit_resnet.nn.warm.gather_trajectories`): much faster to
        check and to save, which is how a checkpoint stores them.

        Independent of the rank count; :meth:`load_warm_state_dict` takes them
        back at any rank count, so a resumed one-shot run continues exactly.
        """
        solves = self._solves
        starts = solves.forward.owned_points.start, solves.adjoint.owned_points.start
        return gather_trajectories(self.backend, self._warm, *starts, self.depth + 1, packed, root_only)

    def load_warm_state_dict(self, states: dict[Hashable, dict[str, Any]]) -> None:
        """Take this rank's part of :meth:`warm_state_dict`, packed or not (replaces the current warm starts)."""
        self._warm = split_trajectories(states, self._solves.forward.owned_points, self._solves.adjoint.owned_points, self.device)

    def extra_repr(self) -> str:
        """Depth, owned layers and ranks, for ``repr``."""
        return f"depth={self.depth}, owned_layers={self.owned_layers}, ranks={self.backend.size}"
