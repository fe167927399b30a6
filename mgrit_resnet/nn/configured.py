"""Networks from the config's ``[network]`` section, of one stage or of several.

A ``[network]`` makes a network of stages (:class:`~mgrit_resnet.nn.StagedResNet`,
:class:`~mgrit_resnet.nn.StagedParallel`) when ``network.depths`` is set
(built-in stages of ``network.widths``, joined by strided convolutions or
linear maps, see :func:`~mgrit_resnet.nn.layers.staged_modules`), or when the
builder of ``network.kind = "module"`` returns stages; else a network of one
stage (:class:`~mgrit_resnet.nn.ODEResNet`, :class:`~mgrit_resnet.nn.LayerParallel`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import comm as comm_module
from ..config import check_head_pool
from ..mgrit import options_from_config
from .layers import device_named, staged_modules
from .parallel import LayerParallel
from .serial import ODEResNet
from .spec import DTYPES
from .staged import StagedParallel
from .stages import Stage, StagedResNet
from .user import user_network_parts


def serial_from_config(network: Any, seed: int = 0) -> nn.Module:
    """The serial network of ``[network]``: an :class:`ODEResNet`, or a :class:`StagedResNet` for a network of stages."""
    values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
    if values.get("kind") == "module":
        parts = user_network_parts(network)
        return (StagedResNet if "stages" in parts else ODEResNet)(**parts, seed=seed)
    if values.get("depths"):
        return StagedResNet(**builtin_staged_parts(values, seed), seed=seed)
    return ODEResNet.from_config(network, seed=seed)


def parallel_from_config(network: Any, mgrit: Any, comm: Any = None, seed: int = 0, **options: Any) -> nn.Module:
    """The layer-parallel network of ``[network]`` and ``[mgrit]``: a :class:`LayerParallel`, or a :class:`StagedParallel`
    for a network of stages (collective); ``options`` as for their constructors (``fwd_iters``, ``warm_start``, ...).

    The ``[mgrit]`` section (or a mapping of some of its keys) is read as
    :meth:`LayerParallel.from_config` reads it, and applies to every stage.
    """
    values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
    backend = comm_module.backend_for(comm)
    local_rank = comm_module.local_rank(backend) if values.get("device") == "cuda" else 0
    solver = {**options_from_config(mgrit), **options}
    if values.get("kind") == "module":
        parts = user_network_parts(network, local_rank)
        return (StagedParallel if "stages" in parts else LayerParallel)(**parts, comm=backend, seed=seed, **solver)
    if values.get("depths"):
        solver.setdefault("coarse_weights", values.get("coarse_weights", "first"))
        return StagedParallel(**builtin_staged_parts(values, seed, local_rank), comm=backend, seed=seed, **solver)
    return LayerParallel.from_config(network, mgrit, comm=backend, seed=seed, **options)


def builtin_staged_parts(values: dict[str, Any], seed: int, local_rank: int = 0) -> dict[str, Any]:
    """The arguments of :class:`StagedResNet` / :class:`StagedParallel` (but the seed) of a built-in ``[network]`` with ``depths``.

    Stage ``s``: ``depths[s]`` layers of ``widths[s]`` channels (conv) or features
    (dense), final time ``network.t_final``; the opening, transitions and
    closing of :func:`~mgrit_resnet.nn.layers.staged_modules`, drawn from ``seed``;
    a conv closing pools the final state to ``network.head_pool x head_pool``.

    Raises
    ------
    ValueError
        ``network.head_pool`` does not fit (:func:`~mgrit_resnet.config.check_head_pool`):
        not 1 for dense, larger than the final state's side for conv.
    """
    kind, widths = values["kind"], values["widths"]
    dtype, device = DTYPES[values.get("dtype", "float32")], device_named(values.get("device", "cpu"), local_rank)
    activation, t_final = values.get("activation", "tanh"), values.get("t_final", 1.0)
    stages = [Stage(d, t_final, kind=kind, width=w, activation=activation) for d, w in zip(values["depths"], widths)]
    in_size = values.get("in_features", 2) if kind == "dense" else values.get("in_channels", 1)
    side = values.get("image_size", 8)
    head_pool = check_head_pool(kind, values.get("head_pool", 1), side, len(widths))
    n_classes = values.get("n_classes", 5)
    opening, transitions, closing = staged_modules(kind, in_size, widths, activation, n_classes, seed, dtype, device, head_pool)
    shape = (in_size,) if kind == "dense" else (in_size, side, side)
    return dict(stages=stages, transitions=transitions, opening=opening, closing=closing, input_shape=shape, device=device, dtype=dtype)
