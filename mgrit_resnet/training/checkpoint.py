"""Checkpoints: written atomically, loadable at any rank count."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import LOCAL_STRATEGIES, WHOLE_NETWORK_STRATEGIES

FORMAT = 1


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``.

    A crash leaves either the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, local: bool, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be of this version and of block-wise (``local``) or whole-network training.

    With ``mmap`` the tensors stay on disk until read: a cheap check of a large checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"--resume: cannot read {str(path)!r} as a checkpoint: damaged, or not written by mgrit-resnet train") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"--resume: {str(path)!r} is not a checkpoint of this version (format {FORMAT})")
    if ("heads" in payload) != local:
        written = f"train.strategy = {payload['strategy']!r}" if "strategy" in payload else "another kind of training"
        names = LOCAL_STRATEGIES if local else WHOLE_NETWORK_STRATEGIES
        wanted = ", ".join(names[:-1]) + " or " + names[-1]
        raise ValueError(f"--resume: {str(path)!r} was written by {written}; this run resumes {wanted} checkpoints only")
    return payload
