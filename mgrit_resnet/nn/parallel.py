"""The layer-parallel network: its layers split over ranks, propagated by MGRIT forward and adjoint.

The solves and the autograd node that joins them live in :mod:`~mgrit_resnet.nn.bridge`,
the split of layers and states over the ranks in :mod:`~mgrit_resnet.nn.partition`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import comm as comm_module
from .._checks import check_int
from ..hierarchy import Hierarchy
from ..mgrit import options_from_config
from .bridge import CallStats, LayerFunction, LayerSolves
from .layers import ResidualLayer, classify, make_classifier, make_opening, open_state, resolve_device
from .ops import ConvOps, DenseOps
from .partition import Weights, fetch_foreign_weights, owner_of_layer
from .spec import INPUT_PROBLEMS, NON_FINITE_CODE, NON_FINITE_INPUT, NetworkSpec


@dataclass
class _WarmStart:
    fingerprint: tuple
    forward: list | None = None
    adjoint: list | None = None


class LayerParallel(nn.Module):
    """A residual network whose layers are split over ranks and propagated with MGRIT.

    Every rank holds the opening layer and the classifier, and only its own
    residual layers (:attr:`owned_layers`). The forward pass solves the layer
    recursion with nonlinear MGRIT, the backward pass solves the adjoint
    recursion with linear MGRIT backwards in layer-time, and a single
    :class:`torch.autograd.Function` joins them, so ``loss.backward()`` fills
    ``.grad`` of the owned and the replicated parameters and of the input
    exactly as autograd would for :class:`ODEResNet` (to the solver tolerance).
    The final state is broadcast, so logits and loss are the same on every rank.

    Parameters
    ----------
    spec
        The network (:class:`NetworkSpec`).
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
    """

    def __init__(
        self,
        spec: NetworkSpec,
        *,
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
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backend = comm_module.backend_for(comm)
        size, depth = self.backend.size, spec.depth
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

        mgrit = dict(
            levels=levels, coarsening=coarsening, min_coarse=min_coarse, relax=relax, c_weight=c_weight, cycle=cycle, tol=tol,
            tol_kind=tol_kind, max_iter=max_iter, initial_guess=initial_guess, skip_first_down=skip_first_down,
            relax_warm_start=relax_warm_start,
        )  # fmt: skip
        self._solves = LayerSolves.build(spec, self.backend, mgrit, fwd_iters, bwd_iters, track_grad_error)
        self.owned_layers = self._solves.owned_layers

        device = resolve_device(spec, comm_module.local_rank(self.backend) if spec.device == "cuda" else 0)
        self.device = device
        self.opening = make_opening(spec, seed, device)
        self.layers = nn.ModuleDict({str(n): ResidualLayer(spec, n, seed, device) for n in self.owned_layers})
        self.classifier = make_classifier(spec, seed, device)
        self._warm: dict[Hashable, _WarmStart] = {}

    @classmethod
    def from_config(cls, network: Any, mgrit: Any, comm: Any = None, seed: int = 0, **options: Any) -> LayerParallel:
        """Build from the config's ``[network]`` and ``[mgrit]`` sections; ``options`` as in the constructor.

        The ``[mgrit]`` section (or a mapping of some of its keys) is read as
        :meth:`MGRIT.from_config <mgrit_resnet.MGRIT.from_config>` reads it.
        """
        return cls(NetworkSpec.from_config(network), comm=comm, seed=seed, **options_from_config(mgrit), **options)

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

    @property
    def hierarchy(self) -> Hierarchy:
        """The forward solves' MGRIT hierarchy over the layer-time points (the adjoint's is its mirror image)."""
        return self._solves.forward.hierarchy

    @property
    def ops(self) -> DenseOps | ConvOps:
        """The layer operators the MGRIT solves step with (one level: autograd's own kernels)."""
        return self._solves.ops

    # ------------------------------------------------------------------ ownership
    def layer_owner(self, layer: int) -> int:
        """The rank that holds residual layer ``layer``."""
        check_int("layer", layer, minimum=0, maximum=self.spec.depth - 1)
        return owner_of_layer(layer, self._solves.layer_bounds)

    def _owned_parameters(self) -> list[nn.Parameter]:
        return [p for n in self.owned_layers for p in (self.layers[str(n)].weight, self.layers[str(n)].bias)]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, key: Hashable | None = None) -> torch.Tensor:
        """Logits for the input batch ``x``, the same on every rank (collective).

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
        x = x.to(device=self.device, dtype=self.spec.torch_dtype)
        warm = self._warm_entry(key, x)
        x0 = open_state(self.spec, self.opening, x)
        weights, weight_bytes = self._layer_weights()
        self._solves.stats = CallStats(weight_bytes=weight_bytes)
        state = LayerFunction.apply(x0, self._solves, weights, warm, *self._owned_parameters())
        return classify(self.spec, self.classifier, state)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exact network, by layer-serial propagation pipelined over the ranks (collective, no autograd).

        Use it to evaluate a network trained with inexact (one-shot) solves:
        the result does not depend on solver settings or warm starts.
        """
        self._check_input(x)
        x = x.to(device=self.device, dtype=self.spec.torch_dtype)
        x0 = open_state(self.spec, self.opening, x)
        weights = {n: (self.layers[str(n)].weight, self.layers[str(n)].bias) for n in self.owned_layers}
        solves = self._solves
        _, result = solves.forward_solve(solves.serial_forward, x0, weights, self.spec.ops)
        return classify(self.spec, self.classifier, solves.final_state(result, x0))

    def _check_input(self, x: Any) -> None:
        """Collective: raise the same ``ValueError`` on every rank if any rank's ``x`` is not a valid input.

        Every rank contributes the code of its verdict to one small buffer
        gather; the message of the first rank that found a problem is made
        again where it is known (every rank passes the same input).
        """
        code, message = self.spec.input_problem(x)
        backend = self.backend
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

    def _warm_entry(self, key: Hashable | None, x: torch.Tensor) -> _WarmStart | None:
        if not self.warm_start or key is None:
            return None
        host = x.detach().cpu().contiguous()
        fingerprint = (tuple(host.shape), str(host.dtype), hashlib.blake2b(host.numpy().tobytes(), digest_size=16).hexdigest())
        entry = self._warm.get(key)
        if entry is None or entry.fingerprint != fingerprint:
            entry = self._warm[key] = _WarmStart(fingerprint)
        return entry

    def _layer_weights(self) -> tuple[Weights, int]:
        """Collective: this rank's layers (detached) and the other ranks' layers its coarse steps use, and the bytes sent."""
        own = {n: (self.layers[str(n)].weight.detach(), self.layers[str(n)].bias.detach()) for n in self.owned_layers}
        solves = self._solves
        return fetch_foreign_weights(self.backend, solves.foreign, solves.layer_bounds, own, self.device)

    # ------------------------------------------------------------------ whole-model views
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: every parameter of the whole network on every rank (CPU), keyed as ``ODEResNet.state_dict()``."""
        return self._gather_full(lambda p: p.detach())

    def full_grad_dict(self) -> dict[str, torch.Tensor | None]:
        """Collective: the gradients after ``backward``, same keys as :meth:`full_state_dict`."""
        return self._gather_full(lambda p: None if p.grad is None else p.grad)

    def _gather_full(self, pick: Any) -> dict[str, Any]:
        def cpu(t):
            return None if t is None else t.detach().cpu().clone()

        local = {
            f"layers.{n}.{name}": cpu(pick(getattr(self.layers[str(n)], name))) for n in self.owned_layers for name in ("weight", "bias")
        }
        merged = {}
        for part in self.backend.allgather(local):
            merged.update(part)
        out = {f"opening.{name}": cpu(pick(getattr(self.opening, name))) for name in ("weight", "bias")}
        out.update((f"layers.{n}.{name}", merged[f"layers.{n}.{name}"]) for n in range(self.spec.depth) for name in ("weight", "bias"))
        out.update((f"classifier.{name}", cpu(pick(getattr(self.classifier, name)))) for name in ("weight", "bias"))
        return out

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's part of a whole-network state dict (from :meth:`full_state_dict` or ``ODEResNet.state_dict()``)."""
        expected = [f"opening.{k}" for k in ("weight", "bias")]
        expected += [f"layers.{n}.{k}" for n in range(self.spec.depth) for k in ("weight", "bias")]
        expected += [f"classifier.{k}" for k in ("weight", "bias")]
        missing = [k for k in expected if k not in state]
        if missing or len(state) != len(expected):
            extra = sorted(set(state) - set(expected))
            raise ValueError(
                f"state dict does not match this network (depth {self.spec.depth}): missing {missing[:3]}, unexpected {extra[:3]}"
            )
        with torch.no_grad():
            for key, param in self.named_parameters():
                param.copy_(state[key])

    def warm_start_bytes(self) -> int:
        """Bytes of the warm-start states this rank holds (forward and adjoint, every key)."""
        return sum(
            s.numel() * s.element_size()
            for w in self._warm.values()
            for states in (w.forward, w.adjoint)
            for s in states or ()
            if s is not None
        )

    def warm_state_dict(self) -> dict[Hashable, dict[str, Any]]:
        """Collective: the warm-start states of every key, as whole trajectories (CPU), on every rank.

        A trajectory holds ``None`` at the points a warm start does not read
        (see :meth:`MGRIT.restart_states`).

        Independent of the rank count; :meth:`load_warm_state_dict` takes them
        back at any rank count, so a resumed one-shot run continues exactly.
        """
        fwd_start, adj_start = self._solves.forward.owned_points.start, self._solves.adjoint.owned_points.start

        def host(states):
            return None if states is None else [None if s is None else s.detach().cpu() for s in states]

        local = {key: (w.fingerprint, fwd_start, host(w.forward), adj_start, host(w.adjoint)) for key, w in self._warm.items()}
        merged: dict[Hashable, dict[str, Any]] = {}
        for part in self.backend.allgather(local):
            for key, (fingerprint, fs, fwd, as_, adj) in part.items():
                entry = merged.setdefault(key, {"fingerprint": fingerprint, "forward": {}, "adjoint": {}})
                for name, start, states in (("forward", fs, fwd), ("adjoint", as_, adj)):
                    if states is not None:
                        entry[name].update((start + i, s) for i, s in enumerate(states))
        points = self.spec.depth + 1
        for entry in merged.values():
            for name in ("forward", "adjoint"):
                got = entry[name]
                entry[name] = [got[i] for i in range(points)] if len(got) == points else None
        return merged

    def load_warm_state_dict(self, states: dict[Hashable, dict[str, Any]]) -> None:
        """Take this rank's part of :meth:`warm_state_dict` (replaces the current warm starts)."""
        fwd, adj = self._solves.forward.owned_points, self._solves.adjoint.owned_points

        def mine(trajectory, block):
            return None if trajectory is None else [None if trajectory[i] is None else trajectory[i].to(self.device) for i in block]

        self._warm = {
            key: _WarmStart(tuple(entry["fingerprint"]), mine(entry["forward"], fwd), mine(entry["adjoint"], adj))
            for key, entry in states.items()
        }

    def extra_repr(self) -> str:
        """Depth, owned layers and ranks, for ``repr``."""
        return f"depth={self.spec.depth}, owned_layers={self.owned_layers}, ranks={self.backend.size}"
