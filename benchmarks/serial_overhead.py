"""Cost of the project's one-level path against plain PyTorch, per training step.

One training step (forward, cross-entropy loss, backward, SGD step) of the same
network two ways, side by side in one process:

* ``mgrit_resnet``: :class:`~mgrit_resnet.nn.LayerParallel` with one level on
  one rank -- MGRIT's sequential path: the forward sweep through the
  propagator, the adjoint sweep with the hand-written vector-Jacobian
  products, the autograd bridge;
* ``plain``: an ``nn.Sequential`` of the same residual blocks (same opening
  layer, weights and classifier) trained by autograd.

Cases: (a) dense, N = 1024, width 8, batch 50; (b) conv, 8 channels, 28 x 28
input, N = 64 and 256, batch 50. One thread. Timed as interleaved repeats
(median). Target (reported, not asserted): ratio <= 1.05.

Usage::

    python benchmarks/serial_overhead.py [--repeat 15] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mgrit_resnet.nn import LayerParallel, NetworkSpec, ODEResNet
from mgrit_resnet.nn.layers import classify, open_state, residual_step

TARGET = 1.05
CASES = {
    "dense N=1024 w=8": dict(kind="dense", in_features=2, width=8, depth=1024),
    "conv N=64 c=8 28x28": dict(kind="conv", in_channels=1, image_size=28, width=8, depth=64),
    "conv N=256 c=8 28x28": dict(kind="conv", in_channels=1, image_size=28, width=8, depth=256),
}
QUICK = {
    "dense N=64 w=8": dict(kind="dense", in_features=2, width=8, depth=64),
    "conv N=8 c=4 12x12": dict(kind="conv", in_channels=1, image_size=12, width=4, depth=8),
}


class _Block(nn.Module):
    def __init__(self, spec: NetworkSpec, layer: nn.Module) -> None:
        super().__init__()
        self.spec, self.weight, self.bias = spec, layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_step(self.spec.ops, self.spec.act, x, self.weight, self.bias, self.spec.h)


class _Plain(nn.Module):
    """The serial network as an ``nn.Sequential`` of residual blocks."""

    def __init__(self, spec: NetworkSpec, seed: int) -> None:
        super().__init__()
        net = ODEResNet(spec, seed=seed)
        self.spec, self.opening, self.classifier = spec, net.opening, net.classifier
        self.blocks = nn.Sequential(*(_Block(spec, layer) for layer in net.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classify(self.spec, self.classifier, self.blocks(open_state(self.spec, self.opening, x)))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(name: str, options: dict[str, Any], repeat: int, batch: int = 50) -> dict[str, Any]:
    spec = NetworkSpec(n_classes=10, **options)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *spec.input_shape()), generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    models = {"mgrit_resnet": LayerParallel(spec, levels=1, seed=0), "plain": _Plain(spec, seed=0)}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for k in models:  # warm-up
        _step(models[k], optimizers[k], x, y)
    for _ in range(repeat):
        for k in models:
            times[k].append(_step(models[k], optimizers[k], x, y))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"case": name, **{f"{k}_s": v for k, v in medians.items()}, "ratio": medians["mgrit_resnet"] / medians["plain"]}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed steps per model (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny cases, for a smoke test")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(name, options, args.repeat) for name, options in (QUICK if args.quick else CASES).items()]
    print(f"one training step, batch 50, 1 thread, median of {args.repeat}; target ratio <= {TARGET}")
    print(f"{'case':<24} {'mgrit_resnet [ms]':>18} {'plain [ms]':>11} {'ratio':>7}")
    for r in rows:
        verdict = "PASS" if r["ratio"] <= TARGET else "over target"
        print(f"{r['case']:<24} {1e3 * r['mgrit_resnet_s']:>18.2f} {1e3 * r['plain_s']:>11.2f} {r['ratio']:>7.3f}  {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
