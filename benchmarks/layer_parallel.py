"""Layer-parallel training step: cost against serial autograd, gradient error, 2-rank speedup.

Trains the convolutional network (8 channels, 28 x 28 single-channel input,
N = 64 residual layers, batch 50, float32, one thread per rank) for a few SGD
steps with :class:`~mgrit_resnet.nn.LayerParallel` -- 3 levels, coarsening 4,
F-relaxation on the fine level and FCF on the middle one -- in one-shot mode
(a fixed number of forward / adjoint MGRIT iterations per call, warm-started
from the last call on the same batch) and, for reference, iterated to a
tolerance ('exact'). Side by side in the same process, before every timed
parallel step, the serial twin :class:`~mgrit_resnet.nn.ODEResNet` loaded with
the same parameters makes the same step with plain autograd on the same batch;
that step is the time base, and its gradients are the reference for the
gradient error (relative 2-norm over all parameter gradients, in float64).

Targets (reported, not asserted; the script exits 0 either way): some one-shot
setting costs at most 1.6x a serial step at P = 1 with at most 1 % gradient
error, and P = 2 is at least 1.9x faster than P = 1.

The launcher also times the serial step in a plain process of its own (the
serial twin, its SGD and the batches, nothing else built; ``--no-serial-alone``
skips it) and prints it beside the serial step timed in the P = 1 run: a
reference slowed by the parallel machinery around it would flatter every ratio.

Usage::

    python benchmarks/layer_parallel.py [--depth 256] [--iters 1/1,2/1,3/3,5/5,exact] [--json out.json]
    mpiexec -n P python benchmarks/layer_parallel.py [options]     # one rank count only

Started without ``mpiexec`` (or with ``--launch``), the script runs itself
under ``mpiexec -n 1`` and ``mpiexec -n 2`` (``--ranks``; the ``mpiexec`` next
to the Python interpreter, ``OMP_NUM_THREADS=1``) with ``--worker``, collects
their figures and prints one table with the speedup of 2 ranks over 1. The
solver options (``--levels``, ``--coarsening``, ``--relax``, ``--cycle``,
``--initial-guess``, ``--no-warm-start``, ...) go to the constructor unchanged.

Protocol, per setting: a fresh network (same seed), ``--batches`` fixed
batches cycled (the warm-start keys), untimed warm-up steps (two passes over
the batches for settings with a single forward or adjoint iteration, one pass
otherwise; 'exact' runs cold), then ``--steps`` timed steps. A step is
``zero_grad``, forward, cross-entropy, backward, ``SGD.step``; its time is the
slowest rank's. Figures are medians over the timed steps; the cost relative to
serial is the median of the per-step ratios, each against the serial step
timed just before it (this cancels slow drifts of the machine's speed). While
rank 0 times the serial step the other ranks wait asleep, not in MPICH's
spinning barrier. At P > 1 a short machine check reports how much compute the
machine gives P ranks at once: on a shared VM, other jobs can cap the speedup.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mgrit_resnet.comm import world
from mgrit_resnet.nn import LayerParallel, NetworkSpec, ODEResNet

COST_TARGET = 1.6  # one-shot step at P = 1, relative to a serial autograd step ...
ERROR_TARGET = 0.01  # ... with at most this relative gradient error
SPEEDUP_TARGET = 1.9  # P = 2 over P = 1, same setting
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")


# ---------------------------------------------------------------------- options
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    net = parser.add_argument_group("network and data")
    net.add_argument("--depth", type=int, default=64, help="residual layers N (the issue also asks for 256)")
    net.add_argument("--width", type=int, default=8, help="channels")
    net.add_argument("--image-size", type=int, default=28, help="input side length (one input channel)")
    net.add_argument("--classes", type=int, default=10, help="classes of the synthetic data")
    net.add_argument("--activation", default="tanh", help="tanh, relu or smooth_relu")
    net.add_argument("--batch", type=int, default=50, help="batch size")
    net.add_argument("--batches", type=int, default=4, help="fixed batches, cycled (warm-start keys)")
    net.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    net.add_argument("--seed", type=int, default=0, help="network and data seed")
    run = parser.add_argument_group("protocol")
    run.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per one-shot setting (default: two passes over the batches for settings with a single "
        "forward or adjoint iteration, whose warm starts settle only then, one pass otherwise)",
    )
    run.add_argument("--steps", type=int, default=4, help="timed steps per setting (each also makes the serial step)")
    run.add_argument("--exact-warmup", type=int, default=0, help="untimed steps of the 'exact' setting (its cost hardly depends on them)")
    run.add_argument("--exact-steps", type=int, default=2, help="timed steps of the 'exact' setting")
    run.add_argument("--iters", default="1/1,2/1,3/3,5/5,exact", help="settings: FWD/ADJ fixed iterations, or 'exact' (to --tol)")
    run.add_argument("--ranks", default="1,2", help="rank counts the launcher runs")
    run.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON")
    run.add_argument("--launch", action="store_true", help="run the rank counts of --ranks under mpiexec and print one table")
    run.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="launch the rank counts this many times, alternating, and judge the speedup by the median round "
        "(a 2-core machine's capacity drifts between runs)",
    )
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--serial-alone", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--no-serial-alone", dest="check_serial", action="store_false", help="skip the serial step in a plain process")
    solver = parser.add_argument_group("MGRIT")
    solver.add_argument("--levels", type=int, default=3, help="maximum number of MGRIT levels")
    solver.add_argument("--coarsening", default="4", help="factor, or comma-separated factors per level")
    solver.add_argument("--relax", default="F,FCF", help="relaxation, or comma-separated per level")
    solver.add_argument("--cycle", default="V", choices=("V", "F"), help="multigrid cycle")
    solver.add_argument("--c-weight", type=float, default=1.0, help="weight of C-relaxation")
    solver.add_argument(
        "--initial-guess",
        default="zero",
        choices=("zero", "initial_value", "sequential_coarse"),
        help="start of a cold solve (every solve with --no-warm-start, else the first call per batch)",
    )
    solver.add_argument("--skip-first-down", action="store_true", help="first iteration: coarsest solve interpolated up")
    solver.add_argument(
        "--coarse-weights", choices=["first", "mean"], default="first", help="coarse steps: the interval's first layer or its mean"
    )
    solver.add_argument("--no-warm-start", dest="warm_start", action="store_false", help="start every solve cold")
    solver.add_argument(
        "--no-relax-warm-start",
        dest="relax_warm_start",
        action="store_false",
        help="take warm starts as they are (no initial F-relaxation)",
    )
    solver.add_argument("--tol", type=float, default=1e-9, help="absolute residual tolerance of the 'exact' setting")
    solver.add_argument("--max-iter", type=int, default=50, help="iteration cap of the 'exact' setting")
    args = parser.parse_args(argv)
    for name in ("depth", "width", "image_size", "batch", "batches", "steps", "levels", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.warmup is not None and args.warmup < 0) or args.exact_warmup < 0 or args.exact_steps < 1:
        parser.error("--warmup and --exact-warmup must be >= 0, --exact-steps >= 1")
    try:
        args.settings = [_parse_setting(s) for s in args.iters.split(",") if s.strip()]
        args.rank_counts = [int(p) for p in args.ranks.split(",") if p.strip()]
    except ValueError as error:
        parser.error(str(error))
    if not args.settings or not args.rank_counts or min(args.rank_counts) < 1:
        parser.error("--iters and --ranks need at least one entry each (ranks >= 1)")
    return args


def _parse_setting(text: str) -> tuple[str, int | None, int | None]:
    text = text.strip()
    if text == "exact":
        return text, None, None
    fwd, sep, adj = text.partition("/")
    if not sep or int(fwd) < 1 or int(adj) < 1:
        raise ValueError(f"--iters entries are FWD/ADJ (both >= 1) or 'exact'; got {text!r}")
    return text, int(fwd), int(adj)


def _listed(text: str, cast: Any = str) -> Any:
    parts = [cast(p.strip()) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        levels=args.levels, coarsening=_listed(args.coarsening, int), relax=_listed(args.relax), cycle=args.cycle,
        c_weight=args.c_weight, initial_guess=args.initial_guess, skip_first_down=args.skip_first_down,
        warm_start=args.warm_start, relax_warm_start=args.relax_warm_start, tol=args.tol, max_iter=args.max_iter,
        coarse_weights=args.coarse_weights,
    )  # fmt: skip


def worker_argv(args: argparse.Namespace, json_path: Path) -> list[str]:
    """The command-line options a worker needs to repeat this run's settings."""
    argv = ["--worker", "--json", str(json_path)]
    names = (
        "depth", "width", "image_size", "classes", "activation", "batch", "batches", "lr", "seed", "steps",
        "exact_warmup", "exact_steps", "iters", "levels", "coarsening", "relax", "cycle", "c_weight", "initial_guess", "tol", "max_iter",
        "coarse_weights",
    )  # fmt: skip
    for name in names:
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.warmup is not None:
        argv += ["--warmup", str(args.warmup)]
    if args.skip_first_down:
        argv.append("--skip-first-down")
    if not args.relax_warm_start:
        argv.append("--no-relax-warm-start")
    if not args.warm_start:
        argv.append("--no-warm-start")
    return argv


# ---------------------------------------------------------------------- data
def network_spec(args: argparse.Namespace) -> NetworkSpec:
    """The conv network of the command line (one input channel)."""
    return NetworkSpec(kind="conv", in_channels=1, image_size=args.image_size, width=args.width, depth=args.depth,
                       n_classes=args.classes, activation=args.activation)  # fmt: skip


def make_batches(args: argparse.Namespace, spec: NetworkSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic MNIST-sized data: per class a smooth random prototype image, plus noise (the same on every rank)."""
    generator = torch.Generator().manual_seed(1000 + args.seed)
    side = spec.image_size
    coarse = torch.randn(args.classes, 1, 7, 7, generator=generator)
    prototypes = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    batches = []
    for _ in range(args.batches):
        labels = torch.randint(0, args.classes, (args.batch,), generator=generator)
        images = prototypes[labels] + 0.5 * torch.randn(args.batch, 1, side, side, generator=generator)
        batches.append((images.to(spec.torch_dtype), labels))
    return batches


# ---------------------------------------------------------------------- worker
class _World:
    def __init__(self) -> None:
        self.comm = world()
        self.rank = self.comm.Get_rank() if self.comm is not None else 0
        self.size = self.comm.Get_size() if self.comm is not None else 1

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def sleeping_barrier(self) -> None:
        """A barrier that waits asleep: MPICH's spins, and on a machine whose cores share
        one physical core (as the 2-core test VM behaves) a spinning rank halves the speed of a working one."""
        if self.comm is not None:
            request = self.comm.Ibarrier()
            while not request.Test():
                time.sleep(0.001)

    def gather(self, value: Any) -> list:
        return self.comm.allgather(value) if self.comm is not None else [value]


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, key: Any = None):
    """One SGD step; returns (loss, forward seconds, backward seconds, optimizer seconds)."""
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    logits = model(x) if key is None else model(x, key=key)
    loss = F.cross_entropy(logits, y)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    return float(loss.detach()), t1 - t0, t2 - t1, t3 - t2


def _grad_error(grads: dict[str, torch.Tensor | None], reference: torch.nn.Module) -> float:
    diff = norm = 0.0
    for name, param in reference.named_parameters():
        exact = param.grad.double()
        got = grads[name]
        got = torch.zeros_like(exact) if got is None else got.double()
        diff += float((got - exact).pow(2).sum())
        norm += float(exact.pow(2).sum())
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def warmup_steps(args: argparse.Namespace, fwd_iters: int | None, bwd_iters: int | None) -> int:
    """Untimed steps before the timed ones.

    With one iteration the warm starts need two passes over the batches to
    settle (1/1 at N = 64: gradient error 0.6-1.1 % after one pass, 0.35-0.4 %
    after two and later); with more iterations one pass gives the same error as
    two. 'exact' runs cold by default: its cost hardly depends on the start.
    """
    if fwd_iters is None:
        return args.exact_warmup
    if args.warmup is not None:
        return args.warmup
    return (2 if min(fwd_iters, bwd_iters) == 1 else 1) * args.batches


def measure_setting(args, spec, batches, w: _World, label: str, fwd_iters: int | None, bwd_iters: int | None) -> dict:
    """Warm up and time one solver setting; the serial reference runs on rank 0 before every timed step."""
    options = solver_options(args)
    par = LayerParallel(spec, comm=w.comm, seed=args.seed, fwd_iters=fwd_iters, bwd_iters=bwd_iters, **options)
    optimizer = torch.optim.SGD(par.parameters(), lr=args.lr)
    serial = ODEResNet(spec, seed=args.seed) if w.rank == 0 else None
    serial_optimizer = torch.optim.SGD(serial.parameters(), lr=args.lr) if serial is not None else None
    backend = par.backend
    warmup, steps = warmup_steps(args, fwd_iters, bwd_iters), args.steps if fwd_iters is not None else args.exact_steps
    rows: list[dict] = []
    for step in range(warmup + steps):
        index = step % len(batches)
        x, y = batches[index]
        timed = step >= warmup
        record: dict[str, Any] = {"batch": index}
        if timed:
            state = par.full_state_dict()
            if serial is not None:
                serial.load_state_dict(state)
                gc.collect()
                loss, fwd, bwd, opt = _train_step(serial, serial_optimizer, x, y)
                record["serial"] = {"time": fwd + bwd + opt, "forward": fwd, "backward": bwd, "optimizer": opt, "loss": loss}
            w.sleeping_barrier()  # the other ranks sleep while rank 0 times the serial step
        gc.collect()
        w.barrier()
        sent_before = backend.bytes_sent
        loss, fwd, bwd, opt = _train_step(par, optimizer, x, y, key=index)
        mine = {"time": fwd + bwd + opt, "forward": fwd, "backward": bwd, "optimizer": opt,
                "bytes": backend.bytes_sent - sent_before}  # fmt: skip
        if not timed:
            continue
        per_rank = w.gather(mine)
        stats = par.stats
        grads = par.full_grad_dict()
        record.update(
            time=max(r["time"] for r in per_rank),
            forward=max(r["forward"] for r in per_rank),
            backward=max(r["backward"] for r in per_rank),
            optimizer=max(r["optimizer"] for r in per_rank),
            bytes_per_rank=[r["bytes"] for r in per_rank],
            loss=loss,
            forward_solve=stats.forward["wall_time"],
            adjoint_solve=stats.adjoint["wall_time"],
            forward_iterations=stats.forward["iterations"],
            adjoint_iterations=stats.adjoint["iterations"],
            forward_steps_per_rank=stats.forward["steps_per_rank"],
            adjoint_steps_per_rank=stats.adjoint["steps_per_rank"],
            forward_residual=stats.forward["residuals"][-1] if stats.forward["residuals"] else math.nan,
            adjoint_residual=stats.adjoint["residuals"][-1] if stats.adjoint["residuals"] else math.nan,
        )
        record["rest"] = record["time"] - record["forward_solve"] - record["adjoint_solve"]
        if serial is not None:
            record["grad_error"] = _grad_error(grads, serial)
            record["ratio"] = record["time"] / record["serial"]["time"]
        rows.append(record)
    del par, optimizer, serial, serial_optimizer
    gc.collect()
    return _summarise(label, fwd_iters, bwd_iters, rows, w)


def _summarise(label: str, fwd_iters: int | None, bwd_iters: int | None, rows: list[dict], w: _World) -> dict:
    rows = w.gather(rows)[0]  # rank 0 holds the serial figures and the errors
    last = rows[-1]

    def med(key: str, source: str | None = None) -> float:
        return _median([(r[source] if source else r)[key] for r in rows])

    return {
        "setting": label,
        "fwd_iters": fwd_iters,
        "bwd_iters": bwd_iters,
        "time": med("time"),
        "forward": med("forward"),
        "backward": med("backward"),
        "optimizer": med("optimizer"),
        "forward_solve": med("forward_solve"),
        "adjoint_solve": med("adjoint_solve"),
        "forward_ms_per_step": 1e3 * med("forward_solve") / max(last["forward_steps_per_rank"]),
        "adjoint_ms_per_step": 1e3 * med("adjoint_solve") / max(last["adjoint_steps_per_rank"]),
        "rest": med("rest"),
        "serial_time": med("time", "serial"),
        "serial_forward": med("forward", "serial"),
        "serial_backward": med("backward", "serial"),
        "ratio": med("ratio"),
        "grad_error": med("grad_error"),
        "grad_error_max": max(r["grad_error"] for r in rows),
        "forward_iterations": med("forward_iterations"),
        "adjoint_iterations": med("adjoint_iterations"),
        "forward_steps_per_rank": last["forward_steps_per_rank"],
        "adjoint_steps_per_rank": last["adjoint_steps_per_rank"],
        "bytes_per_rank": last["bytes_per_rank"],
        "forward_residual": med("forward_residual"),
        "adjoint_residual": med("adjoint_residual"),
        "steps": rows,
    }


def machine_check(spec: NetworkSpec, batch: int, w: _World, n_steps: int = 150) -> dict[str, float]:
    """How much faster the machine runs P ranks' layer steps than one rank's: the ceiling of any P-rank speedup.

    Rank 0 first makes ``n_steps`` forward layer steps alone (the others
    asleep), then every rank makes them at once; the capacity is
    ``P * alone / (slowest rank at once)``: P on a machine with P free cores.
    """
    generator = torch.Generator().manual_seed(11)
    shape = (batch, spec.width, spec.image_size, spec.image_size)
    x = torch.rand(shape, generator=generator, dtype=spec.torch_dtype)
    weight = torch.rand((spec.width, spec.width, 3, 3), generator=generator, dtype=spec.torch_dtype) * 0.2 - 0.1
    bias = torch.zeros(spec.width, dtype=spec.torch_dtype)

    def work() -> float:
        start = time.perf_counter()
        for _ in range(n_steps):
            spec.ops.pre(x, weight, bias)
        return time.perf_counter() - start

    work()
    w.sleeping_barrier()
    alone = work() if w.rank == 0 else 0.0
    w.sleeping_barrier()
    together = max(w.gather(work()))
    alone = w.gather(alone)[0]
    return {"alone": alone, "together": together, "capacity": w.size * alone / together}


def worker(args: argparse.Namespace) -> dict:
    """Measure every setting at this rank count; returns the figures (on every rank)."""
    torch.set_num_threads(1)
    w = _World()
    spec = network_spec(args)
    batches = make_batches(args, spec)
    machine = machine_check(spec, args.batch, w)
    results = []
    for label, fwd_iters, bwd_iters in args.settings:
        start = time.perf_counter()
        result = measure_setting(args, spec, batches, w, label, fwd_iters, bwd_iters)
        results.append(result)
        if w.rank == 0:
            took = time.perf_counter() - start
            print(
                f"  [P={w.size}] {label}: {result['time']:.3f} s per step, {result['ratio']:.2f}x serial, "
                f"gradient error {result['grad_error']:.1e} ({took:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return {
        "ranks": w.size,
        "network": {
            "kind": "conv",
            "width": args.width,
            "depth": args.depth,
            "image_size": args.image_size,
            "in_channels": 1,
            "classes": args.classes,
            "activation": args.activation,
            "dtype": spec.dtype,
        },
        "batch": args.batch,
        "batches": args.batches,
        "lr": args.lr,
        "warmup": {label: warmup_steps(args, f, b) for label, f, b in args.settings if f is not None},
        "timed_steps": args.steps,
        "exact_warmup": args.exact_warmup,
        "exact_steps": args.exact_steps,
        "solver": solver_options(args),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "settings": results,
    }


def serial_alone(args: argparse.Namespace) -> dict:
    """The serial step timed in this process with nothing else built: the check on the reference of the workers."""
    torch.set_num_threads(1)
    spec = network_spec(args)
    batches = make_batches(args, spec)
    serial = ODEResNet(spec, seed=args.seed)
    optimizer = torch.optim.SGD(serial.parameters(), lr=args.lr)
    times = []
    for step in range(len(batches) + 2 * args.steps):  # one untimed pass over the batches
        x, y = batches[step % len(batches)]
        gc.collect()
        _, fwd, bwd, opt = _train_step(serial, optimizer, x, y)
        if step >= len(batches):
            times.append(fwd + bwd + opt)
    return {"time": _median(times), "steps": len(times)}


# ---------------------------------------------------------------------- launcher
def _under_mpiexec() -> bool:
    return any(name in os.environ for name in _MPI_ENV)


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def launch(args: argparse.Namespace) -> dict:
    """Run one worker per rank count under mpiexec, ``--rounds`` times, and merge their figures.

    With several rounds the table is the round of median best speedup, and
    ``rounds`` lists every round's speedups.
    """
    summaries = [_launch_round(args, index) for index in range(args.rounds)]
    if len(summaries) == 1:
        return summaries[0]
    ranked = sorted(summaries, key=lambda s: s.get("best_speedup", 0.0))
    summary = ranked[(len(ranked) - 1) // 2]
    summary["rounds"] = [
        {s["setting"]: {"speedup": s["speedup"], "speedup_normalised": s["speedup_normalised"]} for s in r["runs"][-1]["settings"]}
        for r in summaries
        if len(r["runs"]) > 1
    ]
    return summary


def _launch_round(args: argparse.Namespace, index: int) -> dict:
    mpiexec = _mpiexec()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in _MPI_ENV:
        env.pop(name, None)
    runs = []
    label = f" (round {index + 1} of {args.rounds})" if args.rounds > 1 else ""
    with tempfile.TemporaryDirectory(prefix="layer_parallel_") as tmp:
        for ranks in args.rank_counts:
            out = Path(tmp) / f"p{ranks}.json"
            if mpiexec is None:
                if ranks != 1:
                    print(f"no mpiexec found: skipping P = {ranks}", file=sys.stderr)
                    continue
                runs.append(worker(args))
                continue
            command = [mpiexec, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), *worker_argv(args, out)]
            print(f"running: mpiexec -n {ranks} ... --worker{label}", file=sys.stderr, flush=True)
            proc = subprocess.run(command, env=env)
            if proc.returncode != 0 or not out.exists():
                raise SystemExit(f"the P = {ranks} worker failed (exit status {proc.returncode})")
            runs.append(json.loads(out.read_text()))
        alone = None
        if args.check_serial and 1 in args.rank_counts:
            out = Path(tmp) / "alone.json"
            print("running: the serial step alone", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *worker_argv(args, out), "--serial-alone"], env=env)
            alone = json.loads(out.read_text()) if proc.returncode == 0 and out.exists() else None
    summary = combine(runs)
    if alone is not None:
        summary["serial_alone"] = alone
    return summary


def combine(runs: list[dict]) -> dict:
    """The workers' figures with the speedups over the smallest rank count."""
    runs = sorted(runs, key=lambda r: r["ranks"])
    base = runs[0]
    for run in runs[1:]:
        for setting, reference in zip(run["settings"], base["settings"]):
            setting["speedup"] = reference["time"] / setting["time"]
            setting["speedup_normalised"] = reference["ratio"] / setting["ratio"]
    summary = {
        "runs": runs,
        "targets": {"cost": COST_TARGET, "grad_error": ERROR_TARGET, "speedup": SPEEDUP_TARGET},
    }
    one = next((r for r in runs if r["ranks"] == 1), None)
    if one is not None:
        good = [s for s in one["settings"] if s["fwd_iters"] is not None and s["ratio"] <= COST_TARGET and s["grad_error"] <= ERROR_TARGET]
        summary["cost_target_met_by"] = [s["setting"] for s in good]
    two = next((r for r in runs if r["ranks"] == 2), None)
    if one is not None and two is not None:
        summary["best_speedup"] = max(s["speedup"] for s in two["settings"])
    return summary


# ---------------------------------------------------------------------- report
def _steps(counts: list[int]) -> str:
    return "/".join(str(c) for c in counts)


def _megabytes(counts: list[int]) -> str:
    return "/".join(f"{c / 2**20:.1f}" for c in counts)


def report(summary: dict) -> None:
    runs = summary["runs"]
    first = runs[0]
    net, solver = first["network"], first["solver"]
    print(
        f"Layer-parallel training step: conv network, {net['width']} channels, {net['image_size']}x{net['image_size']} input, "
        f"N = {net['depth']}, batch {first['batch']}, {net['activation']}, {net['dtype']}, 1 thread per rank"
    )
    print(
        f"MGRIT: {solver['levels']} levels, coarsening {solver['coarsening']}, relax {solver['relax']}, {solver['cycle']}-cycle, "
        f"c_weight {solver['c_weight']:g}, initial guess {solver['initial_guess']}"
        f"{', skip first down' if solver['skip_first_down'] else ''}, warm start {'on' if solver['warm_start'] else 'off'}"
    )
    protocol = f"SGD lr {first['lr']:g}, {first['batches']} batches cycled"
    if first["warmup"]:
        warmups = ", ".join(f"{k} {v}" for k, v in first["warmup"].items())
        protocol += f"; one-shot settings: warm-up steps {warmups}, median of {first['timed_steps']} timed steps"
    if any(s["fwd_iters"] is None for s in first["settings"]):
        protocol += (
            f"; 'exact' (iterated to an absolute residual of {solver['tol']:g}): "
            f"{first['exact_warmup']} warm-up, median of {first['exact_steps']} timed"
        )
    print(protocol)
    header = (
        f"{'setting':>7} {'P':>2} {'step [s]':>8} {'x serial':>8} {'grad err':>8} {'(max)':>7} {'speedup':>7} {'iters':>6} "
        f"{'fwd steps/rank':>14} {'adj steps/rank':>14} {'ms/step':>9} {'MiB sent/rank':>13} {'fwd [s]':>7} {'adj [s]':>7} {'rest':>5}"
    )
    print(header)
    print("-" * len(header))
    by_setting: dict[str, list[tuple[int, dict]]] = {}
    for run in runs:
        for s in run["settings"]:
            by_setting.setdefault(s["setting"], []).append((run["ranks"], s))
    for label, rows in by_setting.items():
        for ranks, s in rows:
            speedup = f"{s['speedup']:.2f}" if "speedup" in s else ""
            iters = f"{s['forward_iterations']:g}/{s['adjoint_iterations']:g}"
            per_step = f"{s['forward_ms_per_step']:.1f}/{s['adjoint_ms_per_step']:.1f}"
            print(
                f"{label:>7} {ranks:>2} {s['time']:>8.3f} {s['ratio']:>8.2f} {s['grad_error']:>8.1e} {s['grad_error_max']:>7.0e} "
                f"{speedup:>7} {iters:>6} {_steps(s['forward_steps_per_rank']):>14} {_steps(s['adjoint_steps_per_rank']):>14} "
                f"{per_step:>9} {_megabytes(s['bytes_per_rank']):>13} {s['forward_solve']:>7.3f} {s['adjoint_solve']:>7.3f} "
                f"{s['rest']:>5.3f}"
            )
    for run in runs:
        serial = [s["serial_time"] for s in run["settings"]]
        fwd = _median([s["serial_forward"] for s in run["settings"]])
        bwd = _median([s["serial_backward"] for s in run["settings"]])
        print(
            f"serial autograd step (timed in the P = {run['ranks']} run): median {_median(serial):.3f} s, forward {fwd:.3f} s, "
            f"backward {bwd:.3f} s ({1e3 * fwd / net['depth']:.1f} + {1e3 * bwd / net['depth']:.1f} ms per layer); "
            f"per-setting medians {min(serial):.3f}-{max(serial):.3f} s"
        )
    print(
        "x serial: median over the timed steps of (parallel step / serial step timed just before it); speedup: median step time "
        "at P = 1 over P = 2; iters: forward/adjoint MGRIT iterations per call; steps/rank: layer steps per call on each rank "
        f"(the serial forward makes {net['depth']}); ms/step: solve time per step of the busiest rank, forward/adjoint; "
        "MiB sent: whole training step; fwd/adj [s]: forward and adjoint MGRIT solves; rest: the remainder of the step "
        "(opening, classifier, loss, broadcasts, SGD, and the parameter gradients unless the adjoint took them in its last sweep)"
    )
    for run in runs[1:]:
        m = run["machine"]
        print(
            f"machine check (P = {run['ranks']} run): {run['ranks']} ranks making the same convolutions at once "
            f"take {m['together']:.3f} s, "
            f"one rank alone {m['alone']:.3f} s: the machine gives {m['capacity']:.2f} ranks' worth of compute now, "
            f"the ceiling of any {run['ranks']}-rank speedup"
        )
    one = next((r for r in runs if r["ranks"] == 1), None)
    if "serial_alone" in summary and one is not None:
        alone, beside = summary["serial_alone"]["time"], _median([s["serial_time"] for s in one["settings"]])
        verdict = "no slower" if beside <= 1.05 * alone else "slower: the ratios above flatter the parallel step"
        print(
            f"serial check: the serial step in a plain process of its own takes {alone:.3f} s (median of "
            f"{summary['serial_alone']['steps']}); timed in the P = 1 run, {beside:.3f} s ({beside / alone:.2f}x: {verdict})"
        )
    if "cost_target_met_by" in summary:
        met = summary["cost_target_met_by"]
        print(
            f"target: a one-shot setting <= {COST_TARGET}x serial at P = 1 with <= {ERROR_TARGET:.0%} gradient error: "
            + (f"met by {', '.join(met)}" if met else "not met")
        )
    if summary.get("rounds"):
        for setting in summary["rounds"][0]:
            speedups = sorted(r[setting]["speedup"] for r in summary["rounds"])
            normalised = sorted(r[setting]["speedup_normalised"] for r in summary["rounds"])
            print(
                f"2-rank speedup of {setting} over {len(speedups)} rounds (P = 1 and 2 launched in turn): median "
                f"{statistics.median(speedups):.2f}x (range {speedups[0]:.2f}-{speedups[-1]:.2f}); with each run's own serial "
                f"step as the time unit {statistics.median(normalised):.2f}x ({normalised[0]:.2f}-{normalised[-1]:.2f}); "
                "the table above is the median round"
            )
    if "best_speedup" in summary:
        best = summary["best_speedup"]
        judged = " (the median round)" if summary.get("rounds") else ""
        print(f"target: 2-rank speedup >= {SPEEDUP_TARGET}x: best {best:.2f}x{judged}, {'met' if best >= SPEEDUP_TARGET else 'not met'}")
    if len(runs) > 1:
        normalised = [f"{s['setting']} {s['speedup_normalised']:.2f}" for run in runs[1:] for s in run["settings"]]
        print(
            f"speedup with each run's own serial step as the time unit (cancels drift of the machine between runs): {', '.join(normalised)}"
        )
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the figures."""
    args = parse_args(argv)
    if args.serial_alone:
        figures = serial_alone(args)
        if args.json is not None:
            args.json.write_text(json.dumps(figures) + "\n")
        return figures
    if args.worker or (_under_mpiexec() and not args.launch):
        figures = worker(args)
        summary = combine([figures])
        rank = _World().rank
        if rank == 0:
            if args.json is not None:
                args.json.write_text(json.dumps(figures if args.worker else summary, indent=2) + "\n")
            if not args.worker:
                report(summary)
        return summary
    summary = launch(args)
    report(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
