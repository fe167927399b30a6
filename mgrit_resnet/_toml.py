"""A config written back as TOML: values, keys, and the whole resolved config with notes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` written as TOML.

    A complex number is written as a string (as ``--set problem.z=-1+2j`` reads
    it), a dict as an inline table, and a callable (a ``network.module`` given
    from Python) as its ``"module:qualname"`` text.
    """
    if callable(getattr(value, "item", None)):  # a NumPy or torch scalar: its Python value
        value = value.item()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if callable(value):
        return json.dumps(callable_name(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, complex):
        return json.dumps(str(value).strip("()"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def is_toml(value: Any) -> bool:
    """Whether :func:`toml_value` writes ``value`` as TOML that reads back as it (no ``None``, objects, or callables)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_toml(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(is_toml(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def callable_name(value: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function (or other callable) given from Python."""
    module = getattr(value, "__module__", None) or type(value).__module__
    qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}:{qualname}"


def config_text(config: Any, key_notes: Mapping[str, str] | None = None, section_notes: Mapping[str, str] | None = None) -> str:
    """``config`` as TOML text that :func:`load_config` reads back to the same config.

    A table value (``network.options``) becomes its own table (``[network.options]``);
    what TOML cannot hold (a ``network.module`` given from Python as a function,
    an option that is a Python object) is written as text, or as a comment, saying so.

    Parameters
    ----------
    config
        A validated config.
    key_notes
        Dotted key -> a comment written at the end of the key's line (e.g. where its value came from).
    section_notes
        Section -> a comment written under the section's header.
    """
    key_notes, section_notes = key_notes or {}, section_notes or {}
    lines = []
    for section, values in config.as_dict().items():
        lines.append(f"[{section}]")
        if section in section_notes:
            lines.append(f"# {section_notes[section]}")
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            note = key_notes.get(f"{section}.{key}")
            if callable(value):
                text = f"{key} = {toml_value(callable_name(value))}  # given from Python as a function; this names it"
            else:
                text = f"{key} = {toml_value(value)}"
            lines.append(text if note is None else f"{text:<40}  # {note}")
        for key, table in ((k, v) for k, v in values.items() if isinstance(v, dict)):
            lines += ["", f"[{section}.{toml_key(key)}]"]
            for name, value in table.items():
                if is_toml(value):
                    lines.append(f"{toml_key(name)} = {toml_value(value)}")
                else:
                    lines.append(f"# {toml_key(name)} = {value!r:.200}  (given from Python; not a TOML value)")
        lines.append("")
    return "\n".join(lines)
