"""TOML configuration with dotted ``--set`` overrides and validation.

Every key has a default (``../shared/INTERFACE.md`` lists them) and a check.
An unknown section or key, or a value of the wrong kind, is a
:class:`ConfigError` that names the dotted key and the allowed values.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import check_choice, check_float, check_int

# The vocabulary: every choice the config offers, named once. The layers that
# implement a choice read its names from here (their registries are keyed by them).
PROBLEM_KINDS = ("dahlquist", "heat1d", "heat2d")
SCHEMES = ("forward_euler", "backward_euler", "trapezoid")
CYCLES = ("V", "F")
TOL_KINDS = ("absolute", "relative")
INITIAL_GUESSES = ("zero", "initial_value", "sequential_coarse")
NETWORK_KINDS = ("dense", "conv")
ACTIVATION_NAMES = ("tanh", "relu", "smooth_relu")
DTYPES = ("float32", "float64")
DEVICES = ("cpu", "cuda")
DATASETS = ("peaks", "digits", "mnist5k", "synthetic")
WHOLE_NETWORK_STRATEGIES = ("serial", "exact", "one_shot")
LOCAL_STRATEGIES = ("local", "trgl")
STRATEGIES = WHOLE_NETWORK_STRATEGIES + LOCAL_STRATEGIES
OPTIMIZERS = ("sgd", "adam", "lbfgs")
TORCH_OPTIMIZERS = ("sgd", "adam")  # lbfgs is PETSc TAO's
LR_SCHEDULES = ("none", "step", "cosine")
LOCAL_SCHEDULES = ("parallel", "sequential", "multilap")
_RELAX_PATTERN = re.compile(r"F(CF)*")


def parse_relax(relax: str, name: str = "relax") -> int:
    """Number of CF sweeps in a relaxation string ``F(CF)^k`` ("F", "FCF", "FCFCF", ...)."""
    if not isinstance(relax, str) or not _RELAX_PATTERN.fullmatch(relax):
        raise ValueError(f"{name} must be 'F', 'FCF', 'FCFCF', ... (F followed by CF pairs), or a list of those per level; got {relax!r}")
    return (len(relax) - 1) // 2


class ConfigError(ValueError):
    """A bad config file, key or value."""


def _described(check: Callable[[str, Any], Any], kind: str, allowed: str, choices: tuple[str, ...] = ()) -> Callable[[str, Any], Any]:
    """Attach what the config reference prints for a check: the value's ``kind``, its ``allowed`` range, the ``choices``."""
    check.kind, check.allowed, check.choices = kind, allowed, choices  # type: ignore[attr-defined]
    return check


def _integer(minimum: int) -> Callable[[str, Any], int]:
    return _described(lambda name, value: check_int(name, value, minimum=minimum), "integer", f">= {minimum}")


def _real(minimum: float | None = None, positive: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        value = check_float(name, value, minimum=minimum)
        if positive and value <= 0:
            raise ValueError(f"{name} must be a real number > 0; got {value!r}")
        return value

    return _described(check, "real", "> 0" if positive else f">= {minimum}" if minimum is not None else "any")


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    return _described(lambda name, value: check_choice(name, value, allowed), "string", ", ".join(map(json.dumps, allowed)), allowed)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false; got {value!r}")
    return value


def _one_or_list(check: Callable[[str, Any], Any], per: str = "level") -> Callable[[str, Any], Any]:
    def checked(name: str, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{name} must be a value or a non-empty list of values; got []")
            return [check(name, v) for v in value]
        return check(name, value)

    return _described(checked, f"{check.kind}, or a non-empty list of them (one per {per})", check.allowed, check.choices)


def _relax(name: str, value: Any) -> str:
    parse_relax(value, name)
    return value


def _complex(name: str, value: Any) -> complex | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            z = complex(value.replace(" ", ""))
        except ValueError:
            pass
        else:
            return z if z.imag else z.real
    raise ValueError(f"{name} must be a real number, or a complex number written as a string such as '-1+2j'; got {value!r}")


_described(_boolean, "boolean", "true, false")
_described(_relax, "string", '"F", "FCF", "FCFCF", ...: F followed by any number of CF pairs')
_described(_complex, "real, or complex as a string", 'any; complex written as a string such as "-1+2j"')


SCHEMA: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any]]]] = {
    "problem": {
        "kind": ("dahlquist", _choice(*PROBLEM_KINDS)),
        "z": (-1.0, _complex),
        "scheme": ("backward_euler", _choice(*SCHEMES)),
        "t_final": (5.0, _real(positive=True)),
        "n_steps": (100, _integer(1)),
        "nx": (32, _integer(1)),
        "diffusivity": (1.0, _real(minimum=0.0)),
    },
    "mgrit": {
        "levels": (2, _integer(1)),
        "coarsening": (2, _one_or_list(_integer(2))),
        "min_coarse": (2, _integer(2)),
        "relax": ("FCF", _one_or_list(_relax)),
        "c_weight": (1.0, _real(positive=True)),
        "cycle": ("V", _choice(*CYCLES)),
        "tol": (1e-9, _real(minimum=0.0)),
        "tol_kind": ("absolute", _choice(*TOL_KINDS)),
        "max_iter": (50, _integer(0)),
        "initial_guess": ("zero", _choice(*INITIAL_GUESSES)),
        "skip_first_down": (False, _boolean),
        "relax_warm_start": (True, _boolean),
    },
    "network": {
        "kind": ("dense", _choice(*NETWORK_KINDS)),
        "in_features": (2, _integer(1)),
        "in_channels": (1, _integer(1)),
        "image_size": (8, _integer(1)),
        "width": (8, _integer(1)),
        "depth": (64, _integer(1)),
        "t_final": (1.0, _real(positive=True)),
        "activation": ("tanh", _choice(*ACTIVATION_NAMES)),
        "n_classes": (5, _integer(2)),
        "dtype": ("float32", _choice(*DTYPES)),
        "device": ("cpu", _choice(*DEVICES)),
    },
    "data": {
        "name": ("peaks", _choice(*DATASETS)),
        "n_train": (5000, _integer(1)),
        "n_val": (1000, _integer(0)),
        "seed": (0, _integer(0)),
    },
    "train": {
        "strategy": ("one_shot", _choice(*STRATEGIES)),
        "optimizer": ("adam", _choice(*OPTIMIZERS)),
        "lr": (1e-2, _real(positive=True)),
        "batch_size": (50, _integer(1)),
        "epochs": (10, _integer(1)),
        "fwd_iters": (2, _integer(1)),
        "bwd_iters": (1, _integer(1)),
        "seed": (0, _integer(0)),
        "warm_start": (True, _boolean),
        "momentum": (0.9, _real(minimum=0.0)),
        "schedule": ("none", _choice(*LR_SCHEDULES)),
        "lr_step": (10, _integer(1)),
        "lr_gamma": (0.1, _real(positive=True)),
        "data_parallel": (1, _integer(1)),
        "lbfgs_iters": (10, _integer(1)),
        "blocks": (0, _integer(0)),
        "local_schedule": ("parallel", _choice(*LOCAL_SCHEDULES)),
        "laps": (2, _integer(1)),
        "head_hidden": (0, _integer(0)),
        "tau": (0.1, _one_or_list(_real(positive=True), per="block")),
    },
}


# One line per key for the config reference (docs/_ext/config_reference.py renders
# it beside the default and the check's allowed values; a test checks that every
# SCHEMA key has one). reStructuredText.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "problem": {
        "kind": "the problem: :class:`~mgrit_resnet.problems.Dahlquist`, :class:`~mgrit_resnet.problems.Heat1D` "
        "or :class:`~mgrit_resnet.problems.Heat2D` (``heat2d`` needs petsc4py)",
        "z": "Dahlquist only: the eigenvalue in :math:`u' = z u`",
        "scheme": "Dahlquist: the time-stepping scheme; the heat problems accept only ``backward_euler``",
        "t_final": "final time :math:`T`",
        "n_steps": "number of fine time steps; the fine grid has ``n_steps + 1`` points",
        "nx": "heat problems only: interior grid points (per direction in 2D)",
        "diffusivity": "heat problems only: the coefficient :math:`a` in :math:`u_t = a \\Delta u`",
    },
    "mgrit": {
        "levels": "maximum number of levels; 1 is a sequential solve",
        "coarsening": "coarsening factor :math:`m` between a level and the next; a list gives one per level",
        "min_coarse": "no level with fewer points than this is created",
        "relax": "relaxation :math:`F(CF)^\\nu`; a list gives one per level",
        "c_weight": "weight :math:`w` of C-relaxation",
        "cycle": "V-cycle, or F-cycle",
        "tol": "stopping tolerance on the fine-level residual",
        "tol_kind": "``tol`` is absolute, or relative to the first residual computed",
        "max_iter": "maximum number of iterations",
        "initial_guess": "fine-level states before the first iteration",
        "skip_first_down": "make the first iteration a coarse pass without relaxation",
        "relax_warm_start": "with ``false``, a warm start (one-shot training) is taken as it is: "
        "the first iteration skips its initial fine F-relaxation",
    },
    "network": {
        "kind": "dense or convolutional residual layers",
        "in_features": "dense: input size",
        "in_channels": "conv: input channels",
        "image_size": "conv: input image side length",
        "width": "dense width, or number of conv channels",
        "depth": "number of residual layers :math:`N`; layer-parallel runs need at least :math:`2P - 1` on :math:`P` ranks",
        "t_final": ":math:`T`; each layer is a step of :math:`h = T/N`",
        "activation": "activation function :math:`\\sigma`",
        "n_classes": "number of output classes",
        "dtype": "floating-point type",
        "device": "where each rank computes (``cuda``: GPU ``local rank mod device count``)",
    },
    "data": {
        "name": "the data set; each fixes the input shape and number of classes it needs (an error names them)",
        "n_train": "number of training samples",
        "n_val": "number of validation samples",
        "seed": "random seed of the data (and of ``verify``'s random batch)",
    },
    "train": {
        "strategy": "``serial`` (autograd through :class:`~mgrit_resnet.nn.ODEResNet`), ``exact`` "
        "(:class:`~mgrit_resnet.nn.LayerParallel` solved to ``mgrit.tol``), ``one_shot``, or block-wise local "
        "training: ``local`` or ``trgl`` (:doc:`local`)",
        "optimizer": "optimiser; ``lbfgs`` is PETSc TAO's L-BFGS and needs petsc4py, strategy ``serial`` or ``exact`` "
        "and ``data_parallel = 1``",
        "lr": "learning rate",
        "batch_size": "samples per optimisation step",
        "epochs": "passes over the training set",
        "fwd_iters": "``one_shot``: forward MGRIT iterations per step",
        "bwd_iters": "``one_shot``: adjoint MGRIT iterations per step",
        "seed": "seed of the initial parameters and the batches",
        "warm_start": "``one_shot``: start each batch's solves from the states its last step left",
        "momentum": "``sgd``: momentum",
        "schedule": "learning-rate schedule, stepped once per epoch (``cosine``: to zero over ``epochs``)",
        "lr_step": "``step`` schedule: epochs between decays",
        "lr_gamma": "``step`` schedule: factor of each decay",
        "data_parallel": ":math:`D`, dividing the number of ranks: :math:`D` groups of :math:`P/D` layer-ranks "
        "(for ``local`` and ``trgl``: ranks holding the blocks), each taking a share of every batch",
        "lbfgs_iters": "``lbfgs``: L-BFGS iterations per epoch, each on the mean loss over the whole training set; "
        "the quasi-Newton memory carries over between epochs (they chunk one L-BFGS run) but not across ``--resume``; "
        "PETSc options with the prefix ``-mgrit_`` tune the solver (e.g. ``-mgrit_tao_ls_type armijo``)",
        "blocks": "``local``, ``trgl``: number of blocks :math:`K` (``0``: one per rank of a data group; otherwise between "
        "the number of ranks per data group and ``network.depth``); a rank holds one or more consecutive blocks",
        "local_schedule": "``local``, ``trgl``: ``parallel`` (all blocks at once, pipelined over the ranks), "
        "``sequential`` (one block after the other) or ``multilap`` (sequential, in ``laps`` laps)",
        "laps": "``multilap``: number of laps (at most ``epochs``); each lap trains every block for its share of ``epochs``",
        "head_hidden": "``local``, ``trgl``: hidden width of every auxiliary head, an MLP (linear, activation, linear) "
        "on the (pooled) block output; ``0``: a linear head. The last block's head is the network's linear classifier",
        "tau": "``trgl``: the kinetic penalty of block :math:`k` has weight :math:`1/(2\\tau_k)`; a number gives "
        ":math:`\\tau/2` to the first :math:`K/2` blocks and :math:`\\tau` to the others; ``inf`` is ``local``",
    },
}


class Section:
    """One config table with attribute access (``cfg.mgrit.levels``)."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        """The keys and values of this table."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self.as_dict()!r})"


@dataclass(frozen=True)
class Config:
    """A validated configuration: one :class:`Section` per table of :data:`SCHEMA`."""

    problem: Section
    mgrit: Section
    network: Section
    data: Section
    train: Section

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every table as a dict of its keys and values."""
        return {name: getattr(self, name).as_dict() for name in SCHEMA}

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new validated config: these values with ``overrides`` (dotted keys, as for :func:`load_config`) applied."""
        flat = {f"{section}.{key}": value for section, table in self.as_dict().items() for key, value in table.items()}
        return load_config(None, {**flat, **overrides})


def toml_value(value: Any) -> str:
    """``value`` written as TOML (a complex number as a string, as ``--set problem.z=-1+2j`` reads it)."""
    if callable(getattr(value, "item", None)):  # a NumPy or torch scalar: its Python value
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, complex):
        return json.dumps(str(value).strip("()"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``8``, ``[2, 4]``, ``true``, ``"F"``) or else the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["mgrit.levels=3", ...]`` into ``{"mgrit.levels": 3, ...}``."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE with a dotted key such as mgrit.coarsening=8; got {item!r}")
        overrides[key.strip()] = parse_value(text.strip())
    return overrides


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a TOML file (or only defaults when ``path`` is None), apply overrides, validate.

    Parameters
    ----------
    path
        A TOML file with any of the tables ``problem``, ``mgrit``, ``network``, ``data``, ``train``.
    overrides
        Dotted keys to values, applied after the file (``{"mgrit.levels": 3}``).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override keys are dotted, SECTION.KEY with SECTION one of {', '.join(SCHEMA)}; got {dotted!r}")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        table[key] = value
    unknown = [name for name in raw if name not in SCHEMA]
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed sections: {', '.join(SCHEMA)}")
    return Config(**{name: Section(name, validate_section(name, raw.get(name, {}))) for name in SCHEMA})


def validate_section(name: str, table: Any) -> dict[str, Any]:
    """Check one table against :data:`SCHEMA` and fill in the defaults (raises :class:`ConfigError`)."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    schema = SCHEMA[name]
    for key in table:
        if key not in schema:
            raise ConfigError(f"unknown config key '{name}.{key}'; allowed keys in [{name}]: {', '.join(schema)}")
    values = {}
    for key, (default, check) in schema.items():
        try:
            values[key] = check(f"{name}.{key}", table.get(key, default))
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
    return values
