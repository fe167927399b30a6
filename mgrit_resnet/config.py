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
from ._descriptions import DESCRIPTIONS as DESCRIPTIONS
from ._toml import callable_name as callable_name
from ._toml import config_text as config_text
from ._toml import is_toml as is_toml
from ._toml import toml_key as toml_key
from ._toml import toml_value as toml_value

# The vocabulary: every choice the config offers, named once. The layers that
# implement a choice read its names from here (their registries are keyed by them).
PROBLEM_KINDS = ("dahlquist", "heat1d", "heat2d")
SCHEMES = ("forward_euler", "backward_euler", "trapezoid")
CYCLES = ("V", "F")
TOL_KINDS = ("absolute", "relative")
INITIAL_GUESSES = ("zero", "initial_value", "sequential_coarse")
COARSE_WEIGHTS = ("first", "mean")
NETWORK_KINDS = ("dense", "conv", "module")  # module: the user's own network (network.module)
ACTIVATION_NAMES = ("tanh", "relu", "smooth_relu")
DTYPES = ("float32", "float64")
DEVICES = ("cpu", "cuda")
DATASETS = ("peaks", "digits", "mnist5k", "synthetic", "npz")
WHOLE_NETWORK_STRATEGIES = ("serial", "exact", "one_shot")
LOCAL_STRATEGIES = ("local", "trgl")
STRATEGIES = WHOLE_NETWORK_STRATEGIES + LOCAL_STRATEGIES
OPTIMIZERS = ("sgd", "adam", "lbfgs")
TORCH_OPTIMIZERS = ("sgd", "adam")  # lbfgs is PETSc TAO's
LR_SCHEDULES = ("none", "step", "cosine")
LOCAL_SCHEDULES = ("parallel", "sequential", "multilap")
AUTO_ITERS = "auto"  # train.fwd_iters / bwd_iters: chosen per one-shot step to hold train.grad_error_target
_RELAX_PATTERN = re.compile(r"F(CF)*")
_MODULE_PATTERN = re.compile(r".+:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


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


def _real(minimum: float | None = None, positive: bool = False, allow_inf: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        value = check_float(name, value, minimum=minimum, allow_inf=allow_inf)
        if positive and value <= 0:
            raise ValueError(f"{name} must be a real number > 0; got {value!r}")
        return value

    bound = "> 0" if positive else f">= {minimum}" if minimum is not None else "any"
    return _described(check, "real", bound + (", or inf" if allow_inf else ""))


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


def _stage_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise TypeError(f"{name} must be a list of integers >= 1, one per stage ([] for one stage); got {value!r}")
    return [check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value)]


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


def _module(name: str, value: Any) -> Any:
    if callable(value):
        return value
    if not isinstance(value, str) or (value and not _MODULE_PATTERN.fullmatch(value)):
        raise ValueError(
            f'{name} must be "path/to/file.py:NAME" or "package.module:NAME" (NAME: the function build(options)), '
            f"or a callable given from Python; got {value!r}"
        )
    return value


def _table(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TypeError(f"{name} must be a table with string keys ([{name}] in TOML, or --set {name}.KEY=VALUE); got {value!r}")
    return dict(value)


def _iterations(name: str, value: Any) -> int | str:
    if value == AUTO_ITERS:
        return value
    try:
        return check_int(name, value, minimum=1)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be an integer >= 1 or "{AUTO_ITERS}"; got {value!r}') from None


def _fraction(name: str, value: Any) -> float:
    message = f"{name} must be a real number > 0 and < 1 (a relative error such as 0.01); got {value!r}"
    try:
        value = check_float(name, value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not 0 < value < 1:
        raise ValueError(message)
    return value


_described(_iterations, f'integer, or "{AUTO_ITERS}"', f'>= 1, or "{AUTO_ITERS}"')
_described(_fraction, "real", "> 0 and < 1")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string; got {value!r}")
    return value


_described(_boolean, "boolean", "true, false")
_described(_module, "string (or a callable from Python)", '"", "path/to/file.py:NAME", "package.module:NAME"')
_described(_table, "table", "any keys and values: passed to the builder unchecked")
_described(_text, "string", "a file path")
_described(_stage_list, "list of integers, one per stage", "each >= 1; [] is one stage (network.depth, network.width)")
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
        "module": ("", _module),
        "options": ({}, _table),
        "in_features": (2, _integer(1)),
        "in_channels": (1, _integer(1)),
        "image_size": (8, _integer(1)),
        "width": (8, _integer(1)),
        "depth": (64, _integer(1)),
        "depths": ([], _stage_list),
        "widths": ([], _stage_list),
        "t_final": (1.0, _real(positive=True)),
        "activation": ("tanh", _choice(*ACTIVATION_NAMES)),
        "n_classes": (5, _integer(2)),
        "head_pool": (1, _integer(1)),
        "dtype": ("float32", _choice(*DTYPES)),
        "coarse_weights": ("first", _choice(*COARSE_WEIGHTS)),
        "device": ("cpu", _choice(*DEVICES)),
    },
    "data": {
        "name": ("peaks", _choice(*DATASETS)),
        "path": ("", _text),
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
        "fwd_iters": (2, _iterations),
        "bwd_iters": (1, _iterations),
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
        "tau": (0.1, _one_or_list(_real(positive=True, allow_inf=True), per="block")),
        "grad_error_target": (0.01, _fraction),
        "grad_check_every": (20, _integer(1)),
        "auto_max_iters": (8, _integer(1)),
        "checkpoint_every": (1, _integer(1)),
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
        Dotted keys to values, applied after the file (``{"mgrit.levels": 3}``);
        a key of a table takes deeper keys (``{"network.options.width": 8}``, see :func:`set_dotted`).
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
        set_dotted(raw, dotted, value)
    unknown = [name for name in raw if name not in SCHEMA]
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed sections: {', '.join(SCHEMA)}")
    values = {name: validate_section(name, raw.get(name, {})) for name in SCHEMA}
    check_pairs(values)
    return Config(**{name: Section(name, table) for name, table in values.items()})


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``SECTION.KEY`` of the raw tables ``raw`` to ``value`` in place.

    A key whose value is a table (``network.options``) takes deeper dotted
    keys: ``network.options.width`` sets ``width`` in it. Tables on the way are
    copied, never changed, so that ``raw`` may share them with a :class:`Config`.
    """
    section, _, key = dotted.partition(".")
    if not key:
        raise ConfigError(f"override keys are dotted, SECTION.KEY with SECTION one of {', '.join(SCHEMA)}; got {dotted!r}")
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    head, _, rest = key.partition(".")
    if not rest or not isinstance(SCHEMA.get(section, {}).get(head, (None,))[0], dict):
        table[key] = value  # an unknown dotted key stays unknown: validate_section names it
        return
    path = [head, *rest.split(".")]
    for depth, name in enumerate(path[:-1]):
        inner = table.get(name, {})
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{section}.{'.'.join(path[: depth + 1])} is not a table, so {dotted} cannot be set")
        table[name] = table = dict(inner)
    table[path[-1]] = value


def get_dotted(config: Config, dotted: str) -> Any:
    """The value of the dotted key ``SECTION.KEY`` of ``config``, or deeper into a table (``network.options.width``).

    Raises
    ------
    ConfigError
        No such key.
    """
    section, _, key = dotted.partition(".")
    if section not in SCHEMA or not key:
        raise ConfigError(f"no config key {dotted!r}: keys are dotted, SECTION.KEY with SECTION one of {', '.join(SCHEMA)}")
    value: Any = getattr(config, section).as_dict()
    for depth, name in enumerate(key.split(".")):
        if not isinstance(value, Mapping) or name not in value:
            raise ConfigError(f"no config key {dotted!r} ({section}.{'.'.join(key.split('.')[: depth + 1])} is not set)")
        value = value[name]
    return value


def check_pairs(values: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise :class:`ConfigError` for keys that need or exclude each other: ``network.module`` and ``options`` go
    with ``network.kind = "module"`` (which needs ``module``), ``data.path`` with ``data.name = "npz"`` (which needs it);
    ``network.head_pool`` must fit the built-in network (:func:`check_head_pool`; a user network does not read it).

    Parameters
    ----------
    values
        The validated tables (those of :data:`SCHEMA` it has; a missing one is not checked).
    """
    for section, key, owner, wanted, example in (
        ("network", "module", "kind", "module", '"path/to/file.py:build"'),
        ("data", "path", "name", "npz", '"data.npz"'),
    ):
        table = values.get(section)
        if table is None:
            continue
        if table[owner] == wanted and table[key] == "":
            raise ConfigError(f"{section}.{owner} = {wanted!r} needs {section}.{key} (such as {section}.{key} = {example})")
        if table[owner] != wanted and table[key] != "":
            raise ConfigError(
                f"{section}.{key} is set ({table[key]!r}) but {section}.{owner} = {table[owner]!r}: {section}.{key} is for "
                f"{section}.{owner} = {wanted!r} only; remove it, or set {section}.{owner} = {wanted!r}"
            )
    network = values.get("network")
    if network is not None and network["kind"] != "module" and network["options"]:
        raise ConfigError(
            f"network.options is set but network.kind = {network['kind']!r}: [network.options] is for "
            "network.kind = 'module' only (passed to its build(options))"
        )
    check_network_stages(network)
    if network is not None and network["kind"] != "module":  # a user network does not read network.head_pool
        try:
            check_head_pool(network["kind"], network["head_pool"], network["image_size"], len(network["depths"]) or 1)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    check_train_pairs(values.get("train"))


def check_network_stages(network: Mapping[str, Any] | None) -> None:
    """Raise :class:`ConfigError` unless ``network.depths`` and ``network.widths`` are both empty (one stage) or both
    have one entry per stage, for ``network.kind = "dense"`` or ``"conv"``."""
    if network is None or not (network["depths"] or network["widths"]):
        return
    depths, widths = network["depths"], network["widths"]
    if network["kind"] == "module":
        raise ConfigError(
            "network.depths and network.widths are for network.kind = 'dense' or 'conv'; with network.kind = 'module', "
            "build(options) returns the stages"
        )
    if len(depths) != len(widths):
        raise ConfigError(
            f"network.depths and network.widths must have one entry per stage each; got {len(depths)} depths {depths} "
            f"and {len(widths)} widths {widths}"
        )


def final_side(image_size: int, stages: int = 1) -> int:
    """The side of the final state of a built-in conv network on ``image_size x image_size`` images.

    The ``stages - 1`` transitions of a network of stages (``network.depths``)
    are stride-2 convolutions with padding 1: each takes a side ``s`` to ``ceil(s / 2)``.
    """
    side = image_size
    for _ in range(stages - 1):
        side = -(-side // 2)
    return side


def check_head_pool(kind: str, head_pool: Any, image_size: int, stages: int = 1) -> int:
    """Return ``network.head_pool`` after checking it against the built-in network it pools for.

    Parameters
    ----------
    kind
        ``network.kind``: ``"dense"`` takes only 1, ``"conv"`` 1 up to the final state's side.
    head_pool
        The value to check: the classifier reads the final state average-pooled to ``head_pool x head_pool``.
    image_size
        ``network.image_size``.
    stages
        The number of stages (``len(network.depths)``, 1 for one stage): each transition halves the side, rounding up.

    Raises
    ------
    ValueError
        Not an integer >= 1 (``TypeError`` for a non-integer), not 1 for a dense network, or
        larger than the side of a conv network's final state; the message names ``network.head_pool``
        and the allowed values.
    """
    head_pool = check_int("network.head_pool", head_pool, minimum=1)
    if kind == "dense" and head_pool != 1:
        raise ValueError(
            f"network.head_pool = {head_pool} but network.kind = 'dense': network.head_pool applies to conv networks only "
            "(it pools the final state's image); a dense network takes network.head_pool = 1"
        )
    if kind == "conv":
        side = final_side(image_size, stages)
        if head_pool > side:
            where = f"network.image_size = {image_size}" + (
                f", halved (rounding up) by the {stages - 1} stride-2 transitions of network.depths" if stages > 1 else ""
            )
            raise ValueError(
                f"network.head_pool must be an integer in [1, {side}] (at most the side {side} of the final state: {where}); "
                f"got {head_pool}"
            )
    return head_pool


def stage_depths(network: Any) -> list[int]:
    """The number of layers of every stage of a built-in ``[network]``: ``network.depths``, or ``[network.depth]``."""
    values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
    return list(values.get("depths") or [values["depth"]])


def check_train_pairs(train: Mapping[str, Any] | None) -> None:
    """Raise :class:`ConfigError` for ``train.fwd_iters`` or ``train.bwd_iters = "auto"`` with a strategy other than ``one_shot``."""
    if train is None or train["strategy"] == "one_shot":
        return
    for key in ("fwd_iters", "bwd_iters"):
        if train[key] == AUTO_ITERS:
            raise ConfigError(
                f'train.{key} = "{AUTO_ITERS}" chooses the iterations of one-shot steps: it needs train.strategy = "one_shot"; '
                f"got train.strategy = {train['strategy']!r}. Allowed: train.{key} = an integer >= 1 with this strategy, "
                'or train.strategy = "one_shot"'
            )


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
