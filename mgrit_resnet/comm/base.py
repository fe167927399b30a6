"""What the solver needs from a communicator: the protocols, one rank, a reversed view, channels.

The solver talks to a :class:`Backend`; it never sees a communicator. Boundary
states travel through :class:`Channel` objects: one persistent send buffer and
one receive buffer per channel, reused across iterations, filled by copying and
sent with non-blocking, buffer-based (never pickled) point-to-point calls.
A solver keeps its channels from one solve to the next (see :meth:`Channel.finish`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .. import _arrays


class Request(Protocol):
    def Wait(self) -> None: ...


class Backend(Protocol):
    """What the solver needs from a communicator.

    Attributes
    ----------
    rank, size
        This rank and the number of ranks.
    bytes_sent
        Bytes of the states and buffers this rank has sent so far.
    """

    rank: int
    size: int
    bytes_sent: int

    def isend(self, buffer: Any, dest: int, tag: int) -> Request:
        """Start sending ``buffer`` (an array or CPU tensor, never a pickle) to rank ``dest``."""
        ...

    def irecv(self, buffer: Any, source: int, tag: int) -> Request:
        """Start receiving into ``buffer`` from rank ``source``."""
        ...

    def allreduce_sum(self, value: float) -> float:
        """The sum of ``value`` over all ranks, on every rank."""
        ...

    def allgather(self, value: Any) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        ...

    def gather(self, value: Any) -> list | None:
        """Every rank's ``value`` in rank order on rank 0; ``None`` elsewhere."""
        ...

    def bcast_buffer(self, buffer: Any, root: int) -> None:
        """Overwrite ``buffer`` on every rank with rank ``root``'s, in place."""
        ...

    def allreduce_buffer(self, buffer: Any) -> None:
        """Sum ``buffer`` over all ranks, in place."""
        ...

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        """Every rank's ``buffer`` (a small NumPy array), stacked in rank order: shape ``(size, *buffer.shape)``.

        A bookkeeping collective, like :meth:`allgather` and :meth:`allreduce_sum`:
        not counted in ``bytes_sent``.
        """
        ...


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

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        return np.array(buffer)[np.newaxis]


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

    def allgather_buffer(self, buffer: np.ndarray) -> np.ndarray:
        return self.inner.allgather_buffer(buffer)[::-1]


class Channel:
    """A one-way boundary link: send to the right neighbour, receive from the left.

    A solver keeps its channels from one solve to the next. Within a solve
    every posted receive is waited for before the next one is posted, and
    MPI keeps the order of the messages of one sender and tag, so messages of
    consecutive solves cannot mix; :meth:`finish` ends a solve.

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
        # Device states travel through host copies (MPI here is not assumed to be CUDA-aware).
        self._staged = _arrays.on_device(template)
        self._recv_buffer = _arrays.empty_like(template) if left is not None else None
        self._send_buffer = _arrays.empty_like(template) if right is not None and not self._staged else None
        self._recv_host = _arrays.host_empty_like(template) if self._staged and left is not None else None
        self._send_host = _arrays.host_empty_like(template) if self._staged and right is not None else None
        self._recv_request: Request | None = None
        self._send_request: Request | None = None
        self._handed_out = False

    def post_recv(self) -> None:
        """Start receiving the left neighbour's state (no-op at the left end)."""
        if self.left is None:
            return
        if self._recv_request is not None:
            raise RuntimeError(f"post_recv on channel {self.tag} while a receive is still posted on it")
        target = self._recv_host if self._staged else self._recv_buffer
        self._recv_request = self.backend.irecv(target, self.left, self.tag)

    def wait_recv(self) -> Any:
        """Finish the posted receive; the buffer is valid until the next :meth:`post_recv` of the same solve.

        After :meth:`finish` the buffer belongs to the caller: the next solve receives into a new one.
        """
        if self._recv_request is None:
            raise RuntimeError("wait_recv called without a posted receive")
        self._recv_request.Wait()
        self._recv_request = None
        if self._staged:
            _arrays.copy_into(self._recv_buffer, self._recv_host)
        self._handed_out = True
        return self._recv_buffer

    def send(self, state: Any) -> None:
        """Copy ``state`` into the send buffer and start sending it (no-op at the right end)."""
        if self.right is None:
            return
        if self._send_request is not None:
            self._send_request.Wait()
        buffer = self._send_host if self._staged else self._send_buffer
        _arrays.copy_into(buffer, state)
        self._send_request = self.backend.isend(buffer, self.right, self.tag)

    def finish(self) -> None:
        """End a solve: wait for the outstanding send and give up the receive buffer handed out.

        A problem may keep a state it stepped from (the network keeps each
        layer's input for the gradient), and a received state is stepped from
        as it is: so the buffer :meth:`wait_recv` returned is left to whoever
        holds it, and this channel receives into a new one from now on. The
        send buffer and the pinned host buffers of device states are kept.
        """
        if self._recv_request is not None:
            raise RuntimeError(f"a solve ended with a receive still posted on channel {self.tag}")
        if self._send_request is not None:
            self._send_request.Wait()
            self._send_request = None
        if self._handed_out:
            self._recv_buffer = _arrays.empty_like(self._recv_buffer)
            self._handed_out = False


class Pipe:
    """States to the next rank, the previous rank's from it (a pipeline over the ranks): one :class:`Channel` per message shape.

    ``received`` and ``sent`` are one-row templates (tensors) of the states that come in
    and go out (they differ when a stage ends between the two ranks' blocks).
    A message's tag follows from its rows and ``purpose``, so batches of
    several sizes travel side by side.
    """

    def __init__(self, backend: Any, received: Any, sent: Any) -> None:
        self.backend, self.templates = backend, {False: received, True: sent}
        self.left = backend.rank - 1 if backend.rank > 0 else None
        self.right = backend.rank + 1 if backend.rank < backend.size - 1 else None
        self._channels: dict[tuple[int, int, bool], Channel] = {}

    def _channel(self, purpose: int, rows: int, sending: bool) -> Channel:
        key = (purpose, rows, sending)
        if key not in self._channels:
            one = self.templates[sending]
            template = one.new_empty((rows, *one.shape[1:]))
            left, right = (None, self.right) if sending else (self.left, None)
            self._channels[key] = Channel(self.backend, left, right, 16 + 2 * rows + purpose, template)
        return self._channels[key]

    def recv(self, purpose: int, rows: int) -> Any:
        channel = self._channel(purpose, rows, False)
        channel.post_recv()
        return channel.wait_recv().clone()  # the buffer is reused; autograd keeps the input

    def send(self, purpose: int, state: Any) -> None:
        self._channel(purpose, state.shape[0], True).send(state)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.finish()  # waits for the last send
