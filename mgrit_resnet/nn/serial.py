"""The serial network: plain PyTorch, trained by autograd, the oracle of the parallel one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import NetworkSpec, ResidualLayer, classify, make_classifier, make_opening, open_state, residual_step, resolve_device


class ODEResNet(nn.Module):
    """A residual network ``x_{n+1} = x_n + h sigma(W_n x_n + b_n)``: forward Euler in layer-time.

    Parameters
    ----------
    spec
        The network description (:class:`NetworkSpec`).
    seed
        Every layer's initial parameters are drawn from a stream seeded by
        ``(seed, layer)``, so :class:`LayerParallel` with the same seed holds
        the same network at any rank count.

    Examples
    --------
    >>> net = ODEResNet(NetworkSpec(kind="dense", in_features=2, width=4, depth=8), seed=0)
    >>> net(torch.zeros(3, 2)).shape
    torch.Size([3, 5])
    """

    def __init__(self, spec: NetworkSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        device = resolve_device(spec)
        self.opening = make_opening(spec, seed, device)
        self.layers = nn.ModuleList(ResidualLayer(spec, n, seed, device) for n in range(spec.depth))
        self.classifier = make_classifier(spec, seed, device)

    @classmethod
    def from_config(cls, network: Any, seed: int = 0) -> ODEResNet:
        """Build from the config's ``[network]`` section."""
        return cls(NetworkSpec.from_config(network), seed=seed)

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All layer states ``x_0, ..., x_N`` for the input batch ``x``."""
        problem = self.spec.check_input(x)
        if problem is not None:
            raise ValueError(problem)
        spec, ops, act, h = self.spec, self.spec.ops, self.spec.act, self.spec.h
        state = open_state(spec, self.opening, x.to(self.opening.weight))
        out = [state]
        for layer in self.layers:
            state = residual_step(ops, act, state, layer.weight, layer.bias, h)
            out.append(state)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the input batch ``x``."""
        return classify(self.spec, self.classifier, self.states(x)[-1])
