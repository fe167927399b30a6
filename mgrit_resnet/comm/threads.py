"""P ranks as P threads of one process: runs SPMD code without ``mpiexec``.

:class:`ThreadWorld` gives every thread a backend with the
:class:`~mgrit_resnet.comm.Backend` protocol. Messages are copied into
per-receiver mailboxes; collectives meet at a barrier. It is meant for
schedules (which rank steps what, and sends what to whom, in which order), not
for speed: the performance model runs the solver's own code on it, with the
cost of every step charged to a :class:`~mgrit_resnet.comm.clocked.VirtualClock`.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _arrays

_POLL_SECONDS = 0.5


class SimulationError(RuntimeError):
    """A simulated rank failed, or the ranks wait for each other for ever."""


class _PeerFailed(SimulationError):
    """This rank stopped because another one failed (not the cause)."""


class _Done:
    def Wait(self) -> None:
        pass


class _Receive:
    def __init__(self, world: ThreadWorld, rank: int, source: int, tag: int, buffer: Any) -> None:
        self._world, self._rank, self._key, self._buffer = world, rank, (source, tag), buffer

    def Wait(self) -> None:
        world = self._world
        box, condition = world._boxes[self._rank], world._conditions[self._rank]
        with condition:
            waited = 0.0
            while not box[self._key]:
                if world._failed.is_set():
                    raise _PeerFailed("another simulated rank failed")
                if waited > world.deadlock_seconds:
                    source, tag = self._key
                    raise SimulationError(f"rank {self._rank} waited {waited:.0f} s for a message from rank {source} (tag {tag})")
                condition.wait(_POLL_SECONDS)
                waited += _POLL_SECONDS
            message = box[self._key].popleft()
        _arrays.copy_into(self._buffer, message)


class ThreadBackend:
    """One simulated rank of a :class:`ThreadWorld`."""

    def __init__(self, world: ThreadWorld, rank: int) -> None:
        self._world = world
        self.rank = rank
        self.size = world.size
        self.bytes_sent = 0

    def isend(self, buffer: Any, dest: int, tag: int) -> _Done:
        self.bytes_sent += _arrays.nbytes(buffer)
        world = self._world
        with world._conditions[dest]:
            world._boxes[dest][(self.rank, tag)].append(_arrays.copy(buffer))
            world._conditions[dest].notify()
        return _Done()

    def irecv(self, buffer: Any, source: int, tag: int) -> _Receive:
        return _Receive(self._world, self.rank, source, tag, buffer)

    def allgather(self, value: Any) -> list:
        world = self._world
        world._slots[self.rank] = value
        self._wait_all()
        values = list(world._slots)
        self._wait_all()  # nobody overwrites a slot before everyone has read it
        return values

    def _wait_all(self) -> None:
        try:
            self._world._barrier.wait()
        except threading.BrokenBarrierError:
            raise _PeerFailed("another simulated rank failed") from None

    def allreduce_sum(self, value: float) -> float:
        return sum(self.allgather(value))

    def gather(self, value: Any) -> list | None:
        values = self.allgather(value)
        return values if self.rank == 0 else None

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        if self.rank == root:
            self.bytes_sent += _arrays.nbytes(buffer) * (self.size - 1)
        values = self.allgather(_arrays.copy(buffer) if self.rank == root else None)
        _arrays.copy_into(buffer, values[root])

    def allreduce_buffer(self, buffer: Any) -> None:
        self.bytes_sent += _arrays.nbytes(buffer)
        values = self.allgather(_arrays.copy(buffer))
        total = values[0]
        for value in values[1:]:
            total = total + value
        _arrays.copy_into(buffer, total)

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        return np.stack(self.allgather(np.array(buffer, copy=True)))


class ThreadWorld:
    """``size`` simulated ranks.

    Parameters
    ----------
    size
        Number of ranks (threads).
    deadlock_seconds
        A receive that waits longer than this raises :class:`SimulationError`.
    """

    def __init__(self, size: int, deadlock_seconds: float = 120.0) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1; got {size!r}")
        self.size = size
        self.deadlock_seconds = deadlock_seconds
        self._boxes: list[defaultdict[tuple[int, int], deque]] = [defaultdict(deque) for _ in range(size)]
        self._conditions = [threading.Condition() for _ in range(size)]
        self._slots: list[Any] = [None] * size
        self._barrier = threading.Barrier(size)
        self._failed = threading.Event()

    def run(self, program: Callable[[ThreadBackend], Any]) -> list[Any]:
        """Run ``program(backend)`` on every rank at once; return the results in rank order.

        The first exception raised on any rank is raised here, after every
        rank has stopped.
        """
        results: list[Any] = [None] * self.size
        errors: list[BaseException | None] = [None] * self.size

        def target(rank: int) -> None:
            try:
                results[rank] = program(ThreadBackend(self, rank))
            except BaseException as error:  # reported to the caller below
                errors[rank] = error
                self._failed.set()
                self._barrier.abort()
                for condition in self._conditions:
                    with condition:
                        condition.notify_all()

        previous = threading.stack_size()
        threading.stack_size(1 << 20)  # thousands of ranks: keep each thread's reserved stack small
        try:
            threads = [threading.Thread(target=target, args=(rank,), daemon=True) for rank in range(self.size)]
            for thread in threads:
                thread.start()
        finally:
            threading.stack_size(previous)
        for thread in threads:
            thread.join()
        # The cause, not its echoes: another exception first, then a deadlock, then "another rank failed".
        failures = [e for e in errors if e is not None]
        for wanted in (lambda e: not isinstance(e, SimulationError), lambda e: not isinstance(e, _PeerFailed), lambda e: True):
            cause = next((e for e in failures if wanted(e)), None)
            if cause is not None:
                raise cause
        return results
