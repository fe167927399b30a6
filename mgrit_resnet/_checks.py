"""Argument checks shared by every layer.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong type) with a
message that names the parameter, the value received and the allowed values, so
that every rank, given the same input, raises the same message.
"""

from __future__ import annotations

import cmath
import math
import numbers
import os
from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_range_text(minimum, maximum)}; got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}; got {value!r}")
    return value


def check_float(name: str, value: Any, minimum: float | None = None, allow_inf: bool = False) -> float:
    """Return ``value`` as a ``float`` after checking its type, that it is finite, and its lower bound.

    NaN is always refused, infinity unless ``allow_inf`` (for the few
    parameters where it has a meaning, such as ``train.tau = inf``): no other
    real-number parameter (a step size, a tolerance, a learning rate, a weight)
    means anything for them, and they would run on silently into non-finite results.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{_range_text(minimum, None)}; got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        kind = "real number or inf (not NaN)" if allow_inf else "finite real number"
        raise ValueError(f"{name} must be a {kind}{_range_text(minimum, None)}; got {value!r}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be a real number{_range_text(minimum, None)}; got {value!r}")
    return value


def check_finite(name: str, value: Any) -> complex | float:
    """Return the real or complex number ``value`` if its real and imaginary parts are finite.

    Raises
    ------
    ValueError
        For NaN or infinity in either part; the message names ``name``.
    """
    if not cmath.isfinite(value):
        raise ValueError(f"{name} must be a finite number (real, or complex with finite parts); got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def per_level(name: str, value: Any, n: int) -> list:
    """Expand a scalar or a list into one entry per level for ``n`` levels.

    A list shorter than ``n`` is an error; a longer one is cut, so that one
    list can serve hierarchies that stop coarsening early.
    """
    if isinstance(value, (list, tuple)):
        if len(value) < n:
            raise ValueError(f"{name} must be a single value or a list of at least {n} entries (one per level); got {value!r}")
        return list(value[:n])
    return [value] * n


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" between {minimum} and {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``; ``None`` when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ranks_on_this_node() -> int:
    """How many ranks of this job share this machine's memory, as the MPI launcher tells them (1 when it does not).

    Read from ``MPI_LOCALNRANKS`` (MPICH and Intel MPI) or ``OMPI_COMM_WORLD_LOCAL_SIZE``
    (Open MPI): the same on every rank of a node, with no message sent.
    """
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        try:
            count = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if count >= 1:
            return count
    return 1


def check_memory(needed: float, what: str, limit: int | None = None, sharing: int | None = None) -> None:
    """Raise ``ValueError`` when ``needed`` bytes per rank (an estimate, named by ``what``) exceed the memory available.

    ``limit`` defaults to :func:`available_memory`; unknown memory checks nothing.
    ``sharing`` ranks (default :func:`ranks_on_this_node`) each need ``needed`` bytes of that memory.
    """
    limit = available_memory() if limit is None else limit
    sharing = ranks_on_this_node() if sharing is None else sharing
    if limit is not None and needed * sharing > limit:
        shared = f" for its {sharing} ranks ({limit / sharing / 2**30:.3g} GiB each)" if sharing > 1 else ""
        raise ValueError(
            f"{what} needs about {needed / 2**30:.3g} GiB per rank; this machine has {limit / 2**30:.3g} GiB available{shared}"
        )
