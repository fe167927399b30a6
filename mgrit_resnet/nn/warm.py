"""Warm starts of a layer-parallel network: the states a batch's last call left, named by the batch, and their gathering.

One entry per batch key holds the forward and adjoint states this rank owns
(only the points a warm start reads, :meth:`~mgrit_resnet.MGRIT.restart_states`)
and the :func:`fingerprint` of the batch they belong to. Gathered, the
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


def fingerprint(x: torch.Tensor) -> tuple:
    """What names one input batch bit for bit: its shape, dtype and a hash of its bytes (a warm start's check)."""
    host = x.detach().cpu().contiguous()
    return (tuple(host.shape), str(host.dtype), hashlib.blake2b(host.numpy().tobytes(), digest_size=16).hexdigest())


def warm_bytes(entries: dict[Hashable, WarmStart]) -> int:
    """Bytes of the states in ``entries`` (forward and adjoint, every key)."""
    return sum(
        s.numel() * s.element_size() for w in entries.values() for states in (w.forward, w.adjoint) for s in states or () if s is not None
    )


def gather_trajectories(backend: Any, entries: dict[Hashable, WarmStart], fwd_start: int, adj_start: int, points: int) -> dict:
    """Collective: every key's whole forward and adjoint trajectories of ``points`` states (CPU), on every rank.

    ``fwd_start`` and ``adj_start`` are the first points this rank owns on
    the forward and the adjoint grids. A trajectory holds ``None`` at the
    points a warm start does not read; one that no call has left is ``None``.
    """

    def host(states):
        return None if states is None else [None if s is None else s.detach().cpu() for s in states]

    local = {key: (w.fingerprint, fwd_start, host(w.forward), adj_start, host(w.adjoint)) for key, w in entries.items()}
    merged: dict[Hashable, dict[str, Any]] = {}
    for part in backend.allgather(local):
        for key, (fp, fs, fwd, as_, adj) in part.items():
            entry = merged.setdefault(key, {"fingerprint": fp, "forward": {}, "adjoint": {}})
            for name, start, states in (("forward", fs, fwd), ("adjoint", as_, adj)):
                if states is not None:
                    entry[name].update((start + i, s) for i, s in enumerate(states))
    for entry in merged.values():
        for name in ("forward", "adjoint"):
            got = entry[name]
            entry[name] = [got[i] for i in range(points)] if len(got) == points else None
    return merged


def split_trajectories(states: dict[Hashable, dict[str, Any]], fwd: range, adj: range, device: torch.device) -> dict[Hashable, WarmStart]:
    """This rank's entries of :func:`gather_trajectories`' result: the points ``fwd`` and ``adj`` it owns, on ``device``."""

    def mine(trajectory, block):
        return None if trajectory is None else [None if trajectory[i] is None else trajectory[i].to(device) for i in block]

    return {
        key: WarmStart(tuple(entry["fingerprint"]), mine(entry["forward"], fwd), mine(entry["adjoint"], adj))
        for key, entry in states.items()
    }
