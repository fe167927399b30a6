"""Checkpoints: written atomically, loadable at any rank count."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_path
from ..config import LOCAL_STRATEGIES, WHOLE_NETWORK_STRATEGIES

FORMAT = 1


def remove_orphans(folder: Path, name: str = "checkpoint.pt") -> list[Path]:
    """Remove the temporary files (``.checkpoint.pt.*.tmp``) that a kill during :func:`save_atomically` left in ``folder``.

    Call it only where no other run writes into ``folder``. Returns the files removed.
    """
    removed = []
    for orphan in Path(folder).glob(f".{name}.*.tmp"):
        orphan.unlink(missing_ok=True)
        removed.append(orphan)
    return removed


def all_finite(state: Any) -> bool:
    """Whether every floating-point tensor in ``state`` (nested dicts, lists and tuples) is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(v) for v in state)
    return True


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """Write the checkpoint ``payload`` to ``path`` whole or not at all (:func:`~mgrit_resnet._files.atomic_path`).

    A crash leaves either the old checkpoint or the new one, never half of one.
    """
    with atomic_path(path) as temporary:
        torch.save(dict(payload, format=FORMAT), temporary)


def write_text_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` as :func:`save_atomically` writes a checkpoint: whole, or not at all."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def load(path: Path, local: bool, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be of this version and of block-wise (``local``) or whole-network training.

    With ``mmap`` the tensors stay on disk until read: a check of a large checkpoint that holds no copy of it in memory.
    """
    path = Path(path)
    payload = read(path, mmap)
    if ("heads" in payload) != local:
        written = f"train.strategy = {payload['strategy']!r}" if "strategy" in payload else "another kind of training"
        names = LOCAL_STRATEGIES if local else WHOLE_NETWORK_STRATEGIES
        wanted = ", ".join(names[:-1]) + " or " + names[-1]
        raise ValueError(f"--resume: {str(path)!r} was written by {written}; this run resumes {wanted} checkpoints only")
    return payload


def read(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path`` of this version, of any kind of training; ``ValueError`` for a missing or damaged file.

    Damaged includes a file whose records no longer match the CRC-32 that ``torch.save`` stored (a changed byte in a tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {str(path)!r}")
    damaged = f"--resume: cannot read {str(path)!r} as a checkpoint: damaged, or not written by mgrit-resnet train"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        # torch.load does not check the CRC-32 that torch.save stores for every record: a flipped byte inside a tensor
        # would load as a silently different number. Reading the records once checks them all.
        with zipfile.ZipFile(path) as archive:
            corrupt = archive.testzip()
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(damaged) from error
    if corrupt is not None:
        record = corrupt.split("/", 1)[-1]
        raise ValueError(f"{damaged} (its record {record!r} fails its CRC-32 check: the file changed after it was written)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"--resume: {str(path)!r} is not a checkpoint of this version (format {FORMAT})")
    return payload
