"""A user network's parts from ``[network] kind = "module"``: load the builder ``network.module`` and call it.

``network.module`` names a function ``build(options) -> (make_block, opening, closing)``:
``"path/to/file.py:build"`` (a file, relative to the current directory),
``"package.module:build"`` (an importable module), or, from Python, the
function itself. ``build`` gets ``network.options`` as a dict; ``make_block(layer)``
returns the residual branch ``f_n`` of layer ``n`` (an ``nn.Module``), and
``opening`` and ``closing`` are modules (or ``None``) before the first and
after the last layer.

A network of stages (:class:`~mgrit_resnet.nn.StagedParallel`): ``build(options)``
returns a mapping instead, ``{"stages": [...], "transitions": [...], "opening": ..., "closing": ...}``:
``stages`` a list of :class:`~mgrit_resnet.nn.Stage` (or of mappings of its
fields: ``depth``, ``t_final``, and ``block`` or a built-in ``kind`` and
``width``), ``transitions`` one module between every two stages, ``opening``
and ``closing`` modules or ``None`` (both may be left out). ``network.depth``
and ``network.t_final`` are then not read: every stage has its own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import callable_name

Parts = tuple[Callable[[int], Any], Any, Any]
#: The keys of the mapping a builder of a network of stages returns.
STAGED_KEYS = ("stages", "transitions", "opening", "closing")


def network_parts(network: Any, seed: int = 0) -> Parts | dict[str, Any]:
    """``(make_block, opening, closing)`` of the user's network, or the mapping of a network of stages: ``build(network.options)``, checked.

    ``build`` runs under torch's CPU generator seeded with ``seed`` (and
    restored afterwards), so the opening and the closing it makes are the same
    at every call: the serial twin and every rank get the same ones.

    Parameters
    ----------
    network
        The config ``[network]`` section (or a mapping with its keys ``module``
        and ``options``).
    seed
        The seed of what ``build`` draws.

    Raises
    ------
    ValueError
        ``network.module`` is empty or malformed, its file does not exist, or it has no such attribute.
    ImportError
        Importing the module or executing the file failed (the message holds the original error).
    TypeError
        The attribute is not callable, or ``build`` did not return ``(callable, nn.Module or None, nn.Module or None)``
        or a mapping of stages.
    """
    values = network.as_dict() if hasattr(network, "as_dict") else dict(network)
    ref, options = values.get("module", ""), values.get("options") or {}
    build = load_builder(ref)
    import torch

    from .layers import rng_lock

    with rng_lock(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = build(dict(options))
    return check_parts(parts, describe(ref))


def describe(ref: Any) -> str:
    """``network.module = ...`` as messages name it."""
    return f"network.module = {callable_name(ref) if callable(ref) else ref!r}"


def load_builder(ref: Any) -> Callable[..., Any]:
    """The function that ``network.module`` names (see the module docstring); the callable itself when given one."""
    if callable(ref):
        return ref
    where = describe(ref)
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f'{where}: network.kind = \'module\' needs network.module = "path/to/file.py:build" or "package.module:build"')
    target, _, name = ref.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(Path(target), where)
    else:
        module = _import(target, where)
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise ValueError(f"{where}: {target} has no attribute {name!r} (it defines: {', '.join(defined) or 'no functions'})")
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"{where}: {name} is a {type(found).__name__}, not a function build(options)")
    return found


def check_parts(parts: Any, where: str) -> Parts | dict[str, Any]:
    """``parts`` if it is ``(make_block, opening, closing)``: a callable, and two ``nn.Module`` or ``None``;
    or, for a network of stages, a mapping with ``stages`` (and ``transitions``, ``opening``, ``closing``) as a dict.
    """
    from torch import nn

    if isinstance(parts, Mapping):
        unknown = sorted(set(parts) - set(STAGED_KEYS))
        if unknown or "stages" not in parts:
            raise TypeError(
                f"{where}: a network of stages is a mapping with the keys {', '.join(STAGED_KEYS)} ('stages' required); "
                f"got the keys {sorted(parts)}"
            )
        staged = {"transitions": [], "opening": None, "closing": None, **parts}
        for label in ("opening", "closing"):
            if staged[label] is not None and not isinstance(staged[label], nn.Module):
                raise TypeError(f"{where}: {label} must be a torch.nn.Module or None; got {type(staged[label]).__name__}")
        return staged
    if not isinstance(parts, (tuple, list)) or len(parts) != 3:
        got = f"a {type(parts).__name__} of length {len(parts)}" if isinstance(parts, (tuple, list)) else repr(parts)
        raise TypeError(
            f"{where}: build(options) must return (make_block, opening, closing); got {got} "
            "(or, for a network of stages, a mapping with the key 'stages')"
        )
    make_block, opening, closing = parts
    if not callable(make_block):
        raise TypeError(
            f"{where}: make_block, the first result of build(options), must be callable (layer -> nn.Module); got {make_block!r}"
        )
    for label, part in (("opening", opening), ("closing", closing)):
        if part is not None and not isinstance(part, nn.Module):
            raise TypeError(f"{where}: {label} must be a torch.nn.Module or None; got {type(part).__name__}")
    return make_block, opening, closing


def _load_file(path: Path, where: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{where}: no file {str(path)!r} (relative to the current directory {str(Path.cwd())!r})")
    resolved = path.resolve()
    # One stable module name per file, so that classes defined in it keep one __module__.
    name = f"_mgrit_resnet_user_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"{where}: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise ImportError(f"{where}: running {str(path)!r} failed: {type(error).__name__}: {error}") from error
    return module


def _import(target: str, where: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        if error.name is not None and (target == error.name or target.startswith(error.name + ".")):
            raise ImportError(
                f"{where}: no module named {error.name!r} (a file is named by its path ending in .py, as in 'path/to/file.py:build')"
            ) from error
        raise ImportError(f"{where}: importing {target!r} failed: {type(error).__name__}: {error}") from error
    except Exception as error:
        raise ImportError(f"{where}: importing {target!r} failed: {type(error).__name__}: {error}") from error
