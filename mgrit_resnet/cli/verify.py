"""The ``verify`` verb: the layer-parallel network against its serial twin.

Both are built from the same ``[network]`` table and seed; one random batch
(seeded by ``data.seed``) goes through each, with a cross-entropy loss on
random labels. Your own network (``network.kind = "module"``) has no input
shape of its own: its batch is the first ``--batch`` training samples of the
``[data]`` set, with their labels. Reported: the largest relative difference of the logits, and
of every parameter gradient and the input gradient (``max |a - b| / max |b|``
per tensor), the ranks, and whether both are within the tolerance.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .._checks import check_float, check_int
from ..comm.provenance import now, provenance
from ..config import callable_name
from ._common import add_config_arguments, check_output, load, write_json

HELP = "compare the layer-parallel network with its serial twin"
DEFAULT_TOL = {"float64": 1e-6, "float32": 1e-3}
EXIT_DIFFERENT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``verify``."""
    add_config_arguments(parser, "TOML config file ([network] and [mgrit] are used; [data] too for network.kind = 'module')")
    parser.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="number of random input samples, or of training samples for network.kind = 'module' (default 8)",
    )
    parser.add_argument(
        "--tol", type=float, default=None, help="largest relative difference that passes (default 1e-6 in float64, 1e-3 in float32)"
    )


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Validate everything and build both networks; return the job that compares them."""
    import torch

    from .. import comm as comm_module
    from ..nn import parallel_from_config, serial_from_config
    from ..nn.spec import DTYPES

    check_output("--json", args.json)
    cfg = load(args)
    batch = check_int("--batch", args.batch, minimum=1)
    n = cfg.network
    tol = DEFAULT_TOL[n.dtype] if args.tol is None else check_float("--tol", args.tol, minimum=0.0)
    seed = cfg.train.seed
    samples = _data_batch(cfg, batch) if n.kind == "module" else None
    parallel = parallel_from_config(n, cfg.mgrit, comm=comm, seed=seed)
    backend = comm_module.backend_for(comm)

    def run() -> int:
        started = now()
        if samples is None:
            shape = (n.in_features,) if n.kind == "dense" else (n.in_channels, n.image_size, n.image_size)
            generator = torch.Generator().manual_seed(cfg.data.seed)
            x = torch.randn((batch, *shape), generator=generator, dtype=torch.float64).to(DTYPES[n.dtype])
            y = torch.randint(0, n.n_classes, (batch,), generator=generator)
        else:
            x, y = samples[0].to(parallel.dtype), samples[1]
        xp = x.clone().to(parallel.device).requires_grad_()
        out_p = parallel(xp)
        torch.nn.functional.cross_entropy(out_p, y.to(out_p.device)).backward()
        grads = parallel.full_grad_dict()
        report = None
        if rank == 0:
            serial = serial_from_config(n, seed=seed)
            xs = x.clone().to(serial.device).requires_grad_()
            out_s = serial(xs)
            torch.nn.functional.cross_entropy(out_s, y.to(out_s.device)).backward()
            diffs = {key: _rel(grads[key], p.grad) for key, p in serial.named_parameters()}
            diffs["input"] = _rel(xp.grad, xs.grad)
            worst = max(diffs, key=diffs.get)
            out_diff = _rel(out_p, out_s)
            report = {
                "max_rel_diff_output": out_diff,
                "max_rel_diff_grad": diffs[worst],
                "worst_grad": worst,
                "ranks": backend.size,
                "tol": tol,
                "forward_iterations": parallel.stats.forward["iterations"],
                "adjoint_iterations": parallel.stats.adjoint["iterations"],
                "passed": out_diff <= tol and diffs[worst] <= tol,
                "provenance": provenance(cfg, backend.size, started),
            }
            _print(cfg, report)
            write_json(args.json, report, rank)
        passed = backend.allgather(None if report is None else report["passed"])[0]
        return 0 if passed else EXIT_DIFFERENT

    return run


def _data_batch(cfg: Any, batch: int) -> tuple[Any, Any]:
    """The first ``batch`` training samples of the ``[data]`` set and their labels (a user network's batch)."""
    from ..training.data import load_dataset

    dataset = load_dataset(cfg.data, cfg.network)
    if batch > dataset.n_train:
        raise ValueError(f"--batch {batch} exceeds the {dataset.n_train} training samples of the [data] set (data.n_train)")
    return dataset.train_x[:batch], dataset.train_y[:batch]


def _rel(a: Any, b: Any) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def _print(cfg: Any, report: dict[str, Any]) -> None:
    m, n = cfg.mgrit, cfg.network
    if n.kind == "module":
        module = n.module if isinstance(n.module, str) else callable_name(n.module)
        network = f"network module {module}, depth {n.depth}, {n.dtype}"
    elif n.depths:
        network = f"network {n.kind} of {len(n.depths)} stages, depths {n.depths}, widths {n.widths}, {n.activation}, {n.dtype}"
    else:
        network = f"network {n.kind}, depth {n.depth}, width {n.width}, {n.activation}, {n.dtype}"
    print(
        f"{network}; "
        f"MGRIT {m.levels} level(s), coarsening {m.coarsening}, relax {m.relax}, tol {m.tol} ({m.tol_kind}); {report['ranks']} rank(s)"
    )
    print(f"MGRIT iterations: forward {report['forward_iterations']}, adjoint {report['adjoint_iterations']}")
    print(f"max relative difference, logits:    {report['max_rel_diff_output']:.3e}")
    print(f"max relative difference, gradients: {report['max_rel_diff_grad']:.3e} ({report['worst_grad']})")
    print(("PASSED" if report["passed"] else "FAILED") + f": tolerance {report['tol']:.1e}")
