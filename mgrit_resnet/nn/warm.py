"""Warm starts of a layer-parallel network: the states a batch's last call left, named by the batch, and their gathering.

One entry per batch key holds the forward and adjoint states this rank owns
(only the points a warm start reads, :meth:`~mgrit_resnet.MGRIT.restart_states`),
the coarse right-hand sides of a ``skip_first_down`` solver
(``SolveResult.coarse_rhs``) and the :func:`fingerprint` of the batch they belong to. Gathered, the
entries are whole trajectories, independent of the rank count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class WarmStart:
    """The warm-start states of one batch on this rank (``None`` before its first call)."""

    fingerprint: tuple
    forward: list | None = None
    adjoint: list | None = None
    forward_rhs: list | None = None
    adjoint_rhs: list | None = None


def warm_solve(solver: Any, problem: Any, warm: WarmStart | None, forward: bool) -> Any:
    """``solver.solve(problem=problem)`` started from ``warm``'s forward or adjoint entry, which takes the new one (``None``: cold)."""
    if warm is None:
        return solver.solve(problem=problem)
    states, rhs = ("forward", "forward_rhs") if forward else ("adjoint", "adjoint_rhs")
    result = solver.solve(getattr(warm, states), problem=problem, coarse_rhs=getattr(warm, rhs), keep_coarse_rhs=True)
    setattr(warm, states, solver.restart_states(result))
    setattr(warm, rhs, result.coarse_rhs)
    return result


def fingerprint(x: torch.Tensor) -> tuple:
    """What names one input batch bit for bit: its shape, dtype and a hash of its bytes (a warm start's check)."""
    host = x.detach().cpu().contiguous()
    return (tuple(host.shape), str(host.dtype), hashlib.blake2b(host.numpy().tobytes(), digest_size=16).hexdigest())


def warm_bytes(entries: dict[Hashable, WarmStart]) -> int:
    """Bytes of the states in ``entries`` (forward and adjoint, every key)."""
    return sum(
        s.numel() * s.element_size()
        for w in entries.values()
        for states in (w.forward, w.adjoint, w.forward_rhs, w.adjoint_rhs)
        for s in states or ()
        if s is not None
    )


#: The trajectories of an entry, and whether each lies on the forward (``True``) or the adjoint grid.
TRAJECTORIES = (("forward", True), ("adjoint", False), ("forward_rhs", True), ("adjoint_rhs", False))


def gather_trajectories(
    backend: Any,
    entries: dict[Hashable, WarmStart],
    fwd_start: int,
    adj_start: int,
    points: int,
    packed: bool = False,
    root_only: bool = False,
) -> dict | None:
    """Collective: every key's whole trajectories of ``points`` states (CPU), on every rank (``root_only``: on rank 0, ``None`` elsewhere).

    ``fwd_start`` and ``adj_start`` are the first points this rank owns on
    the forward and the adjoint grids. An entry holds the ``forward`` and
    ``adjoint`` states and the ``forward_rhs`` and ``adjoint_rhs`` coarse
    right-hand sides (see :class:`WarmStart`). A trajectory holds ``None`` at the
    points a warm start does not read; one that no call has left is ``None``.

    With ``packed`` a trajectory is instead ``{"length": points, "segments":
    [[indices, states], ...]}``, one segment per rank that holds states (its
    point indices and its states stacked into one tensor): the form a
    checkpoint stores, a few tensors per key instead of one per point, which
    :func:`split_trajectories` takes as well. A checkpoint needs them on the
    rank that writes it only: ``root_only`` spares the others receiving them.
    """
    local = {
        key: (w.fingerprint, fwd_start, adj_start, [_pack(getattr(w, name)) for name, _ in TRAJECTORIES]) for key, w in entries.items()
    }
    parts = _gather_to_root(backend, local) if root_only else backend.allgather(local)
    if parts is None:
        return None
    merged: dict[Hashable, dict[str, Any]] = {}
    for part in parts:
        for key, (fp, fs, as_, packs) in part.items():
            entry = merged.setdefault(key, {"fingerprint": fp, **{name: [] for name, _ in TRAJECTORIES}})
            for (name, on_forward), pack in zip(TRAJECTORIES, packs):
                if pack is not None:
                    start = fs if on_forward else as_
                    length, held, stacked = pack
                    entry[name].append((length, [start + i for i in held], stacked))
    for entry in merged.values():
        for name, _ in TRAJECTORIES:
            parts = entry[name]
            trajectory = {"length": points, "segments": [[held, stacked] for _, held, stacked in parts if held]}
            complete = sum(length for length, _, _ in parts) == points
            entry[name] = None if not complete else trajectory if packed else unpack_trajectory(trajectory)
    return merged


_GATHER_TAG = 96  # a tag of its own: no other message is in flight while a checkpoint gathers


def _gather_to_root(backend: Any, local: dict) -> list | None:
    """Collective: every rank's ``local`` entries (:func:`gather_trajectories`') in rank order on rank 0, ``None`` elsewhere.

    Only the description travels pickled; the stacked states go as raw buffers,
    one message each, in the order of the description. Pickling hundreds of MB
    of states cost a one-shot checkpoint several seconds.
    """

    def described(entries: dict) -> tuple[dict, list[torch.Tensor]]:
        """The entries with each stack replaced by its shape and dtype, and the stacks in that order."""
        stacks: list[torch.Tensor] = []
        description = {}
        for key, (fp, fs, as_, packs) in entries.items():
            kept = []
            for pack in packs:
                if pack is None or pack[2] is None:
                    kept.append(pack)
                else:
                    stacks.append(pack[2].contiguous())
                    kept.append((pack[0], pack[1], (tuple(pack[2].shape), pack[2].dtype)))
            description[key] = (fp, fs, as_, kept)
        return description, stacks

    mine, stacks = described(local)
    descriptions = backend.gather(mine)
    if backend.rank != 0:
        requests = [backend.isend(stack, 0, _GATHER_TAG) for stack in stacks]
        for request in requests:
            request.Wait()
        return None
    parts = [local]
    for source, description in enumerate(descriptions[1:], 1):
        requests, part = [], {}
        for key, (fp, fs, as_, kept) in description.items():
            packs = []
            for pack in kept:
                if pack is None or pack[2] is None:
                    packs.append(pack)
                    continue
                shape, dtype = pack[2]
                stacked = torch.empty(shape, dtype=dtype)
                requests.append(backend.irecv(stacked, source, _GATHER_TAG))
                packs.append((pack[0], pack[1], stacked))
            part[key] = (fp, fs, as_, packs)
        for request in requests:
            request.Wait()
        parts.append(part)
    return parts


def unpack_trajectory(trajectory: dict[str, Any] | list | None) -> list | None:
    """A packed trajectory of :func:`gather_trajectories` as a list of states (``None`` where none is held); a list as it is."""
    if not isinstance(trajectory, dict):
        return trajectory
    states: list[torch.Tensor | None] = [None] * trajectory["length"]
    for held, stacked in trajectory["segments"]:
        for i, s in zip(held, stacked.unbind(0)):
            states[i] = s
    return states


def _pack(states: list | None) -> tuple[int, list[int], torch.Tensor | None] | None:
    """A rank's states as one host tensor and the indices of the points it holds.

    Pickled one by one, thousands of small tensors cost far more than their
    bytes (a one-shot checkpoint of 100 batches spent half a second on it);
    stacked, a key's states cross as one buffer.
    """
    if states is None:
        return None
    held = [i for i, s in enumerate(states) if s is not None]
    return len(states), held, torch.stack([states[i].detach() for i in held]).cpu() if held else None


def split_trajectories(states: dict[Hashable, dict[str, Any]], fwd: range, adj: range, device: torch.device) -> dict[Hashable, WarmStart]:
    """This rank's entries of :func:`gather_trajectories`' result (packed or not): the points ``fwd`` and ``adj`` it owns, on ``device``."""

    def mine(trajectory, block):
        trajectory = unpack_trajectory(trajectory)  # copies: no state keeps a whole gathered stack alive
        return None if trajectory is None else [None if trajectory[i] is None else trajectory[i].to(device, copy=True) for i in block]

    return {
        key: WarmStart(
            tuple(entry["fingerprint"]), **{name: mine(entry.get(name), fwd if on_forward else adj) for name, on_forward in TRAJECTORIES}
        )
        for key, entry in states.items()
    }
