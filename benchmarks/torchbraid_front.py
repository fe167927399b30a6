"""TorchBraid's one-shot training step on the conv network of ``layer_parallel.py``: cost and gradient error.

Measures TorchBraid (``torchbraid.LayerParallel``, XBraid underneath) on the
network of issue 16 in TorchBraid's own layout, side by side in one process
with the plain PyTorch step of the same network, at P = 1, one thread.

Network: 8 channels, 28 x 28 single-channel input, N = 64 residual layers
``x_{n+1} = x_n + h tanh(conv3x3(x_n))`` with ``h = T / N``, ``T = 1`` (the
project's ``t_final``; each convolution drawn from PyTorch's default
initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the project's). TorchBraid's
ODE block takes the step ``h f(x) + x`` of a layer ``f = tanh o conv3x3``. The
layout is TorchBraid's MNIST example's: the input repeated to 8 channels (no
trainable opening) and a ``Linear(8 * 784, 32)``, ReLU, ``Linear(32, 10)`` head.
Batch 50, float32, cross-entropy, SGD.

Solver: 3 levels, coarsening 4, F-relaxation on the fine level and FCF on the
coarse ones (``setNumRelax``), fixed forward / adjoint iteration counts
(``setFwdMaxIters`` / ``setBwdMaxIters``: 1/1, 2/1, 3/3, 5/5), the first
down-cycle skipped (``setSkipDowncycle(True)``, as TorchBraid's MNIST example
runs it and as the figures quoted for issue 16 were evidently measured;
``--no-skip-downcycle`` relaxes there too, TorchBraid's own default, and 1/1
then costs 3.8x serial instead of 1.4x). Warm starts are TorchBraid's own:
XBraid keeps its grids between calls (warm restart), so each solve starts from
the previous call's solution, that is, from the previous batch's.

Protocol, per setting (as ``layer_parallel.py``): a fresh network (same seed),
``batches`` fixed random batches cycled (``layer_parallel.make_batches``),
untimed warm-up steps (two passes over the batches for settings with a single
forward or adjoint iteration, one pass otherwise), then timed steps. A step is
``zero_grad``, forward, cross-entropy, backward, ``SGD.step``. Before every
timed step the serial twin, an ``nn.Sequential`` of the same modules with the
parameters copied from TorchBraid's network, makes the same step on the same
batch; the cost is the median of the per-step ratios (TorchBraid / serial), the
gradient error the median of ``||g - g_serial|| / ||g_serial||`` over all
parameter gradients (accumulated in float64; the head's dominate the norm, so
the figures also give the error of the residual layers' gradients alone).

Usage::

    python benchmarks/torchbraid_front.py [--iters 1/1,2/1,3/3,5/5] [--quick] [--json out.json]

``benchmarks/fronts.py`` calls :func:`measure` where ``import torchbraid``
works. The module itself imports TorchBraid only when it measures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layer_parallel  # noqa: E402

from mgrit_resnet.nn import NetworkSpec  # noqa: E402

#: TorchBraid's forward / adjoint iteration counts measured by default.
SETTINGS = "1/1,2/1,3/3,5/5"


@dataclass(frozen=True)
class Case:
    """The network, the solver hierarchy and the protocol of one measurement.

    Parameters
    ----------
    depth, width, image_size, classes
        Residual layers ``N``, channels, input side length, classes.
    hidden
        Hidden features of the head (TorchBraid's MNIST example: 32).
    t_final
        Final layer-time ``T``; the step is ``h = T / N``.
    batch, batches
        Batch size and number of fixed batches cycled.
    steps
        Timed steps per setting.
    warmup
        Untimed steps per setting; ``None``: two passes over the batches for a
        setting with a single forward or adjoint iteration, one pass otherwise.
    lr, seed
        SGD learning rate; seed of the network (the data's is ``1000 + seed``).
    levels, coarsening, skip_downcycle
        TorchBraid's hierarchy (forward and adjoint alike) and whether the
        first down-cycle is skipped.
    """

    depth: int = 64
    width: int = 8
    image_size: int = 28
    classes: int = 10
    hidden: int = 32
    t_final: float = 1.0
    batch: int = 50
    batches: int = 4
    steps: int = 4
    warmup: int | None = None
    lr: float = 0.1
    seed: int = 0
    levels: int = 3
    coarsening: int = 4
    skip_downcycle: bool = True


#: The network of issue 16.
FULL = Case()
#: A tiny network for smoke runs (seconds).
QUICK = Case(depth=32, width=2, image_size=6, batch=4, batches=2, steps=1, warmup=1)


class StepLayer(nn.Module):
    """``f(x) = tanh(conv3x3(x))``: the residual branch of one layer (TorchBraid adds ``x + h f(x)``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class ResidualStep(nn.Module):
    """One residual layer of the serial twin: ``h f(x) + x``, the arithmetic of TorchBraid's ODE block."""

    def __init__(self, layer: nn.Module, h: float) -> None:
        super().__init__()
        self.layer, self.h = layer, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.h * self.layer(x)).add_(x)


class RepeatChannels(nn.Module):
    """TorchBraid's opening: the single-channel input repeated ``channels`` times, no parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.channels, 1, 1)


class Head(nn.Module):
    """TorchBraid's closing: flatten, ``Linear(width * side**2, hidden)``, ReLU, ``Linear(hidden, classes)``."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.fc1 = nn.Linear(case.width * case.image_size**2, case.hidden)
        self.fc2 = nn.Linear(case.hidden, case.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class TorchBraidNet(nn.Module):
    """Opening, ``torchbraid.LayerParallel`` of the residual layers, head."""

    def __init__(self, case: Case, fwd_iters: int, adj_iters: int, comm: Any = None) -> None:
        import torchbraid
        from mpi4py import MPI

        super().__init__()
        torch.manual_seed(case.seed)
        self.open = RepeatChannels(case.width)
        lp = torchbraid.LayerParallel(
            MPI.COMM_SELF if comm is None else comm,
            lambda: StepLayer(case.width),
            case.depth,
            case.t_final,
            max_fwd_levels=case.levels,
            max_bwd_levels=case.levels,
            max_iters=max(fwd_iters, adj_iters),
        )
        lp.setPrintLevel(0, True)  # TorchBraid's own diagnostics
        lp.setPrintLevel(0, False)  # XBraid's
        lp.setFwdMaxIters(fwd_iters)
        lp.setBwdMaxIters(adj_iters)
        lp.setCFactor(case.coarsening)
        lp.setSkipDowncycle(case.skip_downcycle)
        lp.setNumRelax(1)  # FCF on every level ...
        lp.setNumRelax(0, level=0)  # ... but F on the fine one
        self.parallel = lp
        self.close = Head(case)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.close(self.parallel(self.open(x)))

    def step_layers(self) -> list[nn.Module]:
        """The residual branches ``f_n`` in layer order (the modules TorchBraid's ODE blocks wrap)."""
        return [block.layer for block in self.parallel.layer_models]


def serial_twin(net: TorchBraidNet, case: Case) -> nn.Sequential:
    """An ``nn.Sequential`` of the same opening, residual layers and head, with copies of ``net``'s parameters."""
    h = case.t_final / case.depth
    layers = [ResidualStep(StepLayer(case.width), h) for _ in range(case.depth)]
    twin = nn.Sequential(RepeatChannels(case.width), *layers, Head(case))
    copy_parameters(net, twin)
    return twin


def _ordered_parameters(model: nn.Module) -> list[nn.Parameter]:
    if isinstance(model, TorchBraidNet):
        return [p for layer in model.step_layers() for p in layer.parameters()] + list(model.close.parameters())
    return list(model.parameters())


@torch.no_grad()
def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter of ``source`` into ``target`` (residual layers in order, then the head)."""
    pairs = list(zip(_ordered_parameters(source), _ordered_parameters(target), strict=True))
    for p, q in pairs:
        if p.shape != q.shape:
            raise ValueError(f"parameter shapes differ: {tuple(p.shape)} and {tuple(q.shape)}")
        q.copy_(p)


def gradient_error(model: nn.Module, reference: nn.Module, count: int | None = None) -> float:
    """``||g - g_ref|| / ||g_ref||`` over the parameter gradients, accumulated in float64.

    ``count``: only the first ``count`` parameters (residual layers first, then
    the head); ``None``: all of them.
    """
    diff = norm = 0.0
    pairs = list(zip(_ordered_parameters(model), _ordered_parameters(reference), strict=True))
    for p, q in pairs[:count]:
        exact = q.grad.double()
        got = torch.zeros_like(exact) if p.grad is None else p.grad.double()
        diff += float((got - exact).pow(2).sum())
        norm += float(exact.pow(2).sum())
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One SGD step; returns its wall time in seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def make_batches(case: Case) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed batches of ``layer_parallel.py`` for this case (synthetic MNIST-sized data)."""
    spec = NetworkSpec(kind="conv", in_channels=1, image_size=case.image_size, width=case.width, depth=case.depth, n_classes=case.classes)
    args = argparse.Namespace(seed=case.seed, classes=case.classes, batches=case.batches, batch=case.batch)
    return layer_parallel.make_batches(args, spec)


def warmup_steps(case: Case, fwd_iters: int, adj_iters: int) -> int:
    """Untimed steps before the timed ones (the rule of ``layer_parallel.py``)."""
    if case.warmup is not None:
        return case.warmup
    return (2 if min(fwd_iters, adj_iters) == 1 else 1) * case.batches


def measure_setting(case: Case, fwd_iters: int, adj_iters: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Warm up and time TorchBraid at one iteration setting, each timed step after the serial twin's.

    Returns
    -------
    dict
        ``setting``, ``ratio`` (median of TorchBraid / serial step time),
        ``grad_error`` (median), ``grad_error_max``, ``grad_error_layers``
        (median, residual layers' gradients alone), ``time`` and
        ``serial_time`` (median seconds), ``warmup``, ``steps`` and the
        per-step ``rows``.
    """
    net = TorchBraidNet(case, fwd_iters, adj_iters)
    optimizer = torch.optim.SGD(net.parameters(), lr=case.lr)
    warmup = warmup_steps(case, fwd_iters, adj_iters)
    rows = []
    for step in range(warmup + case.steps):
        x, y = batches[step % len(batches)]
        if step < warmup:
            _train_step(net, optimizer, x, y)
            continue
        serial = serial_twin(net, case)
        serial_optimizer = torch.optim.SGD(serial.parameters(), lr=case.lr)
        gc.collect()
        serial_time = _train_step(serial, serial_optimizer, x, y)
        gc.collect()
        braid_time = _train_step(net, optimizer, x, y)
        # optimizer.step() has moved both networks; the gradients stay for the comparison
        rows.append(
            {
                "time": braid_time,
                "serial_time": serial_time,
                "ratio": braid_time / serial_time,
                "grad_error": gradient_error(net, serial),
                "grad_error_layers": gradient_error(net, serial, count=2 * case.depth),
            }
        )
        del serial, serial_optimizer
    fwd_stats, adj_stats = net.parallel.getFwdStats(), net.parallel.getBwdStats()
    del net, optimizer
    gc.collect()
    return {
        "setting": f"{fwd_iters}/{adj_iters}",
        "ratio": statistics.median(r["ratio"] for r in rows),
        "grad_error": statistics.median(r["grad_error"] for r in rows),
        "grad_error_max": max(r["grad_error"] for r in rows),
        "grad_error_layers": statistics.median(r["grad_error_layers"] for r in rows),
        "time": statistics.median(r["time"] for r in rows),
        "serial_time": statistics.median(r["serial_time"] for r in rows),
        "iterations": [fwd_stats[0], adj_stats[0]],
        "warmup": warmup,
        "steps": case.steps,
        "rows": rows,
    }


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"1/1,2/1"`` -> ``[(1, 1), (2, 1)]`` (forward / adjoint iterations, each >= 1)."""
    settings = []
    for entry in (s.strip() for s in text.split(",") if s.strip()):
        fwd, sep, adj = entry.partition("/")
        if not sep or not fwd.isdigit() or not adj.isdigit() or int(fwd) < 1 or int(adj) < 1:
            raise ValueError(f"settings are FWD/ADJ iteration counts (both >= 1); got {entry!r}")
        settings.append((int(fwd), int(adj)))
    if not settings:
        raise ValueError("no setting given")
    return settings


def measure(
    quick: bool = False, settings: str = SETTINGS, case: Case | None = None, log: TextIO | None = sys.stderr
) -> list[dict[str, Any]]:
    """TorchBraid's points on the cost-error plane, in the format of ``fronts.py``.

    Parameters
    ----------
    quick
        Measure on the tiny :data:`QUICK` network instead of :data:`FULL`.
    settings
        Forward / adjoint iteration counts, comma-separated.
    case
        The network and protocol, instead of :data:`FULL` / :data:`QUICK`.
    log
        Where a line per setting goes (``None``: nowhere).

    Returns
    -------
    list of dict
        One point per setting: ``{"tool": "TorchBraid", "label": "TorchBraid F/A", "cost": ...,
        "error": ..., "quoted": False}`` plus the setting's figures under ``"figures"``.
    """
    case = case or (QUICK if quick else FULL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batches = make_batches(case)
        points = []
        for fwd_iters, adj_iters in parse_settings(settings):
            start = time.perf_counter()
            figures = measure_setting(case, fwd_iters, adj_iters, batches)
            if log is not None:
                print(
                    f"  [TorchBraid] {figures['setting']}: {figures['time']:.3f} s per step, {figures['ratio']:.2f}x serial, "
                    f"gradient error {figures['grad_error']:.1e} ({time.perf_counter() - start:.0f} s)",
                    file=log,
                    flush=True,
                )
            points.append(
                {
                    "tool": "TorchBraid",
                    "label": f"TorchBraid {figures['setting']}",
                    "cost": figures["ratio"],
                    "error": figures["grad_error"],
                    "quoted": False,
                    "figures": figures,
                }
            )
        return points
    finally:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measure TorchBraid's settings and print one line each; returns the points."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iters", default=SETTINGS, help="forward/adjoint iteration counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="tiny network: a smoke run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per setting (default: as layer_parallel.py)")
    parser.add_argument("--levels", type=int, default=None, help="TorchBraid's levels (default 3)")
    parser.add_argument(
        "--no-skip-downcycle",
        dest="skip_downcycle",
        action="store_false",
        help="relax on the first down-cycle too (TorchBraid's own default)",
    )
    parser.add_argument("--json", type=Path, help="write the points and the case to this file")
    args = parser.parse_args(argv)
    case = QUICK if args.quick else FULL
    changes = {"steps": args.steps, "warmup": args.warmup, "levels": args.levels}
    case = replace(case, skip_downcycle=args.skip_downcycle, **{k: v for k, v in changes.items() if v is not None})
    try:
        parse_settings(args.iters)
    except ValueError as error:
        parser.error(str(error))
    points = measure(settings=args.iters, case=case)
    print(f"TorchBraid one-shot step at P = 1: N = {case.depth}, {case.width} channels, batch {case.batch}, {case.levels} levels")
    for p in points:
        f = p["figures"]
        print(
            f"{p['label']:16s} {p['cost']:6.2f}x serial  gradient error {p['error']:.2e} (max {f['grad_error_max']:.1e}; "
            f"residual layers alone {f['grad_error_layers']:.1e})"
        )
    if args.json:
        args.json.write_text(json.dumps({"case": asdict(case), "points": points}, indent=1) + "\n")
    return points


if __name__ == "__main__":
    main()
