import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def mpirun(n: int, args: list[str], timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or a console command) under ``mpiexec -n n`` and return the finished process."""
    if not MPIEXEC.exists():
        pytest.fail(f"mpiexec not found next to {sys.executable}: run `make setup` (pip install mpich mpi4py)")
    args = [sys.executable if a == "python" else a for a in args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(MPIEXEC), "-n", str(n), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpiexec -n {n} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def reports_per_rank_count(tmp_path_factory, script: str, ranks: list[int]) -> dict[int, dict]:
    """Run ``python SCRIPT OUT.json`` under ``mpiexec -n P`` for every P in ``ranks``; the JSON reports by P."""
    import json

    out = {}
    for n in ranks:
        path = tmp_path_factory.mktemp("mpi") / f"report_{n}.json"
        mpirun(n, ["python", script, str(path)])
        out[n] = json.loads(path.read_text())
    return out


def flip_bytes_in_a_tensor(path: Path, count: int = 64) -> None:
    """Flip every bit of ``count`` bytes inside the data of a tensor of the checkpoint ``path`` (an uncompressed zip)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: (info.filename.rsplit("/", 2)[-2] == "data", info.file_size))
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[record.header_offset + 26 : record.header_offset + 30])
    start = record.header_offset + 30 + name_length + extra_length
    assert record.compress_type == zipfile.ZIP_STORED and record.file_size >= count
    for k in range(start, start + count):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def with_and_without_last_sweep(monkeypatch, adjoint_class: type, run):
    """``run()`` with the solver's last-sweep announcement reaching ``adjoint_class`` and with it ignored.

    Returns both results and how often the first run announced.
    """
    calls = []
    original = adjoint_class.last_sweep
    monkeypatch.setattr(adjoint_class, "last_sweep", lambda self: (calls.append(1), original(self)))
    announced = run()
    monkeypatch.setattr(adjoint_class, "last_sweep", lambda self: None)
    return announced, run(), len(calls)
