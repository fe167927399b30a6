"""Communication backends: the only module that imports mpi4py.

The solver talks to a :class:`Backend`; it never sees a communicator. Boundary
states travel through :class:`Channel` objects: one persistent send buffer and
one receive buffer per channel, reused across iterations, filled by copying and
sent with non-blocking, buffer-based (never pickled) point-to-point calls.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Protocol

import numpy as np

from . import _arrays


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


class MPIBackend:
    """An mpi4py communicator behind the :class:`Backend` protocol."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.bytes_sent = 0

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        self.bytes_sent += _arrays.nbytes(buffer)
        return self.comm.Isend(_arrays.mpi_buffer(buffer), dest=dest, tag=tag)

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        return self.comm.Irecv(_arrays.mpi_buffer(buffer), source=source, tag=tag)

    def allreduce_sum(self, value: float) -> float:
        send = np.array([value], dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=self._mpi.SUM)
        return float(recv[0])

    def allgather(self, value: Any) -> list:
        return self.comm.allgather(value)

    def gather(self, value: Any) -> list | None:
        return self.comm.gather(value, root=0)

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        """Overwrite ``buffer`` on every rank with root's (a CPU tensor or array, in place)."""
        if self.rank == root:
            self.bytes_sent += _arrays.nbytes(buffer) * (self.size - 1)
        self.comm.Bcast(_arrays.mpi_buffer(buffer), root=root)

    def allreduce_buffer(self, buffer: Any) -> None:
        """Sum ``buffer`` over all ranks, in place (a CPU tensor or array)."""
        self.bytes_sent += _arrays.nbytes(buffer)
        self.comm.Allreduce(self._mpi.IN_PLACE, _arrays.mpi_buffer(buffer), op=self._mpi.SUM)


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


def backend_for(comm: Any | None) -> Backend:
    """Wrap ``comm`` (an mpi4py communicator, a backend, or ``None``).

    Anything with the backend's ``isend`` and ``allreduce_sum`` is taken as a
    backend as it is (e.g. a :class:`~mgrit_resnet.vclock.ClockedBackend`).
    """
    if comm is None:
        return SerialBackend()
    if hasattr(comm, "isend") and hasattr(comm, "allreduce_sum"):
        return comm
    if comm.Get_size() == 1:
        return SerialBackend()
    return MPIBackend(comm)


def world() -> Any | None:
    """``MPI.COMM_WORLD`` when mpi4py is importable and more than one rank runs, else ``None``."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def split(comm: Any | None, color: int, key: int) -> Any | None:
    """``comm.Split(color, key)``; ``None`` stays ``None`` (one rank)."""
    return None if comm is None else comm.Split(color, key)


def local_rank(backend: Backend) -> int:
    """This rank's index among the ranks on the same node (0 for one rank)."""
    while not isinstance(backend, MPIBackend) and hasattr(backend, "inner"):
        backend = backend.inner
    if not isinstance(backend, MPIBackend):
        return 0
    from mpi4py import MPI

    node = backend.comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def mpi_versions() -> dict[str, str]:
    """Versions of mpi4py and of the MPI library it runs on."""
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError:
        return {"mpi4py": "not installed"}
    return {"mpi4py": mpi4py.__version__, "MPI library": MPI.Get_library_version().strip().splitlines()[0]}


def install_abort_on_error(comm: Any | None) -> None:
    """Make an uncaught exception on any rank end every rank.

    Without this, the ranks that did not fail wait forever for a message from
    the one that did. The hook prints the traceback and calls ``MPI_Abort``.
    """
    if comm is None or comm.Get_size() == 1:
        return

    def hook(kind, value, tb):  # pragma: no cover - runs at interpreter exit
        traceback.print_exception(kind, value, tb)
        sys.stderr.write(f"rank {comm.Get_rank()}: aborting all {comm.Get_size()} ranks\n")
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


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
