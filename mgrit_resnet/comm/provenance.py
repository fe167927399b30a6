"""Provenance of an output: what made it (version, commit, config, ranks, libraries, time, host).

Every JSON output and ``summary.json`` carries :func:`provenance` under the key
``"provenance"``. torch, mpi4py and petsc4py are imported only when asked for,
so this module stays light. It lives in the comm layer, the one that may ask mpi4py.
"""

from __future__ import annotations

import datetime
import functools
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import callable_name, is_toml
from .mpi import mpi_versions

GIT_TIMEOUT = 2.0  # seconds: a slow or hung git must not hold up a run


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout that holds this package, or ``None`` (installed from a wheel, no git, or git too slow)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def plain_config(cfg: Any) -> dict[str, Any] | None:
    """``cfg`` (a :class:`~mgrit_resnet.Config` or its ``as_dict()``) as plain, JSON- and pickle-safe values.

    A callable (a ``network.module`` given from Python) becomes its ``"module:qualname"``
    text, a tuple a list, and any other value that TOML cannot hold its ``repr``.
    """
    if cfg is None:
        return None
    return _plain(cfg.as_dict() if hasattr(cfg, "as_dict") else cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):
        return callable_name(value)
    if value is None or is_toml(value):
        return value
    return repr(value)


def now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(cfg: Any = None, ranks: int = 1, started: str | None = None) -> dict[str, Any]:
    """What made an output, as a JSON object.

    Parameters
    ----------
    cfg
        The resolved config (a :class:`~mgrit_resnet.Config` or a dict), or ``None`` for a verb without one.
    ranks
        The number of MPI ranks of the run.
    started
        When the run started (:func:`now`); default: now.

    Returns
    -------
    dict
        ``version``, ``git_commit`` (``None`` outside a git checkout), ``config``, ``ranks``,
        ``threads`` (torch's), ``python``, ``torch``, ``mpi4py``, ``mpi_library``, ``petsc4py``
        (``None`` when not installed), ``started`` (ISO 8601, UTC) and ``host``.
    """
    # the package is loaded whenever this module is; importing it here would be an import circle
    version = getattr(sys.modules.get(__name__.split(".")[0]), "__version__", None)
    try:
        import torch

        torch_version, threads = torch.__version__, torch.get_num_threads()
    except ImportError:
        torch_version, threads = None, None
    mpi = mpi_versions()
    try:
        import petsc4py

        petsc = petsc4py.__version__
    except ImportError:
        petsc = None
    return {
        "version": version,
        "git_commit": git_commit(),
        "config": plain_config(cfg),
        "ranks": ranks,
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch_version,
        "mpi4py": None if mpi["mpi4py"] == "not installed" else mpi["mpi4py"],
        "mpi_library": mpi.get("MPI library"),
        "petsc4py": petsc,
        "started": started or now(),
        "host": socket.gethostname(),
    }
