"""What the solver needs from a communicator: the protocols, one rank, a reversed view, channels.

The solver talks to a :class:`Backend`; it never sees a communicator. Boundary
states travel through :class:`Channel` objects: one persistent send buffer and
one receive buffer per channel, reused across iterations, filled by copying and
sent with non-blocking, buffer-based (never pickled) point-to-point calls.
"""

from __future__ import annotations

from typing import Any, Protocol

from .. import _arrays


class Request(Protocol):
    def Wait(self) -> None: ...


class Backend(Protocol):
    """What the solver needs from a communicator."""

    rank: int
    size: int
    bytes_sent: int

    def isend(self, buffer: Any, dest: int, tag: int) -> Request: ...

    def irecv(self, buffer: Any, source: int, tag: int) -> Request: ...

    def allreduce_sum(self, value: float) -> float: ...

    def allgather(self, value: Any) -> list: ...

    def gather(self, value: Any) -> list | None: ...

    def bcast_buffer(self, buffer: Any, root: int) -> None: ...

    def allreduce_buffer(self, buffer: Any) -> None: ...


class SerialBackend:
    """One rank, no messages."""

    rank = 0
    size = 1

    def __init__(self) -> None:
        self.bytes_sent = 0

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        raise RuntimeError("the serial backend has no neighbour to send to")

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        raise RuntimeError("the serial backend has no neighbour to receive from")

    def allreduce_sum(self, value: float) -> float:
        return value

    def allgather(self, value: Any) -> list:
        return [value]

    def gather(self, value: Any) -> list | None:
        return [value]

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        pass

    def allreduce_buffer(self, buffer: Any) -> None:
        pass


class ReversedBackend:
    """A backend with the rank order turned around: rank ``r`` appears as ``P - 1 - r``.

    Lets the solver run backwards in time (the adjoint of a network) with the
    same code: "left" and "right" swap, and rank 0 of the reversed view is the
    last rank.
    """

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.size = backend.size
        self.rank = backend.size - 1 - backend.rank

    @property
    def bytes_sent(self) -> int:
        return self.inner.bytes_sent

    def _real(self, rank: int) -> int:
        return self.size - 1 - rank

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        return self.inner.isend(buffer, self._real(dest), tag)

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        return self.inner.irecv(buffer, self._real(source), tag)

    def allreduce_sum(self, value: float) -> float:
        return self.inner.allreduce_sum(value)

    def allgather(self, value: Any) -> list:
        return self.inner.allgather(value)[::-1]

    def gather(self, value: Any) -> list | None:
        parts = self.inner.gather(value)
        return None if parts is None else parts[::-1]

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        self.inner.bcast_buffer(buffer, self._real(root))

    def allreduce_buffer(self, buffer: Any) -> None:
        self.inner.allreduce_buffer(buffer)


class Channel:
    """A one-way boundary link: send to the right neighbour, receive from the left.

    Parameters
    ----------
    backend
        The communicator backend.
    left, right
        Neighbour ranks, or ``None`` at the ends.
    tag
        Message tag, unique per (level, purpose).
    template
        A state with the shape and dtype of the messages.
    """

    def __init__(self, backend: Backend, left: int | None, right: int | None, tag: int, template: Any) -> None:
        self.backend = backend
        self.left = left
        self.right = right
        self.tag = tag
        self._recv_buffer = _arrays.empty_like(template) if left is not None else None
        self._send_buffer = _arrays.empty_like(template) if right is not None else None
        # Device states travel through host copies (MPI here is not assumed to be CUDA-aware).
        self._staged = _arrays.on_device(template)
        self._recv_host = _arrays.host_empty_like(template) if self._staged and left is not None else None
        self._send_host = _arrays.host_empty_like(template) if self._staged and right is not None else None
        self._recv_request: Request | None = None
        self._send_request: Request | None = None

    def post_recv(self) -> None:
        """Start receiving the left neighbour's state (no-op at the left end)."""
        if self.left is not None:
            target = self._recv_host if self._staged else self._recv_buffer
            self._recv_request = self.backend.irecv(target, self.left, self.tag)

    def wait_recv(self) -> Any:
        """Finish the posted receive; the buffer is valid until the next :meth:`post_recv`."""
        if self._recv_request is None:
            raise RuntimeError("wait_recv called without a posted receive")
        self._recv_request.Wait()
        self._recv_request = None
        if self._staged:
            _arrays.copy_into(self._recv_buffer, self._recv_host)
        return self._recv_buffer

    def send(self, state: Any) -> None:
        """Copy ``state`` into the send buffer and start sending it (no-op at the right end)."""
        if self.right is None:
            return
        if self._send_request is not None:
            self._send_request.Wait()
        if self._staged:
            _arrays.copy_into(self._send_host, state)
            self._send_request = self.backend.isend(self._send_host, self.right, self.tag)
            return
        _arrays.copy_into(self._send_buffer, state)
        self._send_request = self.backend.isend(self._send_buffer, self.right, self.tag)

    def close(self) -> None:
        """Wait for an outstanding send."""
        if self._send_request is not None:
            self._send_request.Wait()
            self._send_request = None


def backend_for(comm: Any | None) -> Backend:
    """Wrap ``comm`` (an mpi4py communicator, a backend, or ``None``).

    Anything with the backend's ``isend`` and ``allreduce_sum`` is taken as a
    backend as it is (e.g. a :class:`~mgrit_resnet.comm.clocked.ClockedBackend`).
    """
    if comm is None:
        return SerialBackend()
    if hasattr(comm, "isend") and hasattr(comm, "allreduce_sum"):
        return comm
    if comm.Get_size() == 1:
        return SerialBackend()
    from .mpi import MPIBackend

    return MPIBackend(comm)
