"""The layer-parallel network: MGRIT forward, adjoint MGRIT backward, one autograd node."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import comm as comm_module
from .._checks import check_int
from ..mgrit import MGRIT
from .layers import NetworkSpec, ResidualLayer, classify, make_classifier, make_opening, open_state, resolve_device
from .propagators import AdjointProblem, ForwardProblem

WEIGHT_TAG = 999  # one tag for all weight messages: MPI keeps their order per sender


def layer_partition(depth: int, size: int) -> tuple[list[int], list[int], list[int]]:
    """Block bounds of the forward grid, the adjoint grid and the layers over ``size`` ranks.

    Point n of the forward grid is x_n; rank p owns points ``[a_p, a_{p+1})``
    and the layers that step into them, ``[a_p - 1, a_{p+1} - 1)``. The adjoint
    grid runs backwards (point t is lambda_{N-t}) over the ranks in reverse
    order, split so that every adjoint step uses a layer (and stored state) of
    the same rank.
    """
    points = depth + 1
    fwd = [p * points // size for p in range(size + 1)]
    layers = [0] + [a - 1 for a in fwd[1:]]
    adj = [0] + [depth + 2 - fwd[size - q] for q in range(1, size)] + [points]
    return fwd, adj, layers


def owner_of_layer(layer: int, layer_bounds: list[int]) -> int:
    """The rank whose block ``[layer_bounds[p], layer_bounds[p + 1])`` holds ``layer``."""
    return bisect.bisect_right(layer_bounds, layer) - 1


def foreign_layers(hierarchy: Any, layer_bounds: list[int]) -> list[list[int]]:
    """For every rank, the layers of other ranks its coarse forward steps use.

    The coarse step into point ``c`` of a level with stride ``s`` is layer
    ``c - s``; only a rank's first coarse point on a level can reach back
    past its own layers.
    """
    needs = []
    for rank in range(len(layer_bounds) - 1):
        block, lo = hierarchy.fine_block(rank), layer_bounds[rank]
        wanted = set()
        for level in range(1, hierarchy.n_levels):
            s = hierarchy.stride(level)
            first = -(-block.start // s) * s
            if first < block.stop and first >= s and first - s < lo:
                wanted.add(first - s)
        needs.append(sorted(wanted))
    return needs


@dataclass
class _WarmStart:
    fingerprint: tuple
    forward: list | None = None
    adjoint: list | None = None


@dataclass
class _Placeholder:
    """Stands in for the per-call problem when the solvers are built (only its size is read)."""

    n_steps: int


@dataclass
class CallStats:
    """What the last forward and backward call did (on this rank; lists are per rank)."""

    forward: dict[str, Any] = field(default_factory=dict)
    adjoint: dict[str, Any] = field(default_factory=dict)
    weight_bytes: int = 0
    grad_error: float | None = None


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
        size, rank, depth = self.backend.size, self.backend.rank, spec.depth
        if depth < 2 * size - 1:
            raise ValueError(f"network.depth must be at least 2 * ranks - 1 = {2 * size - 1} so that every rank holds a layer; got {depth}")
        for name, value in (("fwd_iters", fwd_iters), ("bwd_iters", bwd_iters)):
            if value is not None:
                check_int(name, value, minimum=1)
        for name, value in (("warm_start", warm_start), ("track_grad_error", track_grad_error)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be true or false; got {value!r}")
        self.fwd_iters, self.bwd_iters = fwd_iters, bwd_iters
        self.warm_start, self.track_grad_error = warm_start, track_grad_error

        fwd, adj, self._layer_bounds = layer_partition(depth, size)
        self.owned_layers = range(self._layer_bounds[rank], self._layer_bounds[rank + 1])

        options = dict(
            levels=levels, coarsening=coarsening, min_coarse=min_coarse, relax=relax, c_weight=c_weight, cycle=cycle,
            tol_kind=tol_kind, initial_guess=initial_guess, skip_first_down=skip_first_down, relax_warm_start=relax_warm_start,
        )  # fmt: skip
        placeholder = _Placeholder(depth)
        reversed_backend = comm_module.ReversedBackend(self.backend)

        def solver(backend, bounds, iters, n_levels=None):
            fixed = iters is not None
            kwargs = dict(options, tol=0.0 if fixed else tol, max_iter=iters if fixed else max_iter)
            if n_levels is not None:
                kwargs["levels"] = n_levels
            return MGRIT(placeholder, comm=backend, partition=bounds, **kwargs)

        self._forward_solver = solver(self.backend, fwd, fwd_iters)
        self._adjoint_solver = solver(reversed_backend, adj, bwd_iters)
        self._serial_forward = solver(self.backend, fwd, None, n_levels=1)
        self._serial_adjoint = solver(reversed_backend, adj, None, n_levels=1)
        hierarchy = self._forward_solver.hierarchy
        if check_int("levels", levels, minimum=1) > 1 and hierarchy.n_levels == 1:
            raise ValueError(
                f"mgrit.coarsening={coarsening!r} leaves no coarse grid for network.depth={depth} "
                f"(a coarse level needs at least mgrit.min_coarse={min_coarse} points): use a smaller coarsening or levels = 1"
            )
        self._foreign = foreign_layers(hierarchy, self._layer_bounds)
        # One level is layer-serial and kept bitwise equal to autograd; multilevel solves agree to the
        # solver tolerance anyway and take the faster adjoint kernels.
        self._ops = spec.ops if hierarchy.n_levels == 1 else spec.fast_ops()

        device = resolve_device(spec, comm_module.local_rank(self.backend) if spec.device == "cuda" else 0)
        self.device = device
        self.opening = make_opening(spec, seed, device)
        self.layers = nn.ModuleDict({str(n): ResidualLayer(spec, n, seed, device) for n in self.owned_layers})
        self.classifier = make_classifier(spec, seed, device)
        self.stats = CallStats()
        self._warm: dict[Hashable, _WarmStart] = {}

    @classmethod
    def from_config(cls, network: Any, mgrit: Any, comm: Any = None, seed: int = 0, **options: Any) -> LayerParallel:
        """Build from the config's ``[network]`` and ``[mgrit]`` sections; ``options`` as in the constructor."""
        solver_options = mgrit.as_dict() if hasattr(mgrit, "as_dict") else dict(mgrit)
        return cls(NetworkSpec.from_config(network), comm=comm, seed=seed, **solver_options, **options)

    # ------------------------------------------------------------------ ownership
    def layer_owner(self, layer: int) -> int:
        """The rank that holds residual layer ``layer``."""
        check_int("layer", layer, minimum=0, maximum=self.spec.depth - 1)
        return owner_of_layer(layer, self._layer_bounds)

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
        self._check_collectively(self.spec.check_input(x))
        x = x.to(device=self.device, dtype=self.spec.torch_dtype)
        warm = self._warm_entry(key, x)
        state = _LayerParallelFunction.apply(open_state(self.spec, self.opening, x), self, warm, *self._owned_parameters())
        return classify(self.spec, self.classifier, state)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exact network, by layer-serial propagation pipelined over the ranks (collective, no autograd).

        Use it to evaluate a network trained with inexact (one-shot) solves:
        the result does not depend on solver settings or warm starts.
        """
        self._check_collectively(self.spec.check_input(x))
        x = x.to(device=self.device, dtype=self.spec.torch_dtype)
        x0 = open_state(self.spec, self.opening, x)
        weights = {n: (self.layers[str(n)].weight, self.layers[str(n)].bias) for n in self.owned_layers}
        _, result = _forward(self, self._serial_forward, x0, weights, self.spec.ops)
        return classify(self.spec, self.classifier, _final_state(self, result, x0))

    def _check_collectively(self, problem: str | None) -> None:
        problems = self.backend.allgather(problem)
        for rank, message in enumerate(problems):
            if message is not None:
                where = "" if self.backend.size == 1 else f" (on rank {rank})"
                raise ValueError(message + where)

    def _warm_entry(self, key: Hashable | None, x: torch.Tensor) -> _WarmStart | None:
        if not self.warm_start or key is None:
            return None
        host = x.detach().cpu().contiguous()
        fingerprint = (tuple(host.shape), str(host.dtype), hashlib.blake2b(host.numpy().tobytes(), digest_size=16).hexdigest())
        entry = self._warm.get(key)
        if entry is None or entry.fingerprint != fingerprint:
            entry = self._warm[key] = _WarmStart(fingerprint)
        return entry

    def _weights(self) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], int]:
        """This rank's layers and the other ranks' layers its coarse steps use (fetched now)."""
        weights = {n: (self.layers[str(n)].weight.detach(), self.layers[str(n)].bias.detach()) for n in self.owned_layers}
        backend, me = self.backend, self.backend.rank
        if backend.size == 1 or not any(self._foreign):
            return weights, 0
        before = backend.bytes_sent
        requests, incoming = [], []
        for rank, layers in enumerate(self._foreign):
            for n in layers:
                if rank != me and n in self.owned_layers:
                    flat = torch.cat([t.reshape(-1) for t in weights[n]]).cpu()
                    requests.append((backend.isend(flat, rank, WEIGHT_TAG), flat))
        w_shape = self.layers[str(self.owned_layers.start)].weight.shape
        w_size = math.prod(w_shape)
        for n in self._foreign[me]:
            buffer = torch.empty(w_size + self.spec.width, dtype=self.spec.torch_dtype)
            incoming.append((n, buffer, backend.irecv(buffer, self.layer_owner(n), WEIGHT_TAG)))
        for n, buffer, request in incoming:
            request.Wait()
            buffer = buffer.to(self.device)
            weights[n] = (buffer[:w_size].view(w_shape), buffer[w_size:])
        for request, _ in requests:
            request.Wait()
        return weights, backend.bytes_sent - before

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
        fwd_start = self._forward_solver.hierarchy.fine_block(self.backend.rank).start
        adj_start = self._adjoint_solver.hierarchy.fine_block(self._adjoint_solver.backend.rank).start

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
        fwd = self._forward_solver.hierarchy.fine_block(self.backend.rank)
        adj = self._adjoint_solver.hierarchy.fine_block(self._adjoint_solver.backend.rank)

        def mine(trajectory, block):
            return None if trajectory is None else [None if trajectory[i] is None else trajectory[i].to(self.device) for i in block]

        self._warm = {
            key: _WarmStart(tuple(entry["fingerprint"]), mine(entry["forward"], fwd), mine(entry["adjoint"], adj))
            for key, entry in states.items()
        }

    def extra_repr(self) -> str:
        """Depth, owned layers and ranks, for ``repr``."""
        return f"depth={self.spec.depth}, owned_layers={self.owned_layers}, ranks={self.backend.size}"


def _broadcast(backend: Any, value: torch.Tensor | None, template: torch.Tensor, root: int) -> torch.Tensor:
    """``value`` of rank ``root`` on every rank (staged through host memory)."""
    if backend.size == 1:
        return value
    if backend.rank == root:
        host = value.detach().cpu().contiguous()
    else:
        host = torch.empty(template.shape, dtype=template.dtype)
    backend.bcast_buffer(host, root)
    return host.to(template.device)


def _summary(result: Any) -> dict[str, Any]:
    return {
        "iterations": result.iterations,
        "residuals": list(result.residuals),
        "converged": result.converged,
        "steps_per_rank": list(result.steps_per_rank),
        "bytes_per_rank": list(result.bytes_per_rank),
        "wall_time": result.wall_time,
    }


class _LayerParallelFunction(torch.autograd.Function):
    """``x_0 -> x_N`` by forward MGRIT; its backward is the adjoint MGRIT solve."""

    @staticmethod
    def forward(ctx, x0, par, warm, *params):
        weights, weight_bytes = par._weights()
        problem, result = _forward(par, par._forward_solver, x0.detach(), weights, par._ops, None if warm is None else warm.forward)
        if warm is not None:
            warm.forward = par._forward_solver.restart_states(result)
        final = _final_state(par, result, x0)
        par.stats = CallStats(forward=_summary(result), weight_bytes=weight_bytes)
        ctx.par, ctx.problem, ctx.warm = par, problem, warm
        return final

    @staticmethod
    def backward(ctx, grad_final):
        par, problem, warm = ctx.par, ctx.problem, ctx.warm
        lam0, grads, result = _adjoint(par, par._adjoint_solver, problem, grad_final, None if warm is None else warm.adjoint)
        if warm is not None:
            warm.adjoint = par._adjoint_solver.restart_states(result)
        par.stats.adjoint = _summary(result)
        if par.track_grad_error:
            par.stats.grad_error = _grad_error(par, problem, grad_final, lam0, grads)
        return (lam0, None, None, *grads)


def _forward(par: LayerParallel, solver: MGRIT, x0: torch.Tensor, weights: dict, ops: Any, warm: list | None = None):
    problem = ForwardProblem(x0, weights, par.spec.h, par.spec.depth, ops, par.spec.act)
    solver.problem = problem
    return problem, solver.solve(initial_guess=warm)


def _final_state(par: LayerParallel, result: Any, template: torch.Tensor) -> torch.Tensor:
    """``x_N``, owned by the last rank, on every rank."""
    last = par.backend.size - 1
    return _broadcast(par.backend, result.states[-1] if par.backend.rank == last else None, template, last)


def _adjoint(par: LayerParallel, solver: MGRIT, problem: ForwardProblem, grad_final: torch.Tensor, warm: list | None):
    adjoint = AdjointProblem(grad_final.detach().contiguous(), problem)
    solver.problem = adjoint
    result = solver.solve(initial_guess=warm)
    lam0 = _broadcast(par.backend, result.states[-1] if par.backend.rank == 0 else None, grad_final, 0)
    grads = [g for n in par.owned_layers for g in adjoint.parameter_grads(n)]
    return lam0, grads, result


def _grad_error(par: LayerParallel, problem: ForwardProblem, grad_final: torch.Tensor, lam0: torch.Tensor, grads: list) -> float:
    """Relative 2-norm error of the MGRIT vector-Jacobian product against the layer-serial one."""
    exact_problem, _ = _forward(par, par._serial_forward, problem.x0, problem.weights, problem.ops)
    exact_lam0, exact_grads, _ = _adjoint(par, par._serial_adjoint, exact_problem, grad_final, None)
    diff = sum(float((g - e).double().pow(2).sum()) for g, e in zip(grads, exact_grads))
    norm = sum(float(e.double().pow(2).sum()) for e in exact_grads)
    if par.backend.rank == 0:  # the input gradient is replicated: count it once
        diff += float((lam0 - exact_lam0).double().pow(2).sum())
        norm += float(exact_lam0.double().pow(2).sum())
    diff, norm = par.backend.allreduce_sum(diff), par.backend.allreduce_sum(norm)
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)
