"""The serial network: plain PyTorch, trained by autograd, the oracle of the parallel one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import comm as comm_module
from .layers import NetworkSpec, ResidualLayer, classify, make_classifier, make_opening, open_state, residual_step, resolve_device
from .spec import input_problem
from .user import UserParts, check_arguments, check_ends, check_one_stage, default_device, set_modes, user_network_parts


class ODEResNet(nn.Module):
    """A residual network ``x_{n+1} = x_n + h f_n(x_n)``: forward Euler in layer-time.

    The built-in kinds, ``ODEResNet(spec)``, have ``f_n(x) = sigma(W_n x + b_n)``;
    your own, ``ODEResNet(block=make_block, depth=N, t_final=T, opening=..., closing=...)``,
    has ``f_n = make_block(n)`` and ``h = T / N``, each step computed as
    ``torch.add(x, f_n(x), alpha=h)``: the serial twin of
    ``LayerParallel(block=make_block, ...)`` with the same seed, which
    refuses the same blocks (see :class:`LayerParallel`).

    Parameters
    ----------
    spec
        The network description (:class:`NetworkSpec`), for the built-in kinds.
    seed
        Every layer's initial parameters are drawn from a stream seeded by
        ``(seed, layer)`` (user blocks: ``make_block(n)`` runs under torch's
        generator seeded so), so :class:`LayerParallel` with the same seed holds
        the same network at any rank count.
    block, depth, t_final, opening, closing, input_shape, device
        A user network, as in :class:`LayerParallel`.
    ends
        ``False``: the layers alone, ``x_0 -> x_N`` (no opening, no classifier
        or closing), as in :class:`LayerParallel`.

    Examples
    --------
    >>> net = ODEResNet(NetworkSpec(kind="dense", in_features=2, width=4, depth=8), seed=0)
    >>> net(torch.zeros(3, 2)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        spec: NetworkSpec | None = None,
        seed: int = 0,
        *,
        block: Any = None,
        depth: int | None = None,
        t_final: float | None = None,
        opening: nn.Module | None = None,
        closing: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        device: Any = None,
        ends: bool = True,
    ) -> None:
        check_arguments(spec, block, depth, t_final, opening=opening, closing=closing, input_shape=input_shape, device=device)
        check_ends(ends, opening, closing)
        super().__init__()
        self.spec = spec
        self.ends = ends
        self._parts: UserParts | None = None
        if spec is not None:
            self.depth, self.t_final, self.dtype = spec.depth, spec.t_final, spec.torch_dtype
            self.device = resolve_device(spec)
            self.opening = make_opening(spec, seed, self.device) if ends else None
            self.layers = nn.ModuleList(ResidualLayer(spec, n, seed, self.device) for n in range(spec.depth))
            self.classifier = make_classifier(spec, seed, self.device) if ends else None
            return
        self.depth, self.t_final, self.device = depth, t_final, default_device(opening, device)
        parts = UserParts(comm_module.SerialBackend(), block, seed, range(depth), opening, closing, self.device, input_shape)
        self.dtype = parts.dtype
        self.opening = parts.opening
        self.layers = nn.ModuleList(parts.blocks[n] for n in range(depth))
        self.closing = parts.closing
        self._parts = parts

    @classmethod
    def from_config(cls, network: Any, seed: int = 0) -> ODEResNet:
        """Build from the config's ``[network]`` section (``kind = "module"``: the user's network, see ``LayerParallel.from_config``)."""
        values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
        if values.get("kind") == "module":
            return cls(seed=seed, **check_one_stage(user_network_parts(network)))
        return cls(NetworkSpec.from_config(network), seed=seed)

    @property
    def h(self) -> float:
        """The layer step ``t_final / depth``."""
        return self.t_final / self.depth

    def train(self, mode: bool = True) -> ODEResNet:
        """As ``nn.Module.train``, but a user network's blocks keep the modes they were built in."""
        super().train(mode)
        if self._parts is not None:
            set_modes(list(self.layers), self._parts.modes)
        return self

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All layer states ``x_0, ..., x_N`` for the input batch ``x``."""
        if self._parts is not None:
            return self._user_states(x)
        _, problem = self.spec.input_problem(x) if self.ends else self.spec.state_problem(x)
        if problem is not None:
            raise ValueError(problem)
        spec, ops, act, h = self.spec, self.spec.ops, self.spec.act, self.spec.h
        x = x.to(device=self.device, dtype=self.dtype)
        state = open_state(spec, self.opening, x) if self.ends else x
        out = [state]
        for layer in self.layers:
            state = residual_step(ops, act, state, layer.weight, layer.bias, h)
            out.append(state)
        return out

    def _user_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        _, problem = input_problem(x)
        if problem is not None:
            raise ValueError(problem)
        state = self.opening(x.to(device=self.device, dtype=self.dtype))
        self._parts.probe(comm_module.SerialBackend(), state)
        out, h = [state], self.h
        for block in self.layers:
            state = torch.add(state, block(state), alpha=h)
            out.append(state)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the input batch ``x``."""
        if self._parts is not None:
            return self.closing(self.states(x)[-1])
        state = self.states(x)[-1]
        return classify(self.spec, self.classifier, state) if self.ends else state
