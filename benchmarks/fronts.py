"""Cost-accuracy fronts of one-shot training steps: the project's settings against TorchBraid's.

Each of the project's settings is measured with ``benchmarks/layer_parallel.py``
at P = 1 (conv network: 8 channels, 28 x 28, N = 64, batch 50, float32, one
thread; cost relative to the serial autograd step timed beside it, gradient
error against that step's gradient).

TorchBraid's points (same network in TorchBraid's layout, 3 levels, coarsening
4, F/FCF, its warm starts; iterations 1/1, 2/1, 3/3, 5/5) are measured now,
in this process, by ``benchmarks/torchbraid_front.py`` wherever ``import
torchbraid`` works (``benchmarks/README.md`` says how to install it beside the
project), with the same protocol: cost relative to a plain PyTorch step of the
same network timed beside it, gradient error against that step's gradient.
Where TorchBraid is not installed the script says so in one line and uses the
figures measured side by side on this machine for issue 16 instead; those are
quoted, not rerun, and marked so. ``--peer measure`` insists on measuring (and
stops where TorchBraid is missing), ``--peer quoted`` takes the quoted figures
even where it is installed.

The script prints every point, whether it is on the front of all points or
which point dominates it (no more costly and no less accurate, one of them
strictly), and which of the peer's points each of the project's points
dominates; with ``--plot`` it draws both fronts. ``--quick`` measures both
tools on a tiny network (a smoke run of seconds).

Usage::

    python benchmarks/fronts.py [--peer {auto,measure,quoted}] [--plot fronts.png] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layer_parallel  # noqa: E402

#: The project's settings: label -> (hierarchy options of layer_parallel.py, iteration settings).
SETTINGS = {
    "3 levels, m = 4, F/FCF": (["--levels", "3", "--coarsening", "4", "--relax", "F,FCF"], "1/1,2/1,2/2,3/3"),
    "2 levels, m = 8, F, mean": (["--levels", "2", "--coarsening", "8", "--relax", "F", "--coarse-weights", "mean"], "1/1,2/2,3/3"),
    "one coarse pass, 2 levels, m = 16, mean": (
        ["--levels", "2", "--coarsening", "16", "--relax", "F", "--skip-first-down", "--coarse-weights", "mean"],
        "1/1",
    ),
}
#: TorchBraid, measured for issue 16 on this machine (fwd/adj iterations: cost vs serial, gradient error); quoted where it is not installed.
PEER = {"1/1": (1.61, 0.16), "2/1": (2.38, 0.081), "3/3": (6.16, 2.6e-3), "5/5": (11.4, 1.9e-5)}
QUICK = ["--depth", "32", "--width", "2", "--image-size", "6", "--batch", "4", "--batches", "2", "--steps", "1", "--warmup", "1"]


def measure(label: str, options: list[str], iters: str, quick: bool) -> list[dict[str, Any]]:
    """The project's points of one hierarchy: one ``layer_parallel.py`` run at P = 1."""
    with tempfile.TemporaryDirectory(prefix="fronts_") as tmp:
        out = Path(tmp) / "figures.json"
        argv = [*options, "--iters", "1/1" if quick else iters, "--ranks", "1", "--json", str(out), *(QUICK if quick else [])]
        summary = layer_parallel.main(argv)
    settings = summary["runs"][0]["settings"]
    return [
        {"tool": "mgrit_resnet", "label": f"{label}, {s['setting']}", "cost": s["ratio"], "error": s["grad_error"], "quoted": False}
        for s in settings
    ]


def choose_peer(mode: str) -> bool:
    """Whether TorchBraid's points are measured (``True``) or quoted from :data:`PEER`.

    Parameters
    ----------
    mode
        ``"auto"``: measured where ``import torchbraid`` works, else quoted,
        which one line on stdout says; ``"measure"``: measured, or
        ``SystemExit`` where TorchBraid cannot be imported; ``"quoted"``: quoted.
    """
    if mode not in ("auto", "measure", "quoted"):
        raise ValueError(f"mode must be auto, measure or quoted; got {mode!r}")
    if mode == "quoted":
        return False
    try:
        import torchbraid  # noqa: F401
    except ImportError as error:
        if mode == "measure":
            raise SystemExit(
                f"--peer measure: TorchBraid cannot be imported here ({error}); benchmarks/README.md says how to install it"
            ) from error
        print("TorchBraid is not installed here: its points are the figures quoted from issue 16", flush=True)
        return False
    return True


def peer_points(measured: bool, quick: bool) -> tuple[list[dict[str, Any]], str]:
    """TorchBraid's points, and a line saying where they come from.

    Parameters
    ----------
    measured
        Measure them with ``torchbraid_front.py`` (needs TorchBraid), or quote :data:`PEER`.
    quick
        Measure on the tiny network of ``torchbraid_front.QUICK``.

    Returns
    -------
    points, note
        The points in this script's format (``"quoted"`` tells them apart) and
        a line for the report.
    """
    if measured:
        import torchbraid_front

        case = torchbraid_front.QUICK if quick else torchbraid_front.FULL
        note = (
            f"TorchBraid's points were measured now at P = 1 by torchbraid_front.py: its layout, {case.levels} levels, "
            f"m = {case.coarsening}, F/FCF, {'first down-cycle skipped, ' if case.skip_downcycle else ''}warm restarts"
        )
        return torchbraid_front.measure(quick=quick), note
    quoted = [{"tool": "TorchBraid", "label": f"TorchBraid {k}", "cost": c, "error": e, "quoted": True} for k, (c, e) in PEER.items()]
    return quoted, "TorchBraid's points are quoted from issue 16's side-by-side measurement on this machine, not rerun here"


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` costs no more than ``b`` and is no less accurate, and is strictly better in one."""
    return a["cost"] <= b["cost"] and a["error"] <= b["error"] and (a["cost"] < b["cost"] or a["error"] < b["error"])


def classify(points: list[dict[str, Any]]) -> None:
    """Mark each point with the point that dominates it (``None``: on the front) and the peer points it dominates."""
    for p in points:
        over = [q for q in points if dominates(q, p)]
        p["dominated_by"] = min(over, key=lambda q: q["cost"])["label"] if over else None
        p["dominates_peer"] = [q["label"] for q in points if q["tool"] != p["tool"] and dominates(p, q)]


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool, marker, color in (("mgrit_resnet", "o", "C0"), ("TorchBraid", "x", "C1")):
        mine = sorted((p for p in points if p["tool"] == tool), key=lambda p: p["cost"])
        label = f"{tool} (quoted)" if any(p["quoted"] for p in mine) else tool
        ax.scatter([p["cost"] for p in mine], [p["error"] for p in mine], marker=marker, color=color, label=label)
        front = [p for p in mine if not any(dominates(q, p) for q in mine)]
        ax.plot([p["cost"] for p in front], [p["error"] for p in front], color=color, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("one-shot step cost / serial autograd step (P = 1)")
    ax.set_ylabel("relative gradient error")
    ax.set_title("One-shot step: cost against gradient error\nconv 8 ch, 28x28, N = 64, batch 50, float32, one thread")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks (the project: one setting per hierarchy): a smoke run")
    parser.add_argument("--plot", type=Path, help="draw both fronts to this PNG")
    parser.add_argument("--json", type=Path, help="write the points to this file")
    parser.add_argument(
        "--peer",
        choices=("auto", "measure", "quoted"),
        default="auto",
        help="TorchBraid's points: measured where it is installed, else quoted (auto); measured or stop (measure); quoted (quoted)",
    )
    args = parser.parse_args(argv)
    measured = choose_peer(args.peer)  # before the project's runs: '--peer measure' without TorchBraid stops at once
    points = [p for label, (options, iters) in SETTINGS.items() for p in measure(label, options, iters, args.quick)]
    peer, note = peer_points(measured, args.quick)
    points += peer
    classify(points)
    print(note)
    print(f"{'point':52s} {'cost':>7s} {'error':>9s}  front / dominated by; dominates")
    for p in sorted(points, key=lambda p: p["cost"]):
        where = "on the front" if p["dominated_by"] is None else f"dominated by {p['dominated_by']}"
        extra = f"; dominates {', '.join(p['dominates_peer'])}" if p["dominates_peer"] else ""
        label = f"{p['label']} (quoted)" if p["quoted"] else p["label"]
        print(f"{label:52s} {p['cost']:6.2f}x {p['error']:9.2e}  {where}{extra}")
    if args.plot:
        plot(points, args.plot)
    if args.json:
        args.json.write_text(json.dumps(points, indent=1) + "\n")
    return points


if __name__ == "__main__":
    main()
