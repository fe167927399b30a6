"""Cost of the general (user block) path against the built-in fast path and against plain PyTorch, per training step.

Side by side in one process, one thread, interleaved repeats (median):

(a) one-shot layer-parallel training step at one rank (3 levels, coarsening 4,
    F on the fine level and FCF below, warm-started, fwd/bwd iterations 1/1 and
    2/1) of the built-in conv network (8 channels, 28 x 28, N = 64, batch 50,
    float32, hand-written adjoint) against the same network written as a user
    block (``Conv2d 3x3 + tanh`` with the same weights; autograd adjoint).
    Target: ratio of median step times <= 1.15.
(b) the one-level path of that user block (``LayerParallel(levels=1)`` at one
    rank, training step) against a plain ``nn.Sequential`` of the same residual
    blocks trained by autograd. Target: ratio <= 1.05.

Targets are reported, not asserted. ``--quick`` (N = 8, 4 channels, 12 x 12,
batch 5, 3 repeats) runs in a few seconds.

Usage::

    python benchmarks/user_blocks.py [--repeat 9] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mgrit_resnet.nn import LayerParallel, NetworkSpec, ODEResNet

TARGETS = {"one_shot": 1.15, "one_level": 1.05}
FULL = dict(width=8, image_size=28, depth=64, batch=50)
QUICK = dict(width=4, image_size=12, depth=8, batch=5)


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _Residual(nn.Module):
    def __init__(self, branch: nn.Module, h: float) -> None:
        super().__init__()
        self.branch, self.h = branch, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.branch(x), alpha=self.h)


def user_parts(builtin: ODEResNet) -> tuple[Callable[[int], nn.Module], nn.Module, nn.Module]:
    """The built-in conv network as a user block, opening and closing with the same weights."""
    width = builtin.spec.width

    def make_block(n: int) -> nn.Module:
        conv = nn.Conv2d(width, width, 3, padding=1)
        conv.load_state_dict(builtin.layers[n].state_dict())
        return nn.Sequential(conv, nn.Tanh())

    opening = nn.Sequential(nn.Conv2d(builtin.spec.in_channels, width, 3, padding=1), nn.Tanh())
    opening[0].load_state_dict(builtin.opening.state_dict())
    closing = nn.Sequential(_Mean(), nn.Linear(width, builtin.spec.n_classes))
    closing[1].load_state_dict(builtin.classifier.state_dict())
    return make_block, opening, closing


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keyed: bool) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        out = model(x, key=0) if keyed else model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        optimizer.step()

    return step


def interleaved(steps: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Median seconds per call of every step, run in turns after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run(repeat: int, sizes: dict[str, int]) -> dict[str, Any]:
    spec = NetworkSpec(kind="conv", in_channels=1, image_size=sizes["image_size"], width=sizes["width"], depth=sizes["depth"], n_classes=10)
    builtin = ODEResNet(spec, seed=0)
    make_block, opening, closing = user_parts(builtin)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((sizes["batch"], 1, spec.image_size, spec.image_size), generator=g)
    y = torch.randint(0, 10, (sizes["batch"],), generator=g)
    mgrit = dict(levels=3, coarsening=4, relax=["F", "FCF"], warm_start=True)
    results: dict[str, Any] = {"sizes": sizes, "targets": TARGETS, "one_shot": {}}
    for fwd, bwd in ((1, 1), (2, 1)):
        fast = LayerParallel(spec, seed=0, fwd_iters=fwd, bwd_iters=bwd, **mgrit)
        general = LayerParallel(
            block=make_block,
            depth=spec.depth,
            t_final=spec.t_final,
            opening=opening,
            closing=closing,
            fwd_iters=fwd,
            bwd_iters=bwd,
            **mgrit,
        )
        t = interleaved({"builtin": step_fn(fast, x, y, True), "user": step_fn(general, x, y, True)}, repeat)
        results["one_shot"][f"{fwd}/{bwd}"] = {**t, "ratio": t["user"] / t["builtin"]}
    one_level = LayerParallel(block=make_block, depth=spec.depth, t_final=spec.t_final, opening=opening, closing=closing, levels=1)
    blocks = [_Residual(make_block(n), spec.h) for n in range(spec.depth)]
    plain = nn.Sequential(opening, *blocks, closing)
    t = interleaved({"user_one_level": step_fn(one_level, x, y, False), "plain": step_fn(plain, x, y, False)}, repeat)
    results["one_level"] = {**t, "ratio": t["user_one_level"] / t["plain"]}
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats: a smoke run of a few seconds")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run(3 if args.quick else args.repeat, QUICK if args.quick else FULL)
    s = results["sizes"]
    print(f"conv, {s['width']} channels, {s['image_size']}x{s['image_size']}, N = {s['depth']}, batch {s['batch']}, float32, one thread")
    print(f"targets: ratio <= {TARGETS['one_shot']} in (a), <= {TARGETS['one_level']} in (b)")
    print("(a) one-shot step, 3 levels, m = 4, F/FCF, warm-started: built-in fast path vs user block (general path)")
    for iters, r in results["one_shot"].items():
        print(f"    {iters}: built-in {1e3 * r['builtin']:8.2f} ms   user {1e3 * r['user']:8.2f} ms   ratio {r['ratio']:.3f}")
    r = results["one_level"]
    print("(b) one level, training step: LayerParallel(levels=1) with the user block vs nn.Sequential")
    print(f"    user {1e3 * r['user_one_level']:8.2f} ms   plain {1e3 * r['plain']:8.2f} ms   ratio {r['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
