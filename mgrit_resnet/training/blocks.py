"""The network cut into blocks for local training: a run of residual layers, its auxiliary head, its kinetic term.

A block is a run of consecutive residual layers of :class:`~mgrit_resnet.nn.ODEResNet`
(block 0 also holds the opening layer) with a classifier head on its output.
The layers and the last head are built exactly as ``ODEResNet`` builds its
layers and classifier (same seed, same per-layer streams), so the stack of
blocks with the last head *is* an ``ODEResNet`` and comparisons start from the
same network. How the layers are cut and the blocks' ``tau`` are in :mod:`.plan`.

A network of stages (``network.depths``) is cut so that no block straddles a
transition (:func:`~.plan.block_bounds`): a :class:`StagedBlock` holds layers
of one stage, and the first block of stage ``s > 0`` starts with
``transitions[s - 1]``, as block 0 starts with the opening. So every block's
layers, output and head see states of one shape (its stage's), and a
transition learns from the loss of the layers it feeds. The stack of blocks
is then the :class:`~mgrit_resnet.nn.StagedResNet` of the config, bitwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..nn.configured import builtin_staged_parts
from ..nn.layers import ResidualLayer, classify, make_classifier, make_opening, open_state, stage_seed
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
        ops, act, h = self.spec.ops, self.spec.act, self.spec.h
        state = self._enter(x)
        kinetic = state.new_zeros(())
        for layer in self.layers:
            activation = act.apply(ops.pre(state, layer.weight, layer.bias))
            kinetic = kinetic + (h * activation).square().mean()  # the displacement g = h * sigma(W x + b)
            state = torch.add(state, activation, alpha=h)  # as residual_step, so the stack is bitwise ODEResNet
        return state, self._classify(state), kinetic

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        """The block's first state: the opened input for block 0, else the input itself."""
        return open_state(self.spec, self.opening, x.to(self.opening.weight)) if self.opening is not None else x

    def _classify(self, state: torch.Tensor) -> torch.Tensor:
        return classify(self.spec, self.head, state)

    def _prefix(self, part: str, position: int) -> str:
        """The ``ODEResNet.state_dict()`` prefix of the block's module ``part`` (``layers``: its ``position``-th layer)."""
        if part == "layers":
            return f"layers.{self.layer_range[position]}"
        if part == "head":
            return "classifier" if self.last else f"heads.{self.index}"
        return part

    def portable_parameters(self) -> dict[str, nn.Parameter]:
        """The block's parameters under the keys of ``ODEResNet.state_dict()``; the auxiliary head's as ``heads.k.*``.

        The keys do not depend on where the block runs, so checkpoints and
        optimiser states keyed by them load at any rank count.
        """
        keyed = {}
        for name, parameter in self.named_parameters():
            part, rest = name.split(".", 1)
            position = 0
            if part == "layers":
                position, rest = rest.split(".", 1)
            keyed[f"{self._prefix(part, int(position))}.{rest}"] = parameter
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


class StagedBlock(LocalBlock):
    """Residual layers ``layers`` of stage ``stage`` of a built-in network of stages, and the head on their output.

    Parameters
    ----------
    spec
        The stage's layers as a :class:`NetworkSpec` (its width, depth,
        ``t_final``, activation and dtype; ``n_classes`` the network's).
    index, layers, last, seed, device, head_hidden
        As for :class:`LocalBlock`; ``layers`` are counted within the stage,
        whose layer ``n`` is drawn from ``(seed, stage, n)`` as in ``StagedResNet``.
    stage
        The stage the block's layers belong to.
    entry
        The module the block starts with: the opening (block 0), ``transitions[stage - 1]``
        (the first block of a later stage), or ``None``.
    closing
        The network's closing: the last block's head (``None`` for the others).
    """

    def __init__(
        self,
        spec: NetworkSpec,
        index: int,
        stage: int,
        layers: range,
        last: bool,
        seed: int,
        device: torch.device,
        head_hidden: int = 0,
        entry: nn.Module | None = None,
        closing: nn.Module | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.spec, self.index, self.stage, self.layer_range, self.last = spec, index, stage, layers, last
        self.device = device
        self.entry = entry
        self.layers = nn.ModuleList(ResidualLayer(spec, n, stage_seed(seed, stage), device) for n in layers)
        self.head = closing if last else make_classifier(spec, seed, device, head=index, hidden=head_hidden)

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the network's dtype and on its device (as ``StagedResNet`` takes it), through the block's opening or transition."""
        x = x.to(device=self.device, dtype=self.spec.torch_dtype)
        return x if self.entry is None else self.entry(x)

    def _classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state) if self.last else classify(self.spec, self.head, state)

    def _prefix(self, part: str, position: int) -> str:
        """The ``StagedResNet.state_dict()`` prefix of the block's module ``part``."""
        if part == "entry":
            return "opening" if self.index == 0 else f"transitions.{self.stage - 1}"
        if part == "layers":
            return f"stages.{self.stage}.layers.{self.layer_range[position]}"
        return "closing" if self.last else f"heads.{self.index}"


class StagedPieces:
    """What the blocks of a built-in network of stages (``network.depths``) are cut from.

    The opening, the transitions and the closing of
    :func:`~mgrit_resnet.nn.configured.builtin_staged_parts` (so those of
    ``StagedResNet`` with the same seed; small, built on every rank), the
    stages as :class:`NetworkSpec`, and the shape of one state of every stage.
    A conv stage's spec has the side of its states as ``image_size`` and
    ``network.head_pool``, so its auxiliary heads pool as the closing does.

    Parameters
    ----------
    network
        The config's ``[network]`` section (or a mapping of its keys) with ``depths``.
    seed
        The network seed.
    local_rank
        This rank's index on its node (picks the GPU for ``device = "cuda"``).
    """

    def __init__(self, network: Any, seed: int, local_rank: int = 0) -> None:
        values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
        parts = builtin_staged_parts(values, seed, local_rank)
        self.device, self.dtype = parts["device"], parts["dtype"]
        self.opening, self.transitions, self.closing = parts["opening"], parts["transitions"], parts["closing"]
        with torch.no_grad():  # one sample through the opening and the transitions: every stage's state shape
            state = self.opening(torch.zeros((1, *parts["input_shape"]), dtype=self.dtype, device=self.device))
            shapes = [tuple(state.shape[1:])]
            for transition in self.transitions:
                state = transition(state)
                shapes.append(tuple(state.shape[1:]))
        self.state_shapes = shapes
        n_classes, head_pool = values.get("n_classes", 5), values.get("head_pool", 1)
        self.specs = []
        for stage, shape in zip(parts["stages"], shapes):
            spec = replace(stage.spec(self.dtype, self.device), n_classes=n_classes)
            self.specs.append(replace(spec, image_size=shape[-1], head_pool=head_pool) if spec.kind == "conv" else spec)

    @property
    def depths(self) -> list[int]:
        """The number of layers of every stage."""
        return [spec.depth for spec in self.specs]

    def block(self, index: int, stage: int, layers: range, last: bool, seed: int, head_hidden: int = 0) -> StagedBlock:
        """Block ``index``: ``layers`` of ``stage``, led by the opening or the transition into the stage when it is the stage's first."""
        entry = None
        if layers.start == 0:
            entry = self.opening if stage == 0 else self.transitions[stage - 1]
        closing = self.closing if last else None
        return StagedBlock(self.specs[stage], index, stage, layers, last, seed, self.device, head_hidden, entry, closing)


def build_blocks(
    network: NetworkSpec | StagedPieces, seed: int, cut: list[tuple[int, range]], mine: range, device: Any, head_hidden: int = 0
) -> list[LocalBlock]:
    """The blocks ``mine`` of a network cut at ``cut`` (``(stage, layers)`` of every block, :func:`~.plan.block_bounds`),
    with auxiliary heads of ``head_hidden`` hidden features (or linear)."""
    last = len(cut) - 1
    if isinstance(network, StagedPieces):
        return [network.block(k, *cut[k], k == last, seed, head_hidden) for k in mine]
    return [LocalBlock(network, k, cut[k][1], k == last, seed, device, head_hidden) for k in mine]
