"""The network cut into blocks for local training: a run of residual layers, its auxiliary head, its kinetic term.

A block is a run of consecutive residual layers of :class:`~mgrit_resnet.nn.ODEResNet`
(block 0 also holds the opening layer) with a classifier head on its output.
The layers and the last head are built exactly as ``ODEResNet`` builds its
layers and classifier (same seed, same per-layer streams), so the stack of
blocks with the last head *is* an ``ODEResNet`` and comparisons start from the
same network. How the layers are cut and the blocks' ``tau`` are in :mod:`.plan`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.layers import ResidualLayer, classify, make_classifier, make_opening, open_state
from ..nn.spec import NetworkSpec


class LocalBlock(nn.Module):
    """Residual layers ``layers`` of the network and the head on their output.

    Parameters
    ----------
    spec
        The network description.
    index
        Block number ``k``; block 0 holds the opening layer.
    layers
        The residual-layer indices of the block (contiguous).
    last
        Whether this is the last block: its head is the network's classifier.
    seed
        The network seed (as for ``ODEResNet``).
    device
        Where the parameters live.
    head_hidden
        Hidden width of an auxiliary head's MLP; 0 for a linear head. The last
        block's head is the network's linear classifier either way.
    """

    def __init__(
        self, spec: NetworkSpec, index: int, layers: range, last: bool, seed: int, device: torch.device, head_hidden: int = 0
    ) -> None:
        super().__init__()
        self.spec, self.index, self.layer_range, self.last = spec, index, layers, last
        self.opening = make_opening(spec, seed, device) if index == 0 else None
        self.layers = nn.ModuleList(ResidualLayer(spec, n, seed, device) for n in layers)
        self.head = make_classifier(spec, seed, device, head=None if last else index, hidden=head_hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output state, head logits, and the kinetic energy ``sum_m mean(g_m(x_m)^2)`` of the block.

        ``g_m(x_m) = h sigma(W_m x_m + b_m)`` is residual layer ``m``'s displacement;
        the mean runs over the batch and the features.
        """
        spec, ops, act, h = self.spec, self.spec.ops, self.spec.act, self.spec.h
        state = open_state(spec, self.opening, x.to(self.opening.weight)) if self.opening is not None else x
        kinetic = state.new_zeros(())
        for layer in self.layers:
            activation = act.apply(ops.pre(state, layer.weight, layer.bias))
            kinetic = kinetic + (h * activation).square().mean()  # the displacement g = h * sigma(W x + b)
            state = torch.add(state, activation, alpha=h)  # as residual_step, so the stack is bitwise ODEResNet
        return state, classify(spec, self.head, state), kinetic

    def portable_parameters(self) -> dict[str, nn.Parameter]:
        """The block's parameters under the keys of ``ODEResNet.state_dict()``; the auxiliary head's as ``heads.k.*``.

        The keys do not depend on where the block runs, so checkpoints and
        optimiser states keyed by them load at any rank count.
        """
        head = "classifier" if self.last else f"heads.{self.index}"
        keyed = {}
        for name, parameter in self.named_parameters():
            part, rest = name.split(".", 1)
            if part == "layers":
                position, rest = rest.split(".", 1)
                name = f"layers.{self.layer_range[int(position)]}.{rest}"
            elif part == "head":
                name = f"{head}.{rest}"
            keyed[name] = parameter
        return keyed

    def network_state(self) -> dict[str, torch.Tensor]:
        """This block's share of ``ODEResNet.state_dict()`` (the last block's head is ``classifier``)."""
        return {k: v.detach().cpu().clone() for k, v in self.portable_parameters().items() if not k.startswith("heads.")}

    def head_state(self) -> dict[str, torch.Tensor]:
        """The auxiliary head's parameters, keyed ``heads.k.weight`` / ``heads.k.bias`` (empty for the last block)."""
        return {k: v.detach().cpu().clone() for k, v in self.portable_parameters().items() if k.startswith("heads.")}

    @torch.no_grad()
    def load_portable(self, state: dict[str, torch.Tensor]) -> None:
        """Take this block's parameters from ``state`` (network and heads together, keys of :meth:`portable_parameters`)."""
        for key, parameter in self.portable_parameters().items():
            parameter.copy_(state[key])


def build_blocks(spec: NetworkSpec, seed: int, bounds: list[range], mine: range, device: Any, head_hidden: int = 0) -> list[LocalBlock]:
    """The blocks ``mine`` of a network cut at ``bounds`` (auxiliary heads with ``head_hidden`` hidden features, or linear)."""
    return [LocalBlock(spec, k, bounds[k], k == len(bounds) - 1, seed, device, head_hidden) for k in mine]
