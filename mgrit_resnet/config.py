"""TOML configuration with dotted ``--set`` overrides and validation.

Every key has a default (``../shared/INTERFACE.md`` lists them) and a check.
An unknown section or key, or a value of the wrong kind, is a
:class:`ConfigError` that names the dotted key and the allowed values.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import check_choice, check_float, check_int
from .mgrit import parse_relax


class ConfigError(ValueError):
    """A bad config file, key or value."""


def _integer(minimum: int) -> Callable[[str, Any], int]:
    return lambda name, value: check_int(name, value, minimum=minimum)


def _real(minimum: float | None = None, positive: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        value = check_float(name, value, minimum=minimum)
        if positive and value <= 0:
            raise ValueError(f"{name} must be a real number > 0; got {value!r}")
        return value

    return check


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    return lambda name, value: check_choice(name, value, allowed)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false; got {value!r}")
    return value


def _one_or_list(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def checked(name: str, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{name} must be a value or a non-empty list of values; got []")
            return [check(name, v) for v in value]
        return check(name, value)

    return checked


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


_PROBLEM_KINDS = ("dahlquist", "heat1d", "heat2d")
SCHEMA: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any]]]] = {
    "problem": {
        "kind": ("dahlquist", _choice(*_PROBLEM_KINDS)),
        "z": (-1.0, _complex),
        "scheme": ("backward_euler", _choice("forward_euler", "backward_euler", "trapezoid")),
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
        "cycle": ("V", _choice("V", "F")),
        "tol": (1e-9, _real(minimum=0.0)),
        "tol_kind": ("absolute", _choice("absolute", "relative")),
        "max_iter": (50, _integer(0)),
        "initial_guess": ("zero", _choice("zero", "initial_value", "sequential_coarse")),
        "skip_first_down": (False, _boolean),
        "relax_warm_start": (True, _boolean),
    },
    "network": {
        "kind": ("dense", _choice("dense", "conv")),
        "in_features": (2, _integer(1)),
        "in_channels": (1, _integer(1)),
        "image_size": (8, _integer(1)),
        "width": (8, _integer(1)),
        "depth": (64, _integer(1)),
        "t_final": (1.0, _real(positive=True)),
        "activation": ("tanh", _choice("tanh", "relu", "smooth_relu")),
        "n_classes": (5, _integer(2)),
        "dtype": ("float32", _choice("float32", "float64")),
        "device": ("cpu", _choice("cpu", "cuda")),
    },
    "data": {
        "name": ("peaks", _choice("peaks", "digits", "mnist5k", "synthetic")),
        "n_train": (5000, _integer(1)),
        "n_val": (1000, _integer(0)),
        "seed": (0, _integer(0)),
    },
    "train": {
        "strategy": ("one_shot", _choice("serial", "exact", "one_shot", "local", "trgl")),
        "optimizer": ("adam", _choice("sgd", "adam", "lbfgs")),
        "lr": (1e-2, _real(positive=True)),
        "batch_size": (50, _integer(1)),
        "epochs": (10, _integer(1)),
        "fwd_iters": (2, _integer(1)),
        "bwd_iters": (1, _integer(1)),
        "seed": (0, _integer(0)),
        "warm_start": (True, _boolean),
        "momentum": (0.9, _real(minimum=0.0)),
        "schedule": ("none", _choice("none", "step", "cosine")),
        "lr_step": (10, _integer(1)),
        "lr_gamma": (0.1, _real(positive=True)),
        "data_parallel": (1, _integer(1)),
        "lbfgs_iters": (10, _integer(1)),
        "blocks": (0, _integer(0)),
        "local_schedule": ("parallel", _choice("parallel", "sequential", "multilap")),
        "laps": (2, _integer(1)),
        "tau": (0.1, _one_or_list(_real(positive=True))),
    },
}


class Section:
    """One config table with attribute access (``cfg.mgrit.levels``)."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
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
        return {name: getattr(self, name).as_dict() for name in SCHEMA}


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
