"""The mpi4py backend and the MPI helpers: the only module that imports mpi4py."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import numpy as np

from .. import _arrays
from .base import Backend, Request, SerialBackend


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

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        """Every rank's ``buffer`` stacked in rank order (one ``Allgather``, no pickling; not counted in ``bytes_sent``)."""
        send = np.ascontiguousarray(buffer)
        recv = np.empty((self.size, *send.shape), dtype=send.dtype)
        self.comm.Allgather(send, recv)
        return recv


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
    the one that did. The hook writes one line ``rank r: ExcType: message``
    and flushes it first (so that the reason survives the abort, whatever
    happens to the rest of the output), then the traceback, then calls
    ``MPI_Abort``.

    Calling it again is harmless: the hook is installed once per process. A
    hook installed before (by the user, say) is kept and called in place of the
    traceback, before the abort: its output stays, and no rank hangs.
    Nothing is installed for ``None`` or one rank.
    """
    global _ABORT_HOOK
    if comm is None or comm.Get_size() == 1 or (_ABORT_HOOK is not None and sys.excepthook is _ABORT_HOOK):
        return
    previous = None if sys.excepthook is sys.__excepthook__ else sys.excepthook

    def hook(kind, value, tb):  # pragma: no cover - runs at interpreter exit
        rank, size = comm.Get_rank(), comm.Get_size()
        message = " ".join(str(value).split("\n"))
        try:
            sys.stderr.write(f"rank {rank}: {kind.__name__}: {message}\n" if message else f"rank {rank}: {kind.__name__}\n")
            sys.stderr.flush()
            if previous is not None:
                previous(kind, value, tb)
            else:
                traceback.print_exception(kind, value, tb)
            sys.stderr.write(f"rank {rank}: aborting all {size} ranks\n")
            sys.stderr.flush()
        finally:
            comm.Abort(1)

    _ABORT_HOOK = hook
    sys.excepthook = hook


_ABORT_HOOK: Any = None


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
    return MPIBackend(comm)
