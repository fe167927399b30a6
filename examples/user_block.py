"""Your own network for ``[network] kind = "module"``: a convolutional residual branch, a stem and a head.

``examples/user_block.toml`` names it (``module = "examples/user_block.py:build"``) and
passes ``[network.options]`` to :func:`build`. Layer ``n`` of the network is
``x + h * f_n(x)`` with ``f_n = make_block(n)``; the opening maps the input to
the layer states, the closing maps the last state to the logits.

Usage (from the repository root)::

    mpiexec -n 2 mgrit-resnet train examples/user_block.toml --out runs/user_block
    python examples/user_block.py      # build it once and print the shapes
"""

from __future__ import annotations

from typing import Any

from torch import nn


def build(options: dict[str, Any]) -> tuple:
    """``(make_block, opening, closing)`` for the ``[network.options]`` table ``options``.

    Options: ``width`` (channels of every layer state, default 4), ``groups``
    (GroupNorm groups, dividing ``width``; default 2), ``in_channels``
    (default 1) and ``classes`` (default 10). The closing pools to 4 x 4 and classifies linearly.
    """
    width = int(options.get("width", 4))
    groups = int(options.get("groups", 2))
    in_channels = int(options.get("in_channels", 1))
    classes = int(options.get("classes", 10))
    if width % groups:
        raise ValueError(f"[network.options] groups = {groups} must divide width = {width}")

    def make_block(layer: int) -> nn.Module:
        # Two 3x3 convolutions, each normalised; the network adds h * (this) to the state.
        return nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(groups, width),
        )

    opening = nn.Conv2d(in_channels, width, 3, padding=1)
    closing = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, classes))
    return make_block, opening, closing


def main() -> int:
    import torch

    make_block, opening, closing = build({"width": 4})
    x = torch.zeros(2, 1, 28, 28)
    state = opening(x)
    state = state + 0.1 * make_block(0)(state)
    print("opening", tuple(opening(x).shape), "-> block", tuple(state.shape), "-> closing", tuple(closing(state).shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
