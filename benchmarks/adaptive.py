"""Adaptive one-shot iterations against fixed ones and serial training: validation accuracy against total layer steps.

For each case, trains the same network on the same data with the same seed
and epochs: ``serial`` (autograd, one rank); one-shot with fixed forward /
adjoint iterations (1/1, 2/1, 2/2, 3/3); and one-shot with
``train.fwd_iters = train.bwd_iters = "auto"`` at each ``--targets`` gradient
error (:mod:`mgrit_resnet.training.adaptive`). One-shot runs use the case's
``[mgrit]`` hierarchy (3 levels, coarsening 4, F then FCF) with warm starts,
on ``--ranks`` ranks. Reports the final validation accuracy, its difference
to serial in points, the total layer steps (forward and adjoint layer
evaluations on every level and rank, exact checks included; serial: 2N per
step), the mean iterations and, for auto runs, the mean measured gradient
error of the exact checks at the chosen counts.

Target (reported, not asserted; the issue's): an auto run within 0.5 point of
serial with fewer layer steps than the cheapest fixed setting that gets there.

Validation accuracy on a small data set moves by a point or so with the
initial weights and the batch order alone, as much as the half point the
target asks for: ``--seeds K`` trains every setting with ``train.seed = 0,
..., K-1`` and compares the settings by their mean difference to serial at the
same seed (the data are the same for all).

``--set KEY=VALUE`` (repeatable) changes every run, for example the
hierarchy of the one-shot runs (the lagged coarse pass: ``--set mgrit.levels=2
--set mgrit.relax=F --set mgrit.skip_first_down=true --set
network.coarse_weights=mean``); ``--hold-bwd N`` holds the auto runs' adjoint
count at ``N``, so that only the forward count adapts.

Usage::

    python benchmarks/adaptive.py [--cases peaks64,digits] [--targets 0.01,0.1] [--ranks 2] [--epochs E] [--json FILE]
                                  [--set KEY=VALUE ...] [--hold-bwd N] [--seeds K] [--fixed 1/1,2/1,2/2,3/3]
    python benchmarks/adaptive.py --quick      # tiny networks and data, one epoch, in this process (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgrit_resnet.config import load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "peaks64": ("examples/peaks.toml", {"network.depth": 64}),
    "digits": ("examples/digits.toml", {}),
}
QUICK = {
    "peaks64": {"network.depth": 16, "data.n_train": 300, "data.n_val": 100, "train.epochs": 1},
    "digits": {"network.depth": 8, "network.width": 8, "data.n_train": 200, "data.n_val": 100, "train.epochs": 1},
}
FIXED = [(1, 1), (2, 1), (2, 2), (3, 3)]
POINTS = 0.5  # the accuracy an auto run must hold, in points of validation accuracy against serial


def settings(
    targets: Sequence[float], hold_bwd: int | None = None, fixed: Sequence[tuple[int, int]] = FIXED
) -> list[tuple[str, dict[str, Any]]]:
    """``(label, overrides)`` of every run of a case: serial, the fixed counts, auto at each target (``hold_bwd``: adjoint fixed)."""
    runs = [("serial", {"train.strategy": "serial"})]
    runs += [(f"{f}/{b}", {"train.strategy": "one_shot", "train.fwd_iters": f, "train.bwd_iters": b}) for f, b in fixed]
    bwd = "auto" if hold_bwd is None else hold_bwd
    runs += [
        (f"auto {t:g}", {"train.strategy": "one_shot", "train.fwd_iters": "auto", "train.bwd_iters": bwd, "train.grad_error_target": t})
        for t in targets
    ]
    return runs


def _set_text(value: Any) -> str:
    """``value`` as the text of a ``--set`` (a TOML value: ``parse_value`` reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def train(config: str, overrides: dict[str, Any], ranks: int, out: Path) -> tuple[dict, list[dict]]:
    """One training run into ``out`` (in this process at one rank, else under mpiexec): its summary and metrics rows."""
    if ranks == 1:
        import mgrit_resnet as mr
        from mgrit_resnet.training import train as train_run

        cfg = mr.load_config(ROOT / config, overrides)
        result = train_run(cfg, None, out)
        return result.summary, result.metrics
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mgrit_resnet", "-q", "train", config, "--out", str(out), "--force"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={_set_text(value)}"]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def describe(label: str, summary: dict, rows: list[dict]) -> dict[str, Any]:
    """The table row of one run."""
    checks = [c["measured"] for r in rows for c in r.get("grad_checks") or [] if not c.get("probe")]
    steps = sum(r.get("steps") or 0 for r in rows)
    mean = {}
    if steps:  # auto: weighted by the epochs' steps
        mean = {k: sum(r[f"{k}_mean"] * r["steps"] for r in rows) / steps for k in ("fwd_iters", "bwd_iters")}
    return {
        "setting": label,
        "val_accuracy": summary["val_accuracy"],
        "layer_steps": summary["layer_steps"],
        "fwd_iters_mean": mean.get("fwd_iters"),
        "bwd_iters_mean": mean.get("bwd_iters"),
        "grad_error_measured": sum(checks) / len(checks) if checks else None,
        "grad_checks": len(checks),
        "wall_time": summary["wall_time"],
    }


def over_seeds(runs: list[dict]) -> dict[str, Any]:
    """One setting's row from its runs at each seed: means, and every seed's accuracy (``val_accuracies``)."""
    row = dict(runs[0])
    for key in ("val_accuracy", "layer_steps", "fwd_iters_mean", "bwd_iters_mean", "grad_error_measured", "wall_time"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = sum(values) / len(values) if values else None
    row["layer_steps"] = round(row["layer_steps"])
    row["grad_checks"] = sum(r["grad_checks"] for r in runs)
    row["val_accuracies"] = [r["val_accuracy"] for r in runs]
    return row


def verdict(rows: list[dict]) -> dict[str, Any]:
    """The cheapest fixed setting within :data:`POINTS` of serial, and which auto runs hold the accuracy with fewer steps.

    With several seeds a setting's ``points`` is its mean difference to serial at the same seed, and
    ``points_range`` the smallest and largest of them.
    """
    serial = rows[0]
    for r in rows:
        diffs = [
            100 * (a - b)
            for a, b in zip(r.get("val_accuracies", [r["val_accuracy"]]), serial.get("val_accuracies", [serial["val_accuracy"]]))
        ]
        r["points"], r["points_range"] = sum(diffs) / len(diffs), [min(diffs), max(diffs)]
        r["steps_vs_serial"] = r["layer_steps"] / serial["layer_steps"]
    fixed = [r for r in rows if "/" in r["setting"] and r["points"] >= -POINTS]
    cheapest = min(fixed, key=lambda r: r["layer_steps"]) if fixed else None
    for r in rows:
        if r["setting"].startswith("auto"):
            r["holds_accuracy"] = r["points"] >= -POINTS
            r["beats_cheapest_fixed"] = bool(r["holds_accuracy"] and cheapest is not None and r["layer_steps"] < cheapest["layer_steps"])
    return {"cheapest_fixed": None if cheapest is None else cheapest["setting"]}


def table(case: str, rows: list[dict]) -> str:
    lines = [
        f"{case}:",
        f"  {'setting':<10} {'val acc':>8} {'diff [pt]':>9} {'layer steps':>12} {'vs serial':>9} {'iters fwd/adj':>13} "
        f"{'grad error':>10} {'wall [s]':>8}",
    ]
    for r in rows:
        iters = f"{r['fwd_iters_mean']:.2f}/{r['bwd_iters_mean']:.2f}" if r["fwd_iters_mean"] is not None else "-"
        error = f"{r['grad_error_measured']:.2e}" if r["grad_error_measured"] is not None else "-"
        low, high = r["points_range"]
        spread = f"  [{low:+.2f}, {high:+.2f}] over {len(r['val_accuracies'])} seeds" if len(r.get("val_accuracies", [])) > 1 else ""
        lines.append(
            f"  {r['setting']:<10} {r['val_accuracy']:>8.4f} {r['points']:>+9.2f} {r['layer_steps']:>12,} {r['steps_vs_serial']:>8.2f}x "
            f"{iters:>13} {error:>10} {r['wall_time']:>8.1f}{spread}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--targets", default="0.01,0.1", help="gradient-error targets of the auto runs (default 0.01,0.1)")
    parser.add_argument("--ranks", type=int, default=None, help="ranks of the one-shot runs (default 2; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs of every run")
    parser.add_argument("--out", default="runs/adaptive", help="folder for the training runs (relative to the repository)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and data, one epoch: a smoke test")
    parser.add_argument("--json", help="write the tables to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config change for every run (repeatable)")
    parser.add_argument("--hold-bwd", type=int, default=None, metavar="N", help="the auto runs' train.bwd_iters (default: auto)")
    parser.add_argument("--seeds", type=int, default=1, metavar="K", help="train every setting at train.seed = 0..K-1 (default 1)")
    parser.add_argument("--fixed", default=",".join(f"{f}/{b}" for f, b in FIXED), help="the fixed counts, as fwd/bwd,fwd/bwd,...")
    args = parser.parse_args(argv)
    if args.hold_bwd is not None and args.hold_bwd < 1:
        parser.error(f"--hold-bwd: an integer >= 1; got {args.hold_bwd}")
    if args.seeds < 1:
        parser.error(f"--seeds: an integer >= 1; got {args.seeds}")
    try:
        fixed = [tuple(int(n) for n in item.split("/")) for item in args.fixed.split(",") if item.strip()]
        if not all(len(f) == 2 and min(f) >= 1 for f in fixed):
            raise ValueError
    except ValueError:
        parser.error(f"--fixed: comma-separated fwd/bwd counts >= 1, such as 1/1,2/1; got {args.fixed!r}")
    try:
        changes = parse_overrides(args.set)
        for config, overrides in CASES.values():  # a bad change stops here, before any run
            load_config(ROOT / config, {**overrides, **changes})
    except ValueError as error:
        parser.error(f"--set: {error}")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown case {unknown[0]!r}; allowed: {', '.join(CASES)}")
    try:
        targets = [float(t) for t in args.targets.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--targets: comma-separated numbers in (0, 1); got {args.targets!r}")
    ranks = args.ranks or (1 if args.quick else 2)
    report: dict[str, Any] = {"ranks": ranks, "quick": args.quick, "targets": targets, "seeds": args.seeds, "cases": {}}
    for name in names:
        config, overrides = CASES[name]
        overrides = {**overrides, **(QUICK[name] if args.quick else {}), **changes}
        if args.epochs:
            overrides["train.epochs"] = args.epochs
        rows = []
        for label, run in settings(targets, args.hold_bwd, fixed):
            runs = []
            for seed in range(args.seeds):
                tag = f"-seed{seed}" if args.seeds > 1 else ""
                folder = ROOT / args.out / f"{name}-{label.replace('/', '_').replace(' ', '_')}{tag}"
                seeded = {**overrides, **run, **({"train.seed": seed} if args.seeds > 1 else {})}
                summary, metrics = train(config, seeded, 1 if run["train.strategy"] == "serial" else ranks, folder)
                runs.append(describe(label, summary, metrics))
                done = runs[-1]
                print(f"{name} {label}{tag}: val {done['val_accuracy']:.4f}, {done['layer_steps']:,} layer steps", flush=True)
            rows.append(over_seeds(runs))
        report["cases"][name] = {"epochs": summary["epochs"], "rows": rows, **verdict(rows)}
    print()
    for name, case in report["cases"].items():
        print(table(f"{name} ({case['epochs']} epochs; one-shot on {ranks} rank(s))", case["rows"]))
        cheapest = case["cheapest_fixed"]
        print(f"  cheapest fixed setting within {POINTS} point of serial: {cheapest or 'none'}")
        for r in case["rows"]:
            if r["setting"].startswith("auto"):
                outcome = "PASS" if r["beats_cheapest_fixed"] else "holds the accuracy" if r["holds_accuracy"] else "below serial"
                print(f"  {r['setting']}: {outcome}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
