"""One interface over the strategies: what the training loop needs from a network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import AUTO_ITERS, callable_name
from ..nn import LayerParallel, StagedParallel, parallel_from_config, serial_from_config
from ..nn.bridge import error_terms, relative_error

#: The layer-parallel networks: their calls are collective and take a warm-start key.
PARALLEL = (LayerParallel, StagedParallel)


def loss_backward(module: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0, key: Any = None) -> tuple[float, int]:
    """The training step's gradient: cross-entropy (mean over the batch, times ``weight``), backpropagated into ``.grad``.

    Parameters
    ----------
    module
        An :class:`~mgrit_resnet.nn.ODEResNet`, or a :class:`~mgrit_resnet.nn.LayerParallel`
        (collective over its ranks; ``key`` names the batch for one-shot warm starts).
    x, y
        The batch and its labels.
    weight
        The batch's share of the mean the optimiser sees (its rows over the
        whole batch's, when data groups each take a part).
    key
        The batch's warm-start key (layer-parallel networks only).

    Returns
    -------
    The weighted loss and the number of correct predictions.
    """
    loss, logits = _loss(module, x, y, weight, key)
    loss.backward()
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())


def checked_loss_backward(
    module: LayerParallel | StagedParallel, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0, key: Any = None
) -> tuple[float, int, float]:
    """:func:`loss_backward` of a layer-parallel network with an exact check of the gradient it adds (collective).

    The same loss's gradient is first taken by layer-serial calls
    (:meth:`~mgrit_resnet.nn.LayerParallel.exact_calls`: serial backprop's,
    ``N`` layer steps each way, the warm starts left alone). Returns the loss,
    the correct predictions and the relative 2-norm error of the gradient over
    the whole network: the layers', and the opening's and the closing's, which
    the forward solve's error reaches through the final state and the loss.
    """
    params = list(module.parameters())
    with module.exact_calls():
        loss, _ = _loss(module, x, y, weight, None)
        exact = torch.autograd.grad(loss, params, allow_unused=True)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    loss_value, right = loss_backward(module, x, y, weight, key)
    # Every rank holds its own layers and a copy of the replicated modules (opening, closing, transitions): count those once.
    owned = {id(p) for network in layer_networks(module) for p in network.layers.parameters()}
    first = module.backend.rank == 0
    pairs = [
        (torch.zeros_like(e) if p.grad is None else p.grad if old is None else p.grad - old, e)
        for p, e, old in zip(params, exact, before)
        if e is not None and (first or id(p) in owned)
    ]
    diff, norm = error_terms(pairs)
    return loss_value, right, relative_error(module.backend.allreduce_sum(diff), module.backend.allreduce_sum(norm))


def layer_networks(module: LayerParallel | StagedParallel) -> list[LayerParallel]:
    """The layer-parallel networks whose solves a call of ``module`` runs (the stages of a staged network, else the one)."""
    return list(getattr(module, "stages", None) or [module])


def _loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted cross-entropy of ``module`` on the batch and the logits."""
    logits = module(x, key=key) if isinstance(module, PARALLEL) else module(x)
    return nn.functional.cross_entropy(logits, y) * weight, logits


class TrainModel:
    """A network under one strategy.

    ``serial``: :class:`~mgrit_resnet.nn.ODEResNet` by autograd (every rank of a
    layer group holds the whole network). ``exact``: :class:`~mgrit_resnet.nn.LayerParallel`
    solved to ``mgrit.tol``. ``one_shot``: ``LayerParallel`` with
    ``train.fwd_iters`` / ``train.bwd_iters`` iterations per step, warm-started per batch
    (``"auto"``: set before every step, :meth:`set_iterations`).

    :attr:`layer_steps` counts this data group's layer steps (the solves'
    propagator calls on every level and rank, forward and adjoint; ``serial``:
    ``2 N`` per step; an exact check of the gradient error adds its ``2 N``).
    :attr:`grad_error` is the last exact check's relative error of the whole
    gradient (:meth:`check_next`), ``None`` after a step without one.

    ``probe``, a batch of the training data, goes once through a user network
    (``network.kind = "module"``) when it is built: a sample shape its opening
    cannot take is then bad input with the network's own message, the same on
    every rank, before training starts (the built-in kinds check the shape with the data).
    """

    def __init__(self, cfg: Any, layer_comm: Any, seed: int, probe: torch.Tensor | None = None) -> None:
        self.strategy = cfg.train.strategy
        if self.strategy == "serial":
            self.module: nn.Module = serial_from_config(cfg.network, seed=seed)
        else:
            options = {}
            if self.strategy == "one_shot":
                fwd, bwd = (1 if n == AUTO_ITERS else n for n in (cfg.train.fwd_iters, cfg.train.bwd_iters))  # auto: set per step
                options = dict(fwd_iters=fwd, bwd_iters=bwd, warm_start=cfg.train.warm_start)
            self.module = parallel_from_config(cfg.network, cfg.mgrit, comm=layer_comm, seed=seed, **options)
        self.parallel = isinstance(self.module, PARALLEL)
        self.depth = sum(self.module.depths) if hasattr(self.module, "depths") else self.module.depth  # all stages' layers
        self.layer_steps = 0
        self.grad_error: float | None = None
        self._check = False
        self.dtype: torch.dtype = self.module.dtype  # the inputs' dtype, for built-in and user networks alike
        if probe is not None and cfg.network.kind == "module":
            self._probe(probe, cfg.network.module)

    def _probe(self, x: torch.Tensor, module: Any) -> None:
        try:
            self.predict(x.to(self.dtype))  # collective; the opening and closing run alike on every rank
        except (ValueError, TypeError):
            raise
        except Exception as error:
            name = callable_name(module) if callable(module) else module
            raise ValueError(
                f"network.module = {name!r}: the network cannot take the training samples of shape {tuple(x.shape[1:])}: "
                f"{type(error).__name__}: {error}"
            ) from error

    @property
    def owned_layers(self) -> range | list[range]:
        """This rank's layers (a network of stages: of every stage)."""
        if self.parallel:
            return self.module.owned_layers
        return [range(d) for d in self.module.depths] if hasattr(self.module, "depths") else range(self.depth)

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank's layer-parallel solves have sent so far (0 for ``serial``)."""
        return self.module.backend.bytes_sent if self.parallel else 0

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.module.named_parameters())

    def loss_backward(self, x: torch.Tensor, y: torch.Tensor, weight: float, key: Any) -> tuple[float, int]:
        """:func:`loss_backward` of this network; counts its layer steps into :attr:`layer_steps`.

        After :meth:`check_next`, :func:`checked_loss_backward`: :attr:`grad_error`
        is then the relative error of the step's whole gradient against serial backprop's.
        """
        if not self._check:
            self.grad_error = None
            result = loss_backward(self.module, x, y, weight, key)
            self.layer_steps += self._call_steps()
            return result
        loss, right, self.grad_error = checked_loss_backward(self.module, x, y, weight, key)
        self.layer_steps += self._call_steps() + 2 * self.depth  # the exact gradient: a layer-serial call each way
        return loss, right

    def _call_steps(self) -> int:
        """Layer steps of the last forward and backward call, summed over this group's ranks (the same on each of them)."""
        if not self.parallel:
            return 2 * self.depth
        s = self.module.stats
        return sum(s.forward.get("steps_per_rank") or ()) + sum(s.adjoint.get("steps_per_rank") or ())

    def set_iterations(self, fwd: int, bwd: int) -> None:
        """One-shot: the forward and adjoint MGRIT iterations of the next steps (the same on every rank)."""
        for network in layer_networks(self.module):
            network.set_iterations(fwd, bwd)

    def check_next(self, check: bool) -> None:
        """Whether the next steps also measure the error of their whole gradient against serial backprop's.

        An exact check (:attr:`grad_error`) costs a layer-serial call each way,
        ``2 N`` layer steps. Its error is that of everything the optimiser
        sees: the layers' gradients, and the opening's and the closing's, which
        the forward solve's error reaches through the final state and the loss.
        """
        self._check = check

    def solve_report(self) -> list[float]:
        """The last step's iterations, first and last residuals of each solve and exact error (NaN: none), as
        ``[fwd_iters, bwd_iters, fwd_first, fwd_last, adj_first, adj_last, grad_error]`` (this group's)."""
        s = self.module.stats
        fwd, adj = s.forward.get("residuals") or [0.0], s.adjoint.get("residuals") or [0.0]
        error = float("nan") if self.grad_error is None else self.grad_error
        return [float(len(fwd)), float(len(adj)), fwd[0], fwd[-1], adj[0], adj[-1], error]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exact network (layer-serial propagation for the parallel strategies)."""
        return self.module.predict(x) if self.parallel else self.module(x)

    def solver_stats(self) -> dict[str, Any]:
        if not self.parallel:
            return {}
        s = self.module.stats
        return {
            "fwd_iterations": s.forward.get("iterations"),
            "adj_iterations": s.adjoint.get("iterations"),
            "fwd_residual": (s.forward.get("residuals") or [None])[-1],
            "adj_residual": (s.adjoint.get("residuals") or [None])[-1],
        }

    def full_state_dict(self, root_only: bool = False) -> dict[str, torch.Tensor] | None:
        """Collective: the whole network's parameters and buffers (CPU); ``root_only``: layer-parallel ones on rank 0 alone."""
        if self.parallel:
            return self.module.full_state_dict(root_only=root_only)
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.parallel:
            self.module.load_full_state_dict(state)
        else:
            self.module.load_state_dict(state)

    def warm_state_dict(self, packed: bool = False, root_only: bool = False) -> dict | None:
        return self.module.warm_state_dict(packed, root_only) if self.strategy == "one_shot" else None

    def load_warm_state_dict(self, states: dict | None) -> None:
        if self.strategy == "one_shot" and states is not None:
            self.module.load_warm_state_dict(states)
