"""Nonlinear (FAS) multigrid reduction in time over a distributed hierarchy.

The solver is written only against three things: a :class:`~mgrit_resnet.problems.Problem`
(one step on a level and interval), a :class:`~mgrit_resnet.hierarchy.Hierarchy`
(points, C/F splitting, ownership) and a communication backend. It knows nothing
about what the states are.

On every level the system is ``u_j = Phi_l(u_{j-1}) + g_j`` for ``j > 0`` with
``u_0`` the initial value and ``g = 0`` on the fine level. Point 0 is never
changed. Every exchange between ranks follows one pattern: a rank sends its
last point of a level to the owner of the next point and receives the point
before its first one. F-relaxation continues an F-interval across a rank
boundary with the freshly relaxed neighbour value, so the iteration does the
same arithmetic at every rank count.

A solver is built for a number of steps, not for one problem: :meth:`MGRIT.solve`
takes the problem of each solve (the network passes a new one per batch) and
keeps its levels and channels from one solve to the next while the states
keep their shape, dtype and device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _arrays
from ._checks import check_choice, check_float, check_int, per_level
from .comm import Backend, Channel, MPIBackend, backend_for, install_abort_on_error
from .config import CYCLES, INITIAL_GUESSES, SCHEMA, TOL_KINDS, parse_relax
from .hierarchy import Hierarchy
from .problems.base import Problem
from .result import SolveResult

_RELAX_TAG, _RESTRICT_TAG, _COARSE_TAG = 0, 1, 2


class _Level:
    """The states this rank holds on one level, and its channels."""

    def __init__(self, hierarchy: Hierarchy, level: int, rank: int) -> None:
        self.index = level
        self.m = hierarchy.factor(level)
        self.stride = hierarchy.stride(level)
        self.own = hierarchy.owned(level, rank)
        self.left = hierarchy.left(level, rank)
        self.right = hierarchy.right(level, rank)
        # Owned C-points, as indices of the next coarser level (== that level's owned points).
        self.c_own = range(-(-self.own.start // self.m), -(-self.own.stop // self.m))
        self.n_cf = 0
        self.u: list[Any] = []
        self.g: list[Any] | None = None
        self.ghost: Any = None
        self.channels: dict[int, Channel] = {}


def _state_key(state: Any) -> tuple:
    """What channel buffers depend on: the kind of state, its shape, dtype and device."""
    return type(state), tuple(getattr(state, "shape", ())), str(getattr(state, "dtype", "")), str(getattr(state, "device", "cpu"))


class MGRIT:
    """Nonlinear FAS multigrid-reduction-in-time solver.

    Parameters
    ----------
    problem
        The time-stepping problem (see :class:`~mgrit_resnet.problems.Problem`):
        the one :meth:`solve` solves unless it is given another. ``None``
        builds a solver for ``n_steps`` steps that :meth:`solve` always gives
        its problem.
    levels
        Maximum number of levels; 1 is a sequential solve.
    coarsening
        Coarsening factor (>= 2), or a list with one factor per level.
    min_coarse
        No level with fewer points than this is created.
    relax
        ``"F"``, ``"FCF"``, ``"FCFCF"``, ... or a list with one entry per level.
    c_weight
        Weight ``w`` of C-relaxation: ``u_c <- (1 - w) u_c + w (Phi(u_{c-1}) + g_c)``.
    cycle
        ``"V"`` or ``"F"``.
    tol, tol_kind
        Stop when the residual is at most ``tol`` (``"absolute"``) or at most
        ``tol`` times the first residual computed (``"relative"``).
    max_iter
        Maximum number of iterations.
    initial_guess
        ``"zero"``, ``"initial_value"`` (every point holds the initial value)
        or ``"sequential_coarse"`` (a sequential solve on the coarsest level,
        carried to the finer levels by F-interpolation). States passed to :meth:`solve` take precedence.
    skip_first_down
        Skip relaxation and the residual restriction on the first down-cycle:
        the first iteration is a coarsest-level sequential solve interpolated
        up. Given the ``coarse_rhs`` of an earlier solve (:meth:`solve`), it is
        instead a sequential solve of the first coarse level with that FAS
        right-hand side: a lagged coarse correction, which leaves a converged
        warm start converged. The fine states of a warm start are not read then.
    comm
        An mpi4py communicator, a backend from :mod:`mgrit_resnet.comm`, or
        ``None`` for one rank. With an mpi4py communicator of several ranks
        the solver installs :func:`~mgrit_resnet.comm.install_abort_on_error`
        (once per process; an excepthook the script installed before is
        kept and called before the abort), so that an uncaught exception on one rank ends every rank
        instead of leaving the others waiting forever.
    partition
        Optional fine-point block boundaries, one more than the number of
        ranks (see :class:`~mgrit_resnet.hierarchy.Hierarchy`); balanced by default.
    relax_warm_start
        With ``False``, a warm start passed to :meth:`solve` is taken as it is:
        the first iteration skips its initial fine F-relaxation (the warm
        F-points come from a previous solve's last F-relaxation anyway), which
        saves a fine sweep per solve in one-shot use.
    n_steps
        Number of fine steps, for a solver built without a problem (with one,
        it must equal ``problem.n_steps`` if given).

    Notes
    -----
    With one level the solve is sequential time stepping, pipelined over the
    ranks: one sweep, after which the residual is exactly zero by construction
    (every point is ``Phi`` of its predecessor), so it is recorded as ``0.0``
    without spending the steps to compute it.
    """

    def __init__(
        self,
        problem: Problem | None = None,
        *,
        levels: int = 2,
        coarsening: int | Sequence[int] = 2,
        min_coarse: int = 2,
        relax: str | Sequence[str] = "FCF",
        c_weight: float = 1.0,
        cycle: str = "V",
        tol: float = 1e-9,
        tol_kind: str = "absolute",
        max_iter: int = 50,
        initial_guess: str = "zero",
        skip_first_down: bool = False,
        comm: Any = None,
        partition: Sequence[int] | None = None,
        relax_warm_start: bool = True,
        n_steps: int | None = None,
    ) -> None:
        if problem is None and n_steps is None:
            raise TypeError("MGRIT needs a problem, or n_steps for a solver that is given its problem per solve")
        if problem is not None:
            if n_steps is not None and n_steps != problem.n_steps:
                raise ValueError(f"n_steps = {n_steps!r} differs from the problem's n_steps = {problem.n_steps!r}")
            n_steps = problem.n_steps
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self._problem = problem
        self.backend: Backend = backend_for(comm)
        if isinstance(self.backend, MPIBackend):
            install_abort_on_error(self.backend.comm)
        self.hierarchy = Hierarchy.build(self.n_steps + 1, levels, coarsening, min_coarse, self.backend.size, partition)
        self.relax = [parse_relax(r) for r in per_level("relax", relax, max(check_int("levels", levels, minimum=1) - 1, 1))]
        self.c_weight = check_float("c_weight", c_weight, minimum=0.0)
        if self.c_weight == 0.0:
            raise ValueError(f"c_weight must be a real number > 0; got {c_weight!r}")
        self.cycle = check_choice("cycle", cycle, CYCLES)
        self.tol = check_float("tol", tol, minimum=0.0)
        self.tol_kind = check_choice("tol_kind", tol_kind, TOL_KINDS)
        self.max_iter = check_int("max_iter", max_iter, minimum=0)
        self.initial_guess = check_choice("initial_guess", initial_guess, INITIAL_GUESSES)
        for name, value in (("skip_first_down", skip_first_down), ("relax_warm_start", relax_warm_start)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be true or false; got {value!r}")
        self.skip_first_down = skip_first_down
        self.relax_warm_start = relax_warm_start
        self._steps = 0
        self._active: Problem | None = None  # the problem of the solve under way
        self._levels: list[_Level] = []
        self._levels_key: tuple | None = None

    @classmethod
    def from_config(cls, problem: Problem | None, mgrit: Any, comm: Any = None, **overrides: Any) -> MGRIT:
        """The solver of a config's ``[mgrit]`` section for ``problem``.

        Parameters
        ----------
        problem
            The default problem (``None``: give ``n_steps`` in ``overrides``).
        mgrit
            The ``[mgrit]`` section (anything with ``as_dict()``) or a mapping
            of some of its keys; missing keys take the constructor's defaults,
            which are the config's.
        comm
            As for the constructor.
        overrides
            Constructor keywords that replace the section's values (``tol``,
            ``max_iter``, ``levels``, ``partition``, ``n_steps``, ...).
        """
        options = options_from_config(mgrit)
        try:
            return cls(problem, comm=comm, **{**options, **overrides})
        except (TypeError, ValueError) as error:
            key = str(error).split(" ", 1)[0]
            if key in options and key not in overrides:  # the constructor names its keyword; a config's user knows mgrit.KEY
                raise type(error)(f"mgrit.{error}") from None
            raise

    @property
    def problem(self) -> Problem | None:
        """The problem :meth:`solve` solves when it is given none (``None`` for a solver built for ``n_steps``)."""
        return self._problem

    @property
    def owned_points(self) -> range:
        """The fine time points this rank holds: ``result.owned`` of every solve."""
        return self.hierarchy.fine_block(self.backend.rank)

    # ------------------------------------------------------------------ driver
    def solve(
        self,
        initial_guess: Sequence[Any] | None = None,
        callback: Callable[[int, float], None] | None = None,
        *,
        problem: Problem | None = None,
        coarse_rhs: Sequence[Any] | None = None,
        keep_coarse_rhs: bool = False,
    ) -> SolveResult:
        """Iterate until the tolerance is met or ``max_iter`` iterations are done.

        Parameters
        ----------
        initial_guess
            Optional warm start: this rank's fine-level states, one per owned
            point (``result.states`` of an earlier solve, or its
            :meth:`restart_states`). A ``None`` entry takes the state before
            it. Point 0 always takes the problem's initial value.
        callback
            Called on every rank as ``callback(iteration, residual)`` each time
            a residual is known (iteration 0 is the initial guess).
        problem
            The problem of this solve, with the solver's ``n_steps``; by
            default the one the solver was built with.
        coarse_rhs
            ``result.coarse_rhs`` of an earlier solve of this solver: with
            ``skip_first_down``, the first iteration solves the first coarse
            level with this right-hand side (see the class docstring).
        keep_coarse_rhs
            Return in ``result.coarse_rhs`` the FAS right-hand side of the first
            coarse level at the final states (``g_c = Phi(u_{c-1}) - Phi_1(u_{c-1})``
            at its C-points, ``None`` elsewhere; free after a single pass, one
            coarse step per C-point after a cycle) when :attr:`uses_coarse_rhs`;
            ``None`` otherwise.

        Notes
        -----
        The levels and their channels (send and receive buffers, pinned host
        buffers for device states) are built on the first solve and kept for
        later solves whose states have the same type, shape, dtype and device.
        """
        problem = self._problem_for(problem)
        start_time = time.perf_counter()
        backend = self.backend
        bytes_before = backend.bytes_sent
        self._steps = 0
        self._active = problem
        try:
            u0 = problem.initial_value()
            self._prepare_levels(u0)
            fine = self._levels[0]
            self._set_initial_guess(fine, u0, initial_guess)
            warm = initial_guess is not None
            residuals, initial_residual, iteration, converged, phi, chain = self._iterate(fine, warm, callback, coarse_rhs)
            rhs = self._coarse_rhs(fine, phi, chain) if keep_coarse_rhs and self.uses_coarse_rhs else None
        except BaseException:
            self._levels, self._levels_key = [], None  # a solve broken off may leave messages in flight: start afresh
            raise
        finally:
            self._active = None
        for level in self._levels:
            for channel in level.channels.values():
                channel.finish()
        states = list(fine.u)
        for level in self._levels:  # the levels outlive the solve; their states need not
            level.u, level.g, level.ghost = [], None, None
        # One collective for the statistics: steps and bytes are integers far below 2**53, exact in float64.
        mine = np.array([self._steps, backend.bytes_sent - bytes_before, time.perf_counter() - start_time], dtype=np.float64)
        table = backend.allgather_buffer(mine)
        return SolveResult(
            residuals=residuals,
            initial_residual=initial_residual,
            iterations=iteration,
            converged=converged,
            points_per_level=self.hierarchy.points_per_level(),
            ranks=backend.size,
            steps_per_rank=[int(v) for v in table[:, 0]],
            bytes_per_rank=[int(v) for v in table[:, 1]],
            wall_time=float(table[:, 2].max()),
            states=states,
            owned=fine.own,
            coarse_rhs=rhs,
        )

    def _problem_for(self, problem: Problem | None) -> Problem:
        if problem is None:
            if self._problem is None:
                raise ValueError(f"this solver was built for {self.n_steps} steps without a problem: pass solve(problem=...)")
            return self._problem
        if problem.n_steps != self.n_steps:
            raise ValueError(f"the problem has n_steps = {problem.n_steps!r}; this solver is built for n_steps = {self.n_steps}")
        return problem

    @property
    def uses_coarse_rhs(self) -> bool:
        """Whether a warm start of this solver is its last solve's ``coarse_rhs`` (``skip_first_down``, several levels)."""
        return self.skip_first_down and self.hierarchy.n_levels > 1

    def _iterate(
        self, fine: _Level, warm: bool, callback: Callable[[int, float], None] | None, coarse_rhs: Sequence[Any] | None = None
    ) -> tuple[list[float], float | None, int, bool, list | None, Sequence[Any] | None]:
        """The iterations of a solve: residual history, initial residual, iteration count, convergence, last probe, chain.

        The chain is the first coarse level's right-hand side (on fine point
        indices, ``None`` for zero) whose sequential solve the fine C-points
        still are, or ``None`` when they are not one (see :meth:`_chain_rhs`).
        """
        residuals: list[float] = []
        initial_residual = None
        iteration = 0
        phi = None
        chain: Sequence[Any] | None = None
        skip_relax = warm and not self.relax_warm_start
        if self.skip_first_down and self.max_iter > 0:
            if coarse_rhs is not None and self.uses_coarse_rhs:
                self._lagged_coarse_pass(fine, coarse_rhs)
                chain = coarse_rhs  # read, never written
            else:
                self._coarse_pass()
                if len(self._levels) == 2:  # on more levels the first coarse level's F-points follow the coarser ones
                    chain = [None] * len(fine.own)
            iteration, skip_relax = 1, False  # the pass moved the C-points: the F-points must follow
        sequential = len(self._levels) == 1 and self.max_iter > 0
        if sequential:
            self._solve_coarsest(fine)
            iteration, residuals, converged = 1, [0.0], True
            if callback is not None:
                callback(1, 0.0)
        while not sequential:
            if iteration >= self.max_iter and not skip_relax:
                self._announce_last_sweep()
            self._f_relax(fine, sweep=not skip_relax)
            skip_relax = False
            phi = self._probe(fine)
            residual = self._residual_norm(fine, phi)
            if iteration == 0:
                initial_residual = residual
            else:
                residuals.append(residual)
            if callback is not None:
                callback(iteration, residual)
            reference = initial_residual if initial_residual is not None else residuals[0]
            threshold = self.tol if self.tol_kind == "absolute" else self.tol * reference
            converged = residual <= threshold
            if converged or iteration >= self.max_iter:
                break
            iteration += 1
            if len(self._levels) == 1:
                self._solve_coarsest(fine)
            else:
                chain = self._cycle(0, self.cycle, phi, chain)
        return residuals, initial_residual, iteration, converged, phi, chain

    def _announce_last_sweep(self) -> None:
        announce = getattr(self._active, "last_sweep", None)
        if announce is not None:
            announce()

    def restart_states(self, result: SolveResult) -> list[Any | None]:
        """The part of ``result.states`` that a warm start of this solver reads; ``None`` elsewhere.

        With ``relax_warm_start`` the first F-relaxation recomputes every
        F-point before anything reads it, so only the fine level's C-points are
        kept (one state in ``m``): keeping many warm starts then costs ``m``
        times less memory, and the solve is the same. With :attr:`uses_coarse_rhs`
        no state is read (the first coarse pass overwrites them all): pass
        ``result.coarse_rhs`` instead.
        """
        if self.uses_coarse_rhs:
            return [None] * len(result.states)
        if not self.relax_warm_start:
            return list(result.states)
        return [s if self.hierarchy.is_c_point(0, i) else None for i, s in zip(result.owned, result.states)]

    def gather_states(self, result: SolveResult) -> list[Any] | None:
        """Collective: all fine-level states in time order on rank 0, ``None`` elsewhere."""
        parts = self.backend.gather(result.states)
        return None if parts is None else [state for part in parts for state in part]

    # ------------------------------------------------------------------ setup
    def _prepare_levels(self, template: Any) -> None:
        """Build the levels and channels for states like ``template``, unless the ones held fit."""
        key = _state_key(template)
        if key != self._levels_key:
            self._levels, self._levels_key = self._make_levels(template), key

    def _make_levels(self, template: Any) -> list[_Level]:
        rank = self.backend.rank
        levels = []
        for index in range(self.hierarchy.n_levels):
            level = _Level(self.hierarchy, index, rank)
            if index < self.hierarchy.n_levels - 1:
                level.n_cf = self.relax[index]
            for purpose in (_RELAX_TAG, _RESTRICT_TAG, _COARSE_TAG):
                level.channels[purpose] = Channel(self.backend, level.left, level.right, 3 * index + purpose, template)
            levels.append(level)
        return levels

    def _set_initial_guess(self, fine: _Level, u0: Any, states: Sequence[Any] | None) -> None:
        own = fine.own
        if states is not None:
            if len(states) != len(own):
                raise ValueError(
                    f"initial_guess must hold one state per owned point ({len(own)} on rank {self.backend.rank}); got {len(states)}"
                )
        # One shared object suffices: stored states are replaced, never changed in place.
        fill = u0 if self.initial_guess == "initial_value" else _arrays.zeros_like(u0)
        if states is not None:
            fine.u = []
            for state in states:
                fill = fill if state is None else _arrays.copy(state)
                fine.u.append(fill)
        else:
            fine.u = [fill] * len(own)
        if own.start == 0:
            fine.u[0] = u0
        if states is None and self.initial_guess == "sequential_coarse":
            self._coarse_pass()

    # ------------------------------------------------------------------ cycles
    def _cycle(self, index: int, kind: str, phi: list | None = None, chain: Sequence[Any] | None = None) -> Sequence[Any] | None:
        """One cycle from level ``index``; ``chain``: the fine level's (:meth:`_iterate`). Returns the chain after it (``None``: none)."""
        level = self._levels[index]
        last = len(self._levels) - 1
        if index == last:
            self._solve_coarsest(level)
            return None
        phi = self._relax(level, phi)
        coarse = self._levels[index + 1]
        if chain is not None and level.n_cf == 0:  # the C-points are still the chain: its FAS right-hand side needs no coarse step
            chain = self._chain_rhs(level, phi, chain)
            self._inject(level, coarse, chain)
        else:
            chain = None
            self._restrict(level, coarse, phi)
        if kind == "F" and index + 1 < last:
            self._cycle(index + 1, "F")
        self._cycle(index + 1, "V")
        if index + 1 < last:
            self._f_relax(coarse)
        self._correct(level, coarse)
        return chain if index + 1 == last else None  # a coarser level moves the first coarse level's points off the chain

    def _coarse_pass(self) -> None:
        """Inject down without relaxation (``g = 0``), solve the coarsest level, interpolate up."""
        levels = self._levels
        for level, coarse in zip(levels, levels[1:]):
            coarse.u = [level.u[j * level.m - level.own.start] for j in coarse.own]
            coarse.g = None
        self._solve_coarsest(levels[-1])
        for index in range(len(levels) - 2, -1, -1):
            if index + 1 < len(levels) - 1:
                self._f_relax(levels[index + 1])
            self._correct(levels[index], levels[index + 1])

    def _lagged_coarse_pass(self, fine: _Level, rhs: Sequence[Any]) -> None:
        """Solve the first coarse level sequentially with an earlier solve's right-hand side; inject it into the fine C-points."""
        if len(rhs) != len(fine.own):
            raise ValueError(f"coarse_rhs needs one entry per owned point ({len(fine.own)} on rank {self.backend.rank}); got {len(rhs)}")
        coarse = self._levels[1]
        self._inject(fine, coarse, rhs)
        self._solve_coarsest(coarse)
        self._correct(fine, coarse)

    @staticmethod
    def _inject(level: _Level, coarse: _Level, rhs: Sequence[Any]) -> None:
        """Inject the C-points into ``coarse``, whose right-hand side is ``rhs`` (on ``level``'s indices), kept as the difference alone."""
        a, m = level.own.start, level.m
        coarse.u = [level.u[j * m - a] for j in coarse.own]
        coarse.g = [None if rhs[j * m - a] is None else (rhs[j * m - a], None) for j in coarse.own]

    def _coarse_rhs(self, fine: _Level, phi: list | None, chain: Sequence[Any] | None) -> list | None:
        """The first coarse level's FAS right-hand side at the final fine states, on fine point indices.

        From the chain when the C-points are one (:meth:`_chain_rhs`: no coarse
        step); else by the restriction, one coarse step per C-point.
        """
        if phi is None:
            return None
        if chain is not None:
            return self._chain_rhs(fine, phi, chain)
        a, m = fine.own.start, fine.m
        coarse = self._levels[1]
        self._restrict(fine, coarse, phi)
        rhs = [None] * len(fine.own)
        for j, g in zip(coarse.own, coarse.g):
            if g is not None:
                target, injected = g
                rhs[j * m - a] = target - injected
        return rhs

    def _chain_rhs(self, fine: _Level, phi: list, chain: Sequence[Any]) -> list:
        """The FAS right-hand side of the first coarse level at C-points that are its sequential solve with ``chain``.

        When the fine C-points are ``U_c = Phi_1(U_{c-1}) + g_c`` (after a coarse
        pass, or a two-level cycle, with F-relaxation since: it leaves them
        alone), ``Phi_1(U_{c-1}) = U_c - g_c`` is known, and the right-hand side
        ``Phi(u_{c-1}) - Phi_1(u_{c-1})`` is ``g_c + Phi(u_{c-1}) - U_c``: the old
        one plus the fine residual, with no coarse step made again.
        """
        a, m = fine.own.start, fine.m
        rhs: list[Any] = [None] * len(fine.own)
        for jc, value in zip(fine.c_own, phi):
            if value is not None:
                c = jc * m
                residual = self._plus_g(fine, value, c) - fine.u[c - a]
                if chain[c - a] is not None:
                    residual += chain[c - a]  # in place on the fresh difference: one state fewer allocated per C-point
                rhs[c - a] = residual
        return rhs

    # ------------------------------------------------------------------ pieces
    def _sweep(self, level: _Level, state: Any, first: int, stop: int) -> Any:
        """``u_j = Phi_l(u_{j-1}) + g_j`` for ``j = first, ..., stop - 1``, from ``state = u_{first-1}``.

        The hot loop of F-relaxation and of the coarsest solve: on the fine
        level (no ``g``) it makes no call but the step itself.
        """
        step, stride, index, a, u = self._active.step, level.stride, level.index, level.own.start, level.u
        for j in range(first, stop):
            state = step(state, (j - 1) * stride, j * stride, index)
            if level.g is not None:
                state = self._plus_g(level, state, j)
            u[j - a] = state
        self._steps += max(stop - first, 0)
        return state

    @staticmethod
    def _plus_g(level: _Level, value: Any, j: int) -> Any:
        """``value + g_j``, in place on ``value`` (a fresh step result).

        ``g_j = target - injected`` is kept as the pair (target, injected) and
        added as ``target + (value - injected)``: the result is exactly
        ``target`` when ``value`` equals the injected coarse step, so a
        converged point stays converged to the last bit.
        """
        if level.g is None or level.g[j - level.own.start] is None:
            return value
        target, injected = level.g[j - level.own.start]
        if injected is not None:  # None: a lagged right-hand side, kept as the difference alone
            value -= injected
        value += target
        return value

    def _phi(self, level: _Level, state: Any, j: int) -> Any:
        self._steps += 1
        return self._active.step(state, (j - 1) * level.stride, j * level.stride, level.index)

    def _relax(self, level: _Level, phi: list | None) -> list:
        """F(CF)^k relaxation; returns ``Phi(u_{c-1})`` at the owned C-points after the last F-sweep."""
        if phi is None:
            self._f_relax(level)
            phi = self._probe(level)
        for _ in range(level.n_cf):
            self._c_apply(level, phi)
            self._f_relax(level)
            phi = self._probe(level)
        return phi

    def _f_relax(self, level: _Level, sweep: bool = True) -> None:
        """F-relaxation; with ``sweep=False`` only its boundary exchange (a warm start taken as it is)."""
        own, m, u = level.own, level.m, level.u
        if not own:
            return
        a, b = own.start, own.stop
        channel = level.channels[_RELAX_TAG]
        channel.post_recv()
        first_c = -(-a // m) * m
        last_c = (b - 1) // m * m
        level.ghost = None
        has_c = last_c >= a
        if first_c != a and not has_c:
            # The whole block lies inside one F-interval: it can only continue the left neighbour's sweep.
            received = channel.wait_recv()
            if sweep:
                self._sweep(level, received, a, b)
        elif sweep and has_c:
            self._f_interval(level, last_c)  # the trailing interval first, so the send goes out early
        channel.send(u[b - 1 - a])
        if first_c != a and has_c:
            # The block starts inside an F-interval: continue the left neighbour's sweep. Waiting only
            # now, after the send, keeps ranks from waiting on each other in a chain across all of them.
            received = channel.wait_recv()
            if sweep:
                self._sweep(level, received, a, first_c)
        for c in range(first_c, last_c, m) if sweep else ():
            self._f_interval(level, c)
        if first_c == a and level.left is not None:
            level.ghost = channel.wait_recv()

    def _f_interval(self, level: _Level, c: int) -> None:
        self._sweep(level, level.u[c - level.own.start], c + 1, min(c + level.m, level.own.stop))

    def _probe(self, level: _Level) -> list:
        """``Phi(u_{c-1})`` for each owned C-point (``None`` at point 0)."""
        a, m, u = level.own.start, level.m, level.u
        phi = []
        for jc in level.c_own:
            c = jc * m
            if c == 0:
                phi.append(None)
                continue
            previous = level.ghost if c == a else u[c - 1 - a]
            phi.append(self._phi(level, previous, c))
        return phi

    def _c_apply(self, level: _Level, phi: list) -> None:
        a, m, u, w = level.own.start, level.m, level.u, self.c_weight
        for jc, value in zip(level.c_own, phi):
            if value is None:
                continue
            c = jc * m
            value = self._plus_g(level, value, c)
            u[c - a] = value if w == 1.0 else (1.0 - w) * u[c - a] + w * value

    def _residual_norm(self, level: _Level, phi: list) -> float:
        local = 0.0
        a, m = level.own.start, level.m
        for jc, value in zip(level.c_own, phi):
            if value is not None:
                local += _arrays.squared_norm(value - level.u[jc * m - a])
        return math.sqrt(self.backend.allreduce_sum(local))

    def _restrict(self, level: _Level, coarse: _Level, phi: list) -> None:
        """Inject the C-points and form the FAS right-hand side of the coarse level."""
        a, m = level.own.start, level.m
        coarse.u = [level.u[j * m - a] for j in coarse.own]
        if not coarse.own:
            coarse.g = []
            return
        channel = coarse.channels[_RESTRICT_TAG]
        channel.post_recv()
        channel.send(coarse.u[-1])
        ghost = channel.wait_recv() if coarse.left is not None else None
        g = []
        for k, j in enumerate(coarse.own):
            if j == 0:
                g.append(None)
                continue
            previous = ghost if k == 0 else coarse.u[k - 1]
            g.append((self._plus_g(level, phi[k], j * m), self._phi(coarse, previous, j)))
        coarse.g = g

    def _solve_coarsest(self, level: _Level) -> None:
        own, u = level.own, level.u
        if not own:
            return
        channel = level.channels[_COARSE_TAG]
        channel.post_recv()
        if own.start == 0:
            self._sweep(level, u[0], 1, own.stop)
        else:
            self._sweep(level, channel.wait_recv(), own.start, own.stop)
        channel.send(u[-1])

    def _correct(self, level: _Level, coarse: _Level) -> None:
        a, m = level.own.start, level.m
        for k, j in enumerate(coarse.own):
            level.u[j * m - a] = coarse.u[k]


def options_from_config(mgrit: Any) -> dict[str, Any]:
    """The constructor keywords of a config's ``[mgrit]`` section (or a mapping of some of its keys).

    A key the section cannot hold is a ``ValueError`` naming the allowed ones;
    the values are checked by the constructor.
    """
    values = mgrit.as_dict() if hasattr(mgrit, "as_dict") else dict(mgrit) if isinstance(mgrit, Mapping) else None
    if values is None:
        raise TypeError(f"the [mgrit] options must be a config section or a mapping; got {type(mgrit).__name__}")
    unknown = sorted(set(values) - set(SCHEMA["mgrit"]))
    if unknown:
        raise ValueError(f"unknown [mgrit] key {unknown[0]!r}; allowed keys: {', '.join(SCHEMA['mgrit'])}")
    return values


def check_coarse_grid(mgrit: Any, n_steps: int, steps_key: str) -> None:
    """Raise ``ValueError`` when ``[mgrit]`` asks for more than one level but its coarsening leaves no coarse grid.

    The one rule of ``solve`` and ``train``: a hierarchy that stops at the
    fine level would silently run a sequential solve where a multilevel one was
    asked for.

    Parameters
    ----------
    mgrit
        The ``[mgrit]`` section (or a mapping of some of its keys; missing keys take the defaults).
    n_steps
        The number of fine steps (time steps, or layers).
    steps_key
        The config key that gave ``n_steps`` (``"problem.n_steps"``, ``"network.depth"``), for the message.
    """
    options = {key: default for key, (default, _) in SCHEMA["mgrit"].items()}
    options.update(options_from_config(mgrit))
    levels, coarsening, min_coarse = options["levels"], options["coarsening"], options["min_coarse"]
    if levels > 1 and Hierarchy.build(n_steps + 1, levels, coarsening, min_coarse).n_levels == 1:
        raise ValueError(
            f"mgrit.coarsening={coarsening!r} leaves no coarse grid for {steps_key}={n_steps} "
            f"(a coarse level needs at least mgrit.min_coarse={min_coarse} points): use a smaller coarsening or levels = 1"
        )
