"""A backend that counts the calls made on it: what a solve or a training step communicates, as data."""

from __future__ import annotations

import collections
from typing import Any

from .base import Backend, Request

#: Calls that involve every rank.
COLLECTIVES = ("allreduce_sum", "allreduce_buffer", "bcast_buffer", "allgather", "gather", "allgather_buffer")
#: Collectives that pickle Python objects (the others move buffers).
OBJECT_COLLECTIVES = ("allgather", "gather")


class CountingBackend:
    """Wraps a backend, passes every call on and counts it by method name in :attr:`calls`.

    Parameters
    ----------
    inner
        The backend whose calls are counted (any :class:`~mgrit_resnet.comm.Backend`).
    """

    def __init__(self, inner: Backend) -> None:
        self.inner, self.rank, self.size = inner, inner.rank, inner.size
        self.calls: collections.Counter[str] = collections.Counter()

    @property
    def bytes_sent(self) -> int:
        """The wrapped backend's bytes sent."""
        return self.inner.bytes_sent

    def _pass_on(self, name: str, *args: Any) -> Any:
        self.calls[name] += 1
        return getattr(self.inner, name)(*args)

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        """Counted :meth:`~mgrit_resnet.comm.Backend.isend`."""
        return self._pass_on("isend", buffer, dest, tag)

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        """Counted :meth:`~mgrit_resnet.comm.Backend.irecv`."""
        return self._pass_on("irecv", buffer, source, tag)

    def allreduce_sum(self, value: float) -> float:
        """Counted :meth:`~mgrit_resnet.comm.Backend.allreduce_sum`."""
        return self._pass_on("allreduce_sum", value)

    def allreduce_buffer(self, buffer: Any) -> None:
        """Counted :meth:`~mgrit_resnet.comm.Backend.allreduce_buffer`."""
        return self._pass_on("allreduce_buffer", buffer)

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        """Counted :meth:`~mgrit_resnet.comm.Backend.bcast_buffer`."""
        return self._pass_on("bcast_buffer", buffer, root)

    def allgather(self, value: Any) -> list:
        """Counted :meth:`~mgrit_resnet.comm.Backend.allgather`."""
        return self._pass_on("allgather", value)

    def gather(self, value: Any) -> list | None:
        """Counted :meth:`~mgrit_resnet.comm.Backend.gather`."""
        return self._pass_on("gather", value)

    def allgather_buffer(self, buffer: Any) -> Any:
        """Counted :meth:`~mgrit_resnet.comm.Backend.allgather_buffer`."""
        return self._pass_on("allgather_buffer", buffer)

    def collectives(self) -> dict[str, int]:
        """The collective calls so far: ``object`` (pickled), ``buffer`` and ``total``."""
        objects = sum(self.calls[name] for name in OBJECT_COLLECTIVES)
        total = sum(self.calls[name] for name in COLLECTIVES)
        return {"object": objects, "buffer": total - objects, "total": total}
