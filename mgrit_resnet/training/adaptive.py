"""Adaptive one-shot iterations: hold the gradient error near a target by choosing the MGRIT iteration counts of every step.

``train.fwd_iters = "auto"`` (and/or ``train.bwd_iters = "auto"``) hands the
counts of a one-shot step to :class:`IterationController`. It is pure: it
sends no message and reads no tensor; the training loop gives it one
:class:`StepObservation` per step, made of numbers that are the same on every
rank (gathered in rank order), so every rank takes the same decisions, and its
whole state is a dict of plain numbers that the checkpoint carries
(:meth:`~IterationController.state_dict`), so a resumed run decides the same.

The model
---------
The gradient error of a one-shot step comes from the forward and the adjoint
solves it did not finish. Each reports the 2-norm of its fine-level residual
after every iteration, at no cost; the error is tied to them by

.. math:: e \\approx A\\, r_f + B\\, r_a,

with :math:`r_f`, :math:`r_a` the last forward and adjoint residuals. The
coefficients are fitted (relative least squares, newer checks weigh more)
from exact checks: a checked step also takes its loss's gradient by serial
backprop through layer-serial calls (:meth:`~mgrit_resnet.nn.LayerParallel.exact_calls`,
:math:`2N` layer steps) and measures the relative error of the whole gradient
the optimiser sees: the layers', and the opening's and the closing's, which the
forward solve's error reaches through the final state and the loss. With one
check, or with checks that all saw the same ratio :math:`r_f / r_a`, the two
terms are taken to weigh alike (a small ridge towards that split); checks at
other counts separate them.

To predict the error at other counts, each solve's residual after its first
iteration :math:`r_1` and its contraction per iteration :math:`\\rho` are
tracked (moving averages: :math:`r_1` from every step, :math:`\\rho` from steps
with two or more iterations, :data:`PRIOR_CONTRACTION` before any):
:math:`r(k) = r_1 \\rho^{k-1}`.

The decisions
-------------
* Every step: if the predicted error of the current counts is above the
  target, take at once the cheapest counts (fewest iterations ``fwd + bwd``,
  then the smaller predicted error) predicted to meet it. If none does (one
  solve's count is fixed, or the ranges are too narrow), take the cheapest
  counts predicted within a factor ``1 +`` :data:`WORTH` of the most accurate
  ones' error: iterations that would buy less are not worth their cost. If
  the predicted error is below the target, lower the counts only after
  :data:`DWELL` steps without a change, to the cheapest predicted to stay under
  :data:`LOWER_MARGIN` times the target, or else move an iteration between the
  solves at equal cost where that is predicted to cut the error by that factor.
  A count falls by at most one per decision, so a wrong model costs one step's
  worth of accuracy, not a collapse; it may rise by any number.
* Exact checks: the first step, every ``check_every`` steps, the step after
  the counts changed, and when the prediction drifted by more than a factor
  :data:`DRIFT` since the last check (these two at most every
  ``check_every // 5`` steps). Every other periodic check is a probe: it runs
  one solve with one iteration fewer (one more at its least), the forward and
  the adjoint in turn, so that the checks see more than one ratio
  :math:`r_f / r_a` and the fit can tell the two terms apart.
* When the training loss stalls (an epoch's mean loss not :data:`STALL`
  below the best epoch's), gradient bias may be what holds it: the target is
  halved, down to :data:`MAX_TIGHTENING` times smaller. It is not loosened again.

The numbers the controller reads are the solves' residual norms and the exact
error, which every rank of a data group holds alike (they are sums over the
ranks); the training loop gathers them in rank order, so every rank feeds it
the same numbers. At another rank count the sums run in another order and may
differ in the last bit: a resumed run at another rank count decides the same
unless a prediction falls within rounding of a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import AUTO_ITERS

#: Weight of the newest step in the moving averages of the residuals (about a 5-step memory).
SMOOTHING = 0.2
#: Contraction per iteration assumed for a solve that has not yet done two iterations in a step.
PRIOR_CONTRACTION = 0.5
#: Weight of each older exact check relative to the next newer one in the fit; at most :data:`KEPT_CHECKS` are kept.
FORGET = 0.7
KEPT_CHECKS = 6
#: Weight of the ridge that holds the fit near an equal split between the forward and adjoint terms.
RIDGE = 1e-3
#: Cheaper counts are taken only if predicted under this fraction of the target.
LOWER_MARGIN = 0.7
#: When no counts are predicted to meet the target, the cheapest within this fraction above the most accurate counts' error are taken.
WORTH = 0.1
#: Steps after a change before the counts may be lowered (raising does not wait).
DWELL = 5
#: A prediction that moved by more than this factor since the last exact check calls for another.
DRIFT = 2.0
#: An epoch's loss counts as stalled unless it is at least this fraction below the best epoch's.
STALL = 0.01
#: The target is tightened (halved) at most down to target / MAX_TIGHTENING.
MAX_TIGHTENING = 8
_TINY = 1e-300


def require_fixed_counts(train: Any, what: str) -> None:
    """Raise ``ValueError`` when the ``[train]`` table ``train`` has ``"auto"`` counts: ``what`` needs fixed ones."""
    for key in ("fwd_iters", "bwd_iters"):
        if getattr(train, key) == AUTO_ITERS:
            raise ValueError(
                f'train.{key} = "{AUTO_ITERS}": {what} needs fixed one-shot iteration counts; give integers >= 1 '
                "(such as --set train.fwd_iters=2 --set train.bwd_iters=1)"
            )


@dataclass(frozen=True)
class StepObservation:
    """What one one-shot step reported, the same on every rank.

    Attributes
    ----------
    fwd_iters, bwd_iters
        The iterations the step's forward and adjoint solves did.
    fwd_first, fwd_last, adj_first, adj_last
        Each solve's residual after its first and after its last iteration.
    measured
        The relative gradient error of an exact check, or ``None`` (no check this step).
    """

    fwd_iters: int
    bwd_iters: int
    fwd_first: float
    fwd_last: float
    adj_first: float
    adj_last: float
    measured: float | None = None


def _range(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else value
    if not 1 <= low <= high:
        raise ValueError(f"{name}: the counts range must satisfy 1 <= low <= high; got {value!r}")
    return int(low), int(high)


class IterationController:
    """Choose the forward and adjoint iterations of every one-shot step to hold the gradient error near ``target``.

    Parameters
    ----------
    target
        The relative gradient error to hold, in (0, 1).
    check_every
        Steps between two exact checks (at most; see the module's notes for the other checks).
    fwd, bwd
        The counts each solve may take: ``(low, high)``, or one fixed count.
    start
        The first step's counts (default: 2, or the range's bound nearest to it).

    Every method is deterministic: the same observations give the same decisions on every rank and after a resume.
    """

    def __init__(
        self,
        target: float,
        check_every: int,
        fwd: int | tuple[int, int],
        bwd: int | tuple[int, int],
        start: tuple[int, int] | None = None,
    ) -> None:
        if not (isinstance(target, (int, float)) and 0 < target < 1):
            raise ValueError(f"target must be a real number in (0, 1); got {target!r}")
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every must be an integer >= 1; got {check_every!r}")
        self.target, self.check_every = float(target), check_every
        self.fwd_range, self.bwd_range = _range("fwd", fwd), _range("bwd", bwd)
        if start is None:
            start = (min(max(2, self.fwd_range[0]), self.fwd_range[1]), min(max(2, self.bwd_range[0]), self.bwd_range[1]))
        self.counts: tuple[int, int] = self._clip(start)
        self.tightening = 1  # the target in force is target / tightening
        self.step = 0  # steps observed
        self.last_change = -DWELL  # step at which the counts last changed
        self.last_check: int | None = None  # step of the last exact check
        self.checked_counts: tuple[int, int] | None = None  # the counts of the last check
        self.checked_prediction: float | None = None  # the prediction for those counts right after that check
        self.periodic = 0  # periodic checks so far (every other one is a probe)
        self.probes = 0  # probes so far (they alternate between the solves)
        self.first = {"fwd": None, "adj": None}  # moving average of the residual after one iteration
        self.log_rho = {"fwd": None, "adj": None}  # moving average of log(contraction per iteration)
        self.checks: list[list[float]] = []  # [r_f, r_a, measured error], oldest first
        self.coefficients: tuple[float, float] | None = None  # (A, B)
        self.best_loss: float | None = None
        self._epoch = _EpochLog()

    # ------------------------------------------------------------------ the model
    @property
    def effective_target(self) -> float:
        """The target in force: ``target`` divided by the tightening for stalled losses."""
        return self.target / self.tightening

    def contraction(self, which: str) -> float:
        """The contraction per iteration of the forward (``"fwd"``) or adjoint (``"adj"``) solve, as tracked."""
        log_rho = self.log_rho[which]
        return PRIOR_CONTRACTION if log_rho is None else math.exp(log_rho)

    def residual(self, which: str, iterations: int) -> float | None:
        """The predicted last residual of a solve with ``iterations`` iterations (``None`` before any step)."""
        first = self.first[which]
        if first is None:
            return None
        return first * self.contraction(which) ** (iterations - 1)

    def estimate(self, fwd_residual: float, adj_residual: float) -> float | None:
        """The gradient error the fitted model gives for these residuals (``None`` before the first check)."""
        if self.coefficients is None:
            return None
        a, b = self.coefficients
        return a * fwd_residual + b * adj_residual

    def predict(self, fwd_iters: int, bwd_iters: int) -> float | None:
        """The predicted gradient error of a step with these counts (``None`` before the first step and check)."""
        rf, ra = self.residual("fwd", fwd_iters), self.residual("adj", bwd_iters)
        if rf is None or ra is None:
            return None
        return self.estimate(rf, ra)

    # ------------------------------------------------------------------ the steps
    def plan(self) -> tuple[int, int, bool]:
        """The next step's forward and adjoint iterations, and whether it is checked exactly (``track_grad_error``).

        Mostly the chosen :attr:`counts`; every other periodic check is a probe
        instead: one solve one iteration fewer (or more, at its least), the
        forward and the adjoint in turn, so that the checks see more than one
        ratio of the two residuals and the fit can tell the two terms apart.
        """
        reason = self._check_reason()
        if reason == "periodic":
            self.periodic += 1
            if self.periodic % 2 == 0:
                probe = self._probe()
                if probe is not None:
                    return (*probe, True)
        return (*self.counts, reason is not None)

    def wants_check(self) -> bool:
        """Whether the next step is checked exactly (as :meth:`plan` says, without counting a periodic check)."""
        return self._check_reason() is not None

    def _check_reason(self) -> str | None:
        if self.last_check is None:
            return "first"
        since = self.step - self.last_check
        if since >= self.check_every:
            return "periodic"
        if since < max(1, self.check_every // 5):
            return None
        if self.counts != self.checked_counts:
            return "change"
        predicted = self.predict(*self.counts)
        if predicted is None or self.checked_prediction is None:
            return None
        low, high = sorted((max(predicted, _TINY), max(self.checked_prediction, _TINY)))
        return "drift" if high > DRIFT * low else None

    def _probe(self) -> tuple[int, int] | None:
        """The chosen counts with one solve's count one lower (one higher at its least), the solves in turn; ``None`` if both are fixed."""
        for turn in range(2):
            which = (self.probes + turn) % 2
            low, high = (self.fwd_range, self.bwd_range)[which]
            count = self.counts[which]
            moved = count - 1 if count > low else count + 1 if count < high else None
            if moved is not None:
                self.probes += 1
                return (moved, self.counts[1]) if which == 0 else (self.counts[0], moved)
        return None

    def observe(self, obs: StepObservation) -> dict[str, Any]:
        """Take one step's observation, refit on an exact check, and choose the next step's counts.

        Returns what the step is logged with: the counts it ran, the error
        estimated from its residuals (by the model as it was before this step's
        check, so a check tests the estimate), the measured error, and the next counts.
        """
        estimate = self.estimate(obs.fwd_last, obs.adj_last)
        if estimate is not None and not math.isfinite(estimate):
            estimate = None  # strict JSON in metrics.jsonl
        for which, iters, first, last in (
            ("fwd", obs.fwd_iters, obs.fwd_first, obs.fwd_last),
            ("adj", obs.bwd_iters, obs.adj_first, obs.adj_last),
        ):
            if not (math.isfinite(first) and math.isfinite(last)):
                continue  # a non-finite residual says nothing the next steps could use (the loop stops at a non-finite loss)
            self.first[which] = _average(self.first[which], max(first, 0.0))
            if iters >= 2 and first > 0 and last > 0:
                self.log_rho[which] = _average(self.log_rho[which], math.log(min(last / first, 1.0)) / (iters - 1))
        ran = (obs.fwd_iters, obs.bwd_iters)
        checked = obs.measured is not None and math.isfinite(obs.measured)
        if checked:
            self.checks = [*self.checks[-(KEPT_CHECKS - 1) :], [obs.fwd_last, obs.adj_last, obs.measured]]
            self.coefficients = fit(self.checks)
            self.last_check, self.checked_counts = self.step, self.counts  # a probe checks the model at the chosen counts too
        self.step += 1
        self._decide()
        if checked:
            self.checked_prediction = self.predict(*self.checked_counts)
        self._epoch.add(ran, estimate, obs.measured if checked else None, probe=ran != self.checked_counts if checked else False)
        return {
            "fwd_iters": ran[0],
            "bwd_iters": ran[1],
            "grad_error_estimate": estimate,
            "grad_error_measured": obs.measured if checked else None,
        }

    def _decide(self) -> None:
        if self.coefficients is None:
            return
        target = self.effective_target
        current = self.predict(*self.counts)
        if current is None:
            return
        (cf, cb), cost = self.counts, sum(self.counts)
        (fl, fh), (bl, bh) = self.fwd_range, self.bwd_range
        # a count falls by at most one per decision (a wrong model then costs little); it may rise by any number
        options = sorted(
            (f + b, self.predict(f, b), (f, b)) for f in range(max(fl, cf - 1), fh + 1) for b in range(max(bl, cb - 1), bh + 1)
        )
        if current > target:  # raise at once: to the cheapest counts predicted to meet the target, or nearly the most accurate
            best = min(o[1] for o in options)
            good = [o for o in options if o[1] <= target] or [o for o in options if o[1] <= (1 + WORTH) * best]
            chosen = good[0][2]
        elif self.step - self.last_change >= DWELL:  # lower only after a while, and with a margin
            cheaper = [o for o in options if o[0] < cost and o[1] <= LOWER_MARGIN * target]
            # else move iterations between the solves at equal cost where that clearly cuts the error (a way down)
            level = [o for o in options if o[0] == cost and o[1] <= LOWER_MARGIN * current]
            chosen = cheaper[0][2] if cheaper else min(level, key=lambda o: (o[1], o[2]))[2] if level else self.counts
        else:
            return
        if chosen != self.counts:
            self.counts, self.last_change = chosen, self.step

    def _clip(self, counts: tuple[int, int]) -> tuple[int, int]:
        (f, b), (fl, fh), (bl, bh) = counts, self.fwd_range, self.bwd_range
        return min(max(int(f), fl), fh), min(max(int(b), bl), bh)

    # ------------------------------------------------------------------ epochs
    def end_epoch(self, train_loss: float) -> dict[str, Any]:
        """Close an epoch with its mean training loss (the same on every rank): tighten the target on a stall.

        Returns the epoch's fields of ``metrics.jsonl`` (see the user guide): the
        mean counts, the counts from each step on where they changed
        (``iters_schedule``), the mean estimated and measured errors, the
        target in force after this epoch, and every exact check.
        """
        if math.isfinite(train_loss):
            if self.best_loss is not None and train_loss > (1 - STALL) * self.best_loss and self.tightening < MAX_TIGHTENING:
                self.tightening *= 2
            self.best_loss = train_loss if self.best_loss is None else min(self.best_loss, train_loss)
        report = self._epoch.report()
        report["grad_error_target"] = self.effective_target
        report["next_iters"] = list(self.counts)
        self._epoch = _EpochLog()
        return report

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything the decisions depend on, as plain numbers (no epoch under way: call it after :meth:`end_epoch`)."""
        return {
            "counts": list(self.counts),
            "tightening": self.tightening,
            "step": self.step,
            "last_change": self.last_change,
            "last_check": self.last_check,
            "checked_counts": None if self.checked_counts is None else list(self.checked_counts),
            "checked_prediction": self.checked_prediction,
            "periodic": self.periodic,
            "probes": self.probes,
            "first": dict(self.first),
            "log_rho": dict(self.log_rho),
            "checks": [list(c) for c in self.checks],
            "coefficients": None if self.coefficients is None else list(self.coefficients),
            "best_loss": self.best_loss,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; counts outside this controller's ranges are clipped into them."""
        self.counts = self._clip(tuple(state["counts"]))
        self.tightening = int(state["tightening"])
        self.step, self.last_change, self.last_check = int(state["step"]), int(state["last_change"]), state["last_check"]
        self.checked_counts = None if state["checked_counts"] is None else tuple(state["checked_counts"])
        self.checked_prediction = state["checked_prediction"]
        self.periodic, self.probes = int(state["periodic"]), int(state["probes"])
        self.first, self.log_rho = dict(state["first"]), dict(state["log_rho"])
        self.checks = [list(c) for c in state["checks"]][-KEPT_CHECKS:]
        self.coefficients = None if state["coefficients"] is None else tuple(state["coefficients"])
        self.best_loss = state["best_loss"]
        self._epoch = _EpochLog()


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)


def fit(checks: list[list[float]]) -> tuple[float, float]:
    """``(A, B) >= 0`` with ``error ~ A r_f + B r_a`` over the checks ``[r_f, r_a, error]`` (oldest first).

    Relative least squares (each check's error counts by its ratio to the
    measurement), the newest check weighing most (:data:`FORGET` per check
    older), with a small ridge towards the split that gives the two terms equal
    shares of the newest check's error. Checks with a zero or non-finite error
    or residual carry no information about the ratio and are skipped; without
    any, ``(0, 0)`` (the residuals are exact zeros: so is the error).
    """
    rows = [(rf, ra, e) for rf, ra, e in checks if e > 0 and math.isfinite(e) and rf >= 0 and ra >= 0 and rf + ra > 0]
    if not rows:
        return 0.0, 0.0
    rf0, ra0, e0 = rows[-1]
    # the prior: each term half the newest error (a term whose residual is zero gets the whole error of the other)
    prior = (e0 / (2 * rf0) if rf0 > 0 else 0.0, e0 / (2 * ra0) if ra0 > 0 else 0.0)
    if prior[0] == 0.0:
        prior = (0.0, e0 / ra0)
    elif prior[1] == 0.0:
        prior = (e0 / rf0, 0.0)
    # Normal equations of sum_i w_i (A x_i + B y_i - 1)^2 + lam ((A - A0)/A0)^2 + lam ((B - B0)/B0)^2, in the
    # scaled unknowns a = A / A0, b = B / B0 (a zero prior drops its unknown).
    weights = [FORGET ** (len(rows) - 1 - i) for i in range(len(rows))]
    lam = RIDGE * sum(weights)
    sxx = sxy = syy = sx = sy = 0.0
    for w, (rf, ra, e) in zip(weights, rows):
        x, y = prior[0] * rf / e, prior[1] * ra / e
        sxx, sxy, syy, sx, sy = sxx + w * x * x, sxy + w * x * y, syy + w * y * y, sx + w * x, sy + w * y
    if prior[1] == 0.0:
        return prior[0] * (sx + lam) / (sxx + lam), 0.0
    if prior[0] == 0.0:
        return 0.0, prior[1] * (sy + lam) / (syy + lam)
    sxx, syy, sx, sy = sxx + lam, syy + lam, sx + lam, sy + lam
    det = sxx * syy - sxy * sxy
    a, b = (sx * syy - sy * sxy) / det, (sy * sxx - sx * sxy) / det
    if a < 0:  # one term alone, by the same weighted fit
        a, b = 0.0, sy / syy
    elif b < 0:
        a, b = sx / sxx, 0.0
    return prior[0] * a, prior[1] * b


class _EpochLog:
    """What an epoch's steps chose and estimated, for its metrics row."""

    def __init__(self) -> None:
        self.steps = 0
        self.fwd = self.bwd = 0
        self.schedule: list[list[int]] = []
        self.estimates: list[float] = []
        self.checks: list[dict[str, Any]] = []

    def add(self, counts: tuple[int, int], estimate: float | None, measured: float | None, probe: bool) -> None:
        self.steps += 1
        self.fwd, self.bwd = self.fwd + counts[0], self.bwd + counts[1]
        if not self.schedule or self.schedule[-1][1:] != list(counts):
            self.schedule.append([self.steps, *counts])
        if estimate is not None and math.isfinite(estimate):
            self.estimates.append(estimate)
        if measured is not None:
            check = {"step": self.steps, "fwd_iters": counts[0], "bwd_iters": counts[1], "estimate": estimate, "measured": measured}
            self.checks.append({**check, "probe": probe})

    def report(self) -> dict[str, Any]:
        measured = [c["measured"] for c in self.checks if not c["probe"]]  # at the chosen counts
        return {
            "steps": self.steps,
            "fwd_iters_mean": self.fwd / self.steps if self.steps else None,
            "bwd_iters_mean": self.bwd / self.steps if self.steps else None,
            "iters_schedule": self.schedule,
            "grad_error_estimate": sum(self.estimates) / len(self.estimates) if self.estimates else None,
            "grad_error_measured": sum(measured) / len(measured) if measured else None,
            "grad_checks": self.checks,
        }
