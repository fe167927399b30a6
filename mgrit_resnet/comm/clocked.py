"""A virtual clock: the wall time a run would take with one core per rank.

Each rank keeps a clock. Between communication calls it advances by the work
the rank did: the CPU time of its own thread (so it stays right when ranks
share cores), or, in a simulated run, the cost charged for each step. Every
message carries its sender's clock; completing a receive sets the receiver's
clock to ``max(own, sender's + alpha + beta * bytes)``. Collectives end at the
latest clock of all ranks plus ``ceil(log2 P) * (alpha + beta * bytes)``, the
cost of a binomial tree or recursive doubling. CPU time spent inside
communication calls (an MPI library polling while it waits) is not work and
is not counted. The largest final clock is the run's wall time with one core
per rank and the given network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _arrays
from .base import Backend, Request

# Clock stamps travel as separate messages with this offset on the tag; MPI
# guarantees tags up to 32767, and the solver's and the network's tags are far below.
STAMP_TAG_OFFSET = 16384
_NAP_SECONDS = 5e-5


class VirtualClock:
    """One rank's virtual time, in seconds.

    Parameters
    ----------
    alpha
        Latency of one message, in seconds.
    beta
        Transfer time per byte, in seconds (1 / bandwidth).
    measure_cpu
        ``True``: work advances the clock by this thread's CPU time
        (:func:`time.thread_time`). ``False``: only :meth:`charge` advances
        it (simulated runs with given step costs).
    """

    def __init__(self, alpha: float = 0.0, beta: float = 0.0, measure_cpu: bool = True) -> None:
        if not (alpha >= 0 and beta >= 0):
            raise ValueError(f"alpha and beta must be >= 0 seconds (per message, per byte); got {alpha!r}, {beta!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.measure_cpu = measure_cpu
        self.time = 0.0
        self._mark = time.thread_time()

    def now(self) -> float:
        """Bring the clock up to date with the work done since the last call and return it."""
        if self.measure_cpu:
            mark = time.thread_time()
            self.time += mark - self._mark
            self._mark = mark
        return self.time

    def resume(self) -> None:
        """Start counting work again (after a communication call, whose CPU time is not work)."""
        self._mark = time.thread_time()

    def charge(self, seconds: float) -> None:
        """Advance by ``seconds`` of work (simulated runs)."""
        self.time += seconds

    def message(self, nbytes: int) -> float:
        """Time one point-to-point message of ``nbytes`` takes."""
        return self.alpha + self.beta * nbytes

    def collective(self, size: int, nbytes: int) -> float:
        """Time of a collective over ``size`` ranks moving ``nbytes`` per rank."""
        return math.ceil(math.log2(size)) * self.message(nbytes) if size > 1 else 0.0


def _wait(clock: VirtualClock, request: Request) -> None:
    """Wait for ``request``; a measuring clock waits asleep.

    An MPI library spins while it waits, and on a machine with fewer cores
    than ranks the spinning ranks slow down the working ones: sleeping keeps
    the measured CPU time of the others honest.
    """
    if not clock.measure_cpu or not hasattr(request, "Test"):
        request.Wait()
        return
    while not request.Test():
        time.sleep(_NAP_SECONDS)


class _Send:
    def __init__(self, clock: VirtualClock, requests: list[Request], keep: Any) -> None:
        self._clock = clock
        self._requests = requests
        self._keep = keep  # the stamp buffer lives until the send completes

    def Wait(self) -> None:
        self._clock.now()
        for request in self._requests:
            _wait(self._clock, request)
        self._clock.resume()


class _Recv:
    def __init__(self, clock: VirtualClock, data: Request, stamp: Request, stamp_buffer: np.ndarray, nbytes: int) -> None:
        self._clock = clock
        self._data = data
        self._stamp = stamp
        self._stamp_buffer = stamp_buffer
        self._nbytes = nbytes

    def Wait(self) -> None:
        clock = self._clock
        clock.now()
        _wait(clock, self._data)
        _wait(clock, self._stamp)
        clock.time = max(clock.time, float(self._stamp_buffer[0]) + clock.message(self._nbytes))
        clock.resume()


class ClockedBackend:
    """A backend (see :mod:`mgrit_resnet.comm`) that keeps a :class:`VirtualClock`.

    Wraps any backend, so a solver or network runs on it unchanged: pass it
    as ``comm``. Every rank must wrap its backend, collectively.

    Parameters
    ----------
    inner
        The backend that moves the data.
    clock
        This rank's clock.
    message_bytes
        Optional ``message_bytes(buffer, tag)``: the size a message counts
        with in ``beta * bytes`` (a simulation may move small stand-ins for
        large states). By default the buffer's own size.
    """

    def __init__(self, inner: Backend, clock: VirtualClock, message_bytes: Callable[[Any, int], int] | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.rank = inner.rank
        self.size = inner.size
        self.bytes_sent = 0
        self._message_bytes = message_bytes or (lambda buffer, tag: _arrays.nbytes(buffer))

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        stamp = np.array([self.clock.now()])
        nbytes = self._message_bytes(buffer, tag)
        self.bytes_sent += nbytes
        requests = [self.inner.isend(buffer, dest, tag), self.inner.isend(stamp, dest, tag + STAMP_TAG_OFFSET)]
        self.clock.resume()
        return _Send(self.clock, requests, stamp)

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        self.clock.now()
        stamp = np.empty(1)
        data = self.inner.irecv(buffer, source, tag)
        stamp_request = self.inner.irecv(stamp, source, tag + STAMP_TAG_OFFSET)
        self.clock.resume()
        return _Recv(self.clock, data, stamp_request, stamp, self._message_bytes(buffer, tag))

    def _synchronise(self, nbytes: int, operation: Callable[[], Any], root: int | None = None) -> Any:
        """Run a collective ``operation``; the clock ends at the latest (or root's) clock plus its cost."""
        clock = self.clock
        clock.now()
        result = operation()
        clocks = self.inner.allgather_buffer(np.array([clock.time]))[:, 0]
        start = float(clocks.max()) if root is None else max(clock.time, float(clocks[root]))
        clock.time = start + clock.collective(self.size, nbytes)
        clock.resume()
        return result

    def allreduce_sum(self, value: float) -> float:
        return self._synchronise(8, lambda: self.inner.allreduce_sum(value))

    def allgather(self, value: Any) -> list:
        return self._synchronise(8, lambda: self.inner.allgather(value))

    def gather(self, value: Any) -> list | None:
        return self._synchronise(8, lambda: self.inner.gather(value))

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        nbytes = self._message_bytes(buffer, -1)
        if self.rank == root:
            self.bytes_sent += nbytes * (self.size - 1)
        self._synchronise(nbytes, lambda: self.inner.bcast_buffer(buffer, root), root=root)

    def allreduce_buffer(self, buffer: Any) -> None:
        nbytes = self._message_bytes(buffer, -1)
        self.bytes_sent += nbytes
        self._synchronise(nbytes, lambda: self.inner.allreduce_buffer(buffer))

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        # Bookkeeping (solve statistics, flags), never a stand-in for a state: charged at its own size.
        return self._synchronise(_arrays.nbytes(buffer), lambda: self.inner.allgather_buffer(buffer))


def virtual_time(backend: ClockedBackend) -> float:
    """Collective: the largest clock of all ranks, the run's virtual wall time."""
    backend.clock.now()
    return float(backend.inner.allgather_buffer(np.array([backend.clock.time])).max())


def measure_network(backend: Backend, sizes: tuple[int, ...] = (8, 1 << 20), repeats: int = 200) -> tuple[float, float] | None:
    """Collective: ``(alpha, beta)`` from a ping-pong between ranks 0 and 1 (``None`` on one rank).

    ``alpha`` is half the round trip of the smallest message; ``beta`` the
    extra half round trip per byte of the largest. Every rank gets the pair.
    """
    if backend.size < 2:
        return None
    times = []
    for nbytes in sizes:
        buffer = np.zeros(max(nbytes // 8, 1))
        best = math.inf
        for _ in range(repeats if nbytes <= 4096 else max(repeats // 20, 5)):
            start = time.perf_counter()
            if backend.rank == 0:
                backend.isend(buffer, 1, 0).Wait()
                backend.irecv(buffer, 1, 0).Wait()
            elif backend.rank == 1:
                backend.irecv(buffer, 0, 0).Wait()
                backend.isend(buffer, 0, 0).Wait()
            best = min(best, (time.perf_counter() - start) / 2)
        times.append(best)
    alpha = times[0]
    beta = max((times[-1] - times[0]) / (sizes[-1] - sizes[0]), 0.0)
    pair = np.array([alpha, beta])
    backend.bcast_buffer(pair, 0)
    return float(pair[0]), float(pair[1])
