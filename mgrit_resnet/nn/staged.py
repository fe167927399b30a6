"""The layer-parallel staged network: one MGRIT solve per stage over all ranks, joined by replicated transitions.

Why per stage, and not one time line through all stages: a transition on a
time line is a point that a coarse step may jump over (a coarse step applies
the layer at the start of its interval only), and its states change shape
there. Here a transition never sits on any MGRIT grid: each stage is a
:class:`~mgrit_resnet.nn.LayerParallel` of its layers alone, whose final state
is broadcast and whose input gradient comes back on every rank, so the
transitions run under ordinary autograd on every rank between two solves,
exactly as in the serial twin. Every rank holds its share of every stage's
layers (memory per rank ~ N/P), and as each stage is split evenly, stages of
different cost per layer (widths, resolutions) keep the ranks balanced.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Hashable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from .. import comm as comm_module
from ..mgrit import check_coarse_grid
from .bridge import CallStats, relative_error
from .layers import stage_seed
from .parallel import LayerParallel, check_input_everywhere
from .stages import Stage, StagedNetwork, check_stages, network_dtype, replicate
from .user import default_device
from .warm import TRAJECTORIES, fingerprint

#: The keywords of :class:`LayerParallel` that :class:`StagedParallel` passes to every stage (the solver's options).
_NOT_SOLVER = {"self", "spec", "block", "depth", "t_final", "opening", "closing", "ends", "input_shape", "device", "comm", "seed"}
SOLVER_OPTIONS = tuple(name for name in inspect.signature(LayerParallel.__init__).parameters if name not in _NOT_SOLVER)


class StagedParallel(StagedNetwork):
    """A network of stages, each layer-parallel over all ranks: the staged twin of :class:`LayerParallel`.

    ``opening -> stage 0 -> transitions[0] -> stage 1 -> ... -> stage S-1 -> closing``.
    Stage ``s`` is a :class:`LayerParallel` of its layers alone (``ends=False``;
    its own blocks or a built-in kind, the built-in fast path included),
    solved by forward MGRIT over all ranks, differentiated by adjoint MGRIT;
    every rank holds only its own layers of every stage. The opening, the
    transitions and the closing are replicated (rank 0's parameters and
    buffers are broadcast at construction) and run under ordinary autograd on
    every rank. Logits are the same on every rank, and ``loss.backward()``
    fills ``.grad`` as autograd does for :class:`StagedResNet` with the same
    arguments and seed (to the solver tolerance; bitwise with one level).

    Parameters
    ----------
    stages
        A list of :class:`Stage` (or of mappings of its fields); each needs at
        least ``2 * ranks - 1`` layers.
    transitions
        One ``nn.Module`` between every two stages (``len(stages) - 1`` of them),
        a fixed function of its input and parameters: a transition that holds
        dropout or BatchNorm in training mode is a ``ValueError`` at
        construction naming it, the same on every rank (each rank would draw
        its own mask, or renormalise and change its buffers at every call), and
        so is one whose output or buffers change between two evaluations on the
        same input (probed at construction with ``input_shape``, else on the
        first call with each state shape). ``train()`` / ``eval()`` leave the
        transitions' modes as they were built.
    opening, closing
        The modules before the first and after the last stage (default:
        identity). They may hold dropout and BatchNorm in training mode, as
        a one-stage network's may: every rank runs them on the same input, so
        batch statistics agree, while dropout masks agree only while every
        rank's torch generator is in the same state (see :mod:`~mgrit_resnet.nn.user`).
    input_shape
        One sample's shape: inputs are checked against it, and the opening,
        the transitions and every stage's layers are checked at construction
        (else on the first call with each new shape). A transition whose
        output does not fit the next stage is a ``ValueError`` naming it, the
        same on every rank.
    device, dtype
        As for :class:`StagedResNet`.
    comm
        An mpi4py communicator or ``None`` for one rank.
    seed
        Layer ``n`` of stage ``s`` is drawn from ``(seed, s, n)``.
    **options
        The solver options of :class:`LayerParallel` (``levels``,
        ``coarsening``, ..., ``fwd_iters``, ``bwd_iters``, ``warm_start``,
        ``track_grad_error``), the same for every stage.
    """

    def __init__(
        self,
        stages: list[Any],
        transitions: list[nn.Module] | None = None,
        *,
        opening: nn.Module | None = None,
        closing: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        comm: Any = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(SOLVER_OPTIONS))
        if unknown:
            raise TypeError(
                f"StagedParallel got unexpected keyword arguments {unknown}; the solver options are {', '.join(SOLVER_OPTIONS)}"
            )
        super().__init__()
        self.backend = comm_module.backend_for(comm)
        if isinstance(self.backend, comm_module.MPIBackend):  # an exception on one rank must not leave the others waiting
            comm_module.install_abort_on_error(self.backend.comm)
        self.specs, transitions = check_stages(stages, transitions, self.backend.size)
        mgrit = {k: options[k] for k in ("levels", "coarsening", "min_coarse") if k in options}
        for s, stage in enumerate(self.specs):
            check_coarse_grid(mgrit, stage.depth, f"stages[{s}].depth")
        self.warm_start = options.get("warm_start", False)
        self.device = default_device(opening, device)
        self.dtype = network_dtype(dtype, [opening, *transitions, closing])
        opening, *transitions, closing = replicate(self.backend, opening, transitions, closing, self.device)
        self.opening = opening
        self.stages = nn.ModuleList(self._stage(s, stage, seed, options) for s, stage in enumerate(self.specs))
        self.transitions = nn.ModuleList(transitions)
        self.closing = closing
        self._setup(input_shape)

    def _stage(self, s: int, stage: Stage, seed: int, options: dict[str, Any]) -> LayerParallel:
        common = dict(ends=False, comm=self.backend, seed=stage_seed(seed, s), **options)
        if stage.builtin:
            net = LayerParallel(stage.spec(self.dtype, self.device), **common)
            if net.device != self.device:
                raise ValueError(f"stages[{s}]: a built-in stage is built on {net.device}, the network's device is {self.device}")
            return net
        try:
            return LayerParallel(block=stage.block, depth=stage.depth, t_final=stage.t_final, device=self.device, **common)
        except (TypeError, ValueError) as error:
            if str(error).startswith("layer "):  # a block's verdict, the same on every rank
                raise type(error)(f"stages[{s}], {error}") from error
            raise

    # ------------------------------------------------------------------ calls
    def forward(self, x: torch.Tensor, key: Hashable | None = None) -> torch.Tensor:
        """Logits for the input batch ``x``, the same on every rank (collective).

        ``key`` names the batch for warm starts, as for :meth:`LayerParallel.forward`:
        every stage keeps its own states per key, used while the network
        input is bit-for-bit the same batch.
        """
        x = self._prepare(x)
        names = fingerprint(x) if self.warm_start and key is not None else None
        state = self._replicated(self.opening, "the opening", x, "inputs")
        for s, stage in enumerate(self.stages):
            self._fit(s, state)
            state = stage.propagate(state, None if names is None else stage.warm_entry(key, names))
            if s < len(self.transitions):
                state = self._transition(s, state)
        return self.closing(state)

    @contextmanager
    def exact_calls(self) -> Iterator[None]:
        """Within it, every stage propagates layer-serially (:meth:`LayerParallel.exact_calls`): the exact network, differentiable."""
        with ExitStack() as stack:
            for stage in self.stages:
                stack.enter_context(stage.exact_calls())
            yield

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exact network: layer-serial propagation pipelined over the ranks, stage after stage (collective, no autograd)."""
        state = self._replicated(self.opening, "the opening", self._prepare(x), "inputs")
        for s, stage in enumerate(self.stages):
            self._fit(s, state)
            state = stage.propagate_exact(state)
            if s < len(self.transitions):
                state = self._transition(s, state)
        return self.closing(state)

    def _prepare(self, x: Any) -> torch.Tensor:
        check_input_everywhere(self.backend, *self._input_problem(x))
        return x.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ what the solves did
    @property
    def stats(self) -> CallStats:
        """What the last forward and backward call did (on this rank): the stages' together, and each one's in ``stages``.

        Iterations are the most any stage took, ``converged`` whether all
        did, a residual the 2-norm of the stages' residuals after that many
        iterations (a stage that stopped earlier counts with its last one),
        steps, bytes and times the sums. ``grad_error`` (with
        ``track_grad_error``) is the relative 2-norm error of all the stages'
        vector-Jacobian products together (their parameter gradients and input
        gradients), each against the exact layer-serial one for the same
        stage input and output gradient.
        """
        parts = [stage.stats for stage in self.stages]
        terms = [p.grad_error_terms for p in parts]
        diff, norm = (sum(t[0] for t in terms), sum(t[1] for t in terms)) if all(t is not None for t in terms) else (None, None)
        return CallStats(
            forward=merge_summaries([p.forward for p in parts]),
            adjoint=merge_summaries([p.adjoint for p in parts]),
            weight_bytes=sum(p.weight_bytes for p in parts),
            grad_error=None if diff is None else relative_error(diff, norm),
            grad_error_terms=None if diff is None else (diff, norm),
            stages=parts,
        )

    @property
    def track_grad_error(self) -> bool:
        """Whether each backward also measures its error against the exact layer-serial one (``stats.grad_error``)."""
        return self.stages[0].track_grad_error

    @track_grad_error.setter
    def track_grad_error(self, value: bool) -> None:
        for stage in self.stages:
            stage.track_grad_error = value

    @property
    def owned_layers(self) -> list[range]:
        """The layers of every stage that this rank holds (``owned_layers[s]``)."""
        return [stage.owned_layers for stage in self.stages]

    def layer_owner(self, stage: int, layer: int) -> int:
        """The rank that holds layer ``layer`` of stage ``stage``."""
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(self.stages):
            raise ValueError(f"stage must be an integer in [0, {len(self.stages) - 1}]; got {stage!r}")
        return self.stages[stage].layer_owner(layer)

    # ------------------------------------------------------------------ whole-model views
    def full_state_dict(self, root_only: bool = False) -> dict[str, torch.Tensor] | None:
        """Collective: the whole network's parameters (and buffers) on every rank (CPU), keyed as ``StagedResNet.state_dict()``.

        ``root_only``: gathered on rank 0 alone (the others get ``None``), as a checkpoint needs them.
        """
        return self._gather_full(grads=False, root_only=root_only)

    def full_grad_dict(self) -> dict[str, torch.Tensor | None]:
        """Collective: the gradients after ``backward``, keyed as :meth:`full_state_dict` (its parameters)."""
        return self._gather_full(grads=True)

    def _gather_full(self, grads: bool, root_only: bool = False) -> dict[str, Any] | None:
        parts = [stage.full_grad_dict() if grads else stage.full_state_dict(root_only=root_only) for stage in self.stages]
        if any(part is None for part in parts):  # root_only, on a rank other than 0
            return None
        out, tail = self._ends_view(grads)
        for s, part in enumerate(parts):
            out.update((f"stages.{s}.{k}", v) for k, v in part.items())
        out.update(tail)
        return out

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's part of a whole-network state dict (from :meth:`full_state_dict` or ``StagedResNet.state_dict()``)."""
        mine = self.state_dict(keep_vars=True)
        replicated = [k for k in mine if not k.startswith("stages.")]
        expected = set(replicated)
        for s, stage in enumerate(self.stages):
            expected.update(f"stages.{s}.layers.{n}.{k}" for n in range(stage.depth) for k in stage._layer_keys[n])
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"state dict does not match this network (depths {self.depths}): missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for s, stage in enumerate(self.stages):
            prefix = f"stages.{s}."
            stage.load_full_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        with torch.no_grad():
            for k in replicated:
                mine[k].copy_(state[k])

    # ------------------------------------------------------------------ warm starts
    def warm_start_bytes(self) -> int:
        """Bytes of the warm-start states this rank holds (every stage, forward and adjoint, every key)."""
        return sum(stage.warm_start_bytes() for stage in self.stages)

    def warm_state_dict(self, packed: bool = False, root_only: bool = False) -> dict[Hashable, dict[str, Any]] | None:
        """Collective: every key's warm-start states, ``{"fingerprint": ..., "stages": [{"forward": ..., "adjoint": ..., ...}, ...]}``.

        Whole trajectories per stage (CPU), independent of the rank count, as
        :meth:`LayerParallel.warm_state_dict` (``packed`` and ``root_only`` as there).
        """
        parts = [stage.warm_state_dict(packed, root_only) for stage in self.stages]
        if parts[0] is None:
            return None
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        return {
            k: {
                "fingerprint": parts[0][k]["fingerprint"],
                "stages": [{name: p[k][name] for name, _ in TRAJECTORIES} for p in parts],
            }
            for k in keys
        }

    def load_warm_state_dict(self, states: dict[Hashable, dict[str, Any]]) -> None:
        """Take this rank's part of :meth:`warm_state_dict` (replaces the current warm starts)."""
        for k, entry in states.items():
            if len(entry.get("stages", ())) != len(self.stages):
                raise ValueError(
                    f"warm-start states of key {k!r} hold {len(entry.get('stages', ()))} stages; this network has {len(self.stages)}"
                )
        for s, stage in enumerate(self.stages):
            stage.load_warm_state_dict({k: {"fingerprint": e["fingerprint"], **e["stages"][s]} for k, e in states.items()})

    def extra_repr(self) -> str:
        """Depths, owned layers and ranks, for ``repr``."""
        return f"depths={self.depths}, owned_layers={self.owned_layers}, ranks={self.backend.size}"


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One solve summary of the stages' (see :attr:`StagedParallel.stats`); empty unless every stage has one."""
    if not summaries or not all(summaries):
        return {}
    histories = [s["residuals"] for s in summaries if s["residuals"]]
    length = max((len(h) for h in histories), default=0)
    residuals = [math.sqrt(sum(h[min(k, len(h) - 1)] ** 2 for h in histories)) for k in range(length)]

    def total(name: str) -> list:
        return [sum(values) for values in zip(*(s[name] for s in summaries))]

    return {
        "iterations": max(s["iterations"] for s in summaries),
        "residuals": residuals,
        "converged": all(s["converged"] for s in summaries),
        "steps_per_rank": total("steps_per_rank"),
        "bytes_per_rank": total("bytes_per_rank"),
        "wall_time": sum(s["wall_time"] for s in summaries),
    }
