"""Output files written whole or not at all: the one mechanism behind every file the package writes in one go."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

MODE = 0o644  # what a plain open() gives under the usual umask; mkstemp's 0600 would hide outputs from a group


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; when the block ends without error it replaces ``path`` in one step.

    The temporary file (``.NAME.*.tmp``) is flushed to disk and given the usual
    mode before the rename, so ``path`` holds either its old content or the
    whole new one, never an empty or torn file. On any error the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, MODE & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
