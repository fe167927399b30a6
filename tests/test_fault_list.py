"""The fault list of the issue "Runs you can trust and watch" (*Found by fault injection*, points 1-10), rerun through
the real command line at P = 1, 2 and 3 ranks: no hang, and nothing lost.

Every case launches ``mgrit-resnet`` (P = 1: as a one-rank user runs it; P > 1: under ``mpiexec -n P``) on
``examples/tiny_train.toml`` for a few epochs, with progress lines on (``MGRIT_RESNET_LOG_EVERY=0``) so that
they are formatted too. A launch that outlives its timeout is killed with every process under it and fails
its test: a hang fails, it does not stall. After every launch:

- the exit code is the documented one (``mgrit_resnet.cli``): 2 for bad input and for an output that cannot
  be written, 3 for divergence, 130 for Ctrl-C;
- the message is one line ``mgrit-resnet: error: ...`` (rank 0 says it, every rank exits with the code), and
  stderr holds no Python traceback;
- :func:`nothing_lost`: in the output folder no orphan ``.*.tmp`` file, ``metrics.jsonl`` and ``summary.json``
  strict JSON (no bare ``NaN``), the checkpoint loadable by ``torch.load`` with every tensor finite and holding
  exactly the metrics rows on disk; a refused resume leaves the folder byte for byte as it was.

The single-rank unit tests of each point are in ``test_faults.py`` and ``test_trust.py``. A full disk is a file size
limit (``RLIMIT_FSIZE``, set by ``tests/mpi/cli_fault.py`` once MPI is up): writes past it fail as on a full disk.
Run: ``pytest -m slow tests/test_fault_list.py`` (a few minutes).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import MPIEXEC, ROOT, flip_bytes_in_a_tensor

from mgrit_resnet._checks import available_memory

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

RANKS = (1, 2, 3)
CLI = Path(sys.executable).parent / "mgrit-resnet"
FAULT = ROOT / "tests" / "mpi" / "cli_fault.py"
API_RAISES = ROOT / "tests" / "mpi" / "api_raises.py"
TINY = str(ROOT / "examples" / "tiny_train.toml")
DAHLQUIST = str(ROOT / "examples" / "dahlquist.toml")
TIMEOUT = 120.0  # seconds for one launch; the longest takes about 5 s
DIVERGING = ["--set", "train.optimizer=sgd", "--set", "network.activation=relu", "--set", "train.lr=30", "--set", "train.epochs=6"]
CHECKPOINT_TOO_BIG = "fsize=100000"  # bytes: config.toml and metrics.jsonl fit, a checkpoint (160 kB) does not
NOTHING_FITS = "fsize=500"  # not even config.toml (1 kB) or solve's JSON (3 kB)


# ---------------------------------------------------------------------- launching
@dataclass
class Launch:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("mgrit-resnet: error:")]


def command(ranks: int, args: list[str], script: Path | None = None) -> list[str]:
    program = [str(CLI)] if script is None else [sys.executable, str(script)]
    return [*program, *args] if ranks == 1 else [str(MPIEXEC), "-n", str(ranks), *program, *args]


def start(ranks: int, args: list[str], script: Path | None = None, **popen) -> subprocess.Popen:
    if ranks > 1 and not MPIEXEC.exists():
        pytest.fail(f"mpiexec not found next to {sys.executable}: run `make setup`")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MGRIT_RESNET_LOG_EVERY="0")
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    cmd = command(ranks, args, script)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, text=True, start_new_session=True, **popen)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it.

    MPICH's launcher puts its proxy and the ranks in sessions of their own, out of reach of a process-group kill.
    """
    table = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for p in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> Launch:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"hang: `{' '.join(proc.args)}` ran past {timeout:g} s and was killed\n{out[-2000:]}\n{(err or '')[-3000:]}")
    return Launch(proc.returncode, out, err or "")


def launch(ranks: int, args: list[str], script: Path | None = None, timeout: float = TIMEOUT) -> Launch:
    return finish(start(ranks, args, script), timeout)


# ---------------------------------------------------------------------- what "nothing lost" means
def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from tensors(value)


def nothing_lost(out: Path, orphans_ok: bool = False) -> int:
    """Check the output folder ``out`` of a train run (see the module's text); the epochs its checkpoint holds (0: none)."""
    if not orphans_ok:
        assert not [p.name for p in out.glob(".*.tmp")], "orphan temporary files"
    rows = []
    if (out / "metrics.jsonl").exists():
        text = (out / "metrics.jsonl").read_text()
        assert text == "" or text.endswith("\n"), "a torn last row"
        rows = [strict_json(line) for line in text.splitlines()]
        assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
    if (out / "config.toml").exists():
        tomllib.loads((out / "config.toml").read_text())  # whole
    if (out / "summary.json").exists():
        assert strict_json((out / "summary.json").read_text())["epochs"] == len(rows)
    if not (out / "checkpoint.pt").exists():
        assert rows == [], "metrics rows without the checkpoint that holds them"
        return 0
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    held = [t for t in tensors(saved) if t.is_floating_point()]
    assert held and all(bool(torch.isfinite(t).all()) for t in held), "a non-finite tensor in the checkpoint"
    assert saved["epoch"] == len(rows) and json.loads(json.dumps(saved["metrics"])) == rows
    return len(rows)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_error(run: Launch, code: int, text: str) -> str:
    """Exit ``code``, one error line holding ``text``, no traceback; the line."""
    assert run.code == code, f"exit {run.code}, wanted {code}\n{run.err[-3000:]}"
    assert len(run.errors) == 1 and text in run.errors[0], run.err[-3000:]
    assert "Traceback" not in run.err, run.err[-3000:]
    return run.errors[0]


def printed_epochs(run: Launch) -> list[int]:
    return [int(m) for m in re.findall(r"^epoch +(\d+) +loss", run.out, flags=re.M)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """``finished_run(P)``: the folder of a finished 2-epoch run at P ranks (made once per P; copy it before changing it)."""
    made: dict[int, Path] = {}

    def get(ranks: int) -> Path:
        if ranks not in made:
            out = tmp_path_factory.mktemp(f"finished_p{ranks}") / "run"
            run = launch(ranks, ["-q", "train", TINY, "--set", "train.epochs=2", "--out", str(out)])
            assert run.code == 0 and "Traceback" not in run.err, run.err
            assert nothing_lost(out) == 2
            made[ranks] = out
        return made[ranks]

    return get


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """``run_copy(P)``: a copy of ``finished_run(P)`` in this test's folder."""
    return lambda ranks: Path(shutil.copytree(finished_run(ranks), tmp_path / "run"))


# ---------------------------------------------------------------------- 1. divergence
@pytest.mark.parametrize("ranks", RANKS)
def test_1_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(ranks, tmp_path):
    out = tmp_path / "D"
    run = launch(ranks, ["train", TINY, *DIVERGING, "--out", str(out)])
    line = one_error(run, 3, "mgrit-resnet: error: training diverged at epoch ")
    m = re.match(
        r"mgrit-resnet: error: training diverged at epoch (\d+), step \d+ \(loss (nan|inf|-inf)\); "
        r"the last good checkpoint \(epoch (\d+)\) is kept in (.+?); lower train\.lr",
        line,
    )
    assert m and m[4] == str(out), line
    kept = nothing_lost(out)
    assert kept == int(m[3]) >= 1 and int(m[1]) == kept + 1
    assert printed_epochs(run) == list(range(1, kept + 1)) and not (out / "summary.json").exists()


# ---------------------------------------------------------------------- 2. NaN and inf
@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize(
    "verb, config, setting, message",
    [
        pytest.param("train", TINY, "train.lr=inf", "train.lr must be a finite real number; got inf", id="train train.lr=inf"),
        pytest.param("train", TINY, "train.lr=nan", "train.lr must be a finite real number; got nan", id="train train.lr=nan"),
        pytest.param(
            "train", TINY, "network.t_final=nan", "network.t_final must be a finite real number; got nan", id="train network.t_final=nan"
        ),
        pytest.param(
            "train", TINY, "network.t_final=inf", "network.t_final must be a finite real number; got inf", id="train network.t_final=inf"
        ),
        pytest.param(
            "train",
            TINY,
            "train.momentum=inf",
            "train.momentum must be a finite real number >= 0.0; got inf",
            id="train train.momentum=inf",
        ),
        pytest.param(
            "solve",
            DAHLQUIST,
            "problem.t_final=inf",
            "problem.t_final must be a finite real number; got inf",
            id="solve problem.t_final=inf",
        ),
        pytest.param("solve", DAHLQUIST, "problem.z=nan", "problem.z must be a finite number", id="solve problem.z=nan"),
    ],
)
def test_2_nan_and_inf_in_the_config_are_bad_input(ranks, verb, config, setting, message, tmp_path):
    out = ["--out", str(tmp_path / "D")] if verb == "train" else []
    one_error(launch(ranks, [verb, config, "--set", setting, *out]), 2, f"mgrit-resnet: error: {message}")
    assert not (tmp_path / "D").exists()


# ---------------------------------------------------------------------- 3. a solve converged at iteration 0
@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("strategy", ["one_shot", "exact"])
def test_3_a_solve_converged_at_iteration_0_prints_its_progress(ranks, strategy, tmp_path):
    out = tmp_path / "D"
    args = ["train", TINY, "--set", "train.lr=1e6", "--set", "train.epochs=4", "--set", f"train.strategy={strategy}"]
    run = launch(ranks, [*args, "--out", str(out)])
    assert run.code == 0 and "Traceback" not in run.err and not run.errors, run.err[-3000:]
    progress = [line for line in run.err.splitlines() if line.startswith(f"train {strategy}: ")]
    assert progress and all(", res " in line for line in progress), run.err[-3000:]
    assert nothing_lost(out) == 4 and printed_epochs(run) == [1, 2, 3, 4]


# ---------------------------------------------------------------------- 4. resume keeps its settings
@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize(
    "settings, named",
    [
        pytest.param(["train.lr=0.5"], "train.lr: 0.02 -> 0.5", id="train.lr=0.5"),
        pytest.param(["train.batch_size=20"], "train.batch_size: 25 -> 20", id="train.batch_size=20"),
        pytest.param(["network.dtype=float32"], "network.dtype: 'float64' -> 'float32'", id="network.dtype=float32"),
        pytest.param(["data.n_train=150"], "data.n_train: 200 -> 150", id="data.n_train=150"),
    ],
)
def test_4_resume_refuses_a_changed_setting_and_changes_nothing(ranks, settings, named, run_copy):
    out = run_copy(ranks)
    before = files(out)
    args = ["train", TINY, "--set", "train.epochs=3", *(a for s in settings for a in ("--set", s)), "--out", str(out), "--resume"]
    one_error(launch(ranks, args), 2, f"mgrit-resnet: error: --resume: this config changes {named} from the run in")
    assert files(out) == before


@pytest.mark.parametrize("ranks", RANKS)
def test_4_resume_refuses_fewer_epochs_than_done(ranks, run_copy):
    out = run_copy(ranks)
    before = files(out)
    run = launch(ranks, ["train", TINY, "--set", "train.epochs=1", "--out", str(out), "--resume"])
    one_error(run, 2, "--resume: train.epochs = 1 is below the 2 epochs already done")
    assert files(out) == before


@pytest.mark.parametrize("ranks", RANKS)
def test_4_resume_takes_more_epochs_and_other_mgrit_settings(ranks, run_copy):
    out = run_copy(ranks)
    run = launch(ranks, ["train", TINY, "--set", "train.epochs=3", "--set", "mgrit.levels=2", "--out", str(out), "--resume"])
    assert run.code == 0 and "Traceback" not in run.err and not run.errors, run.err[-3000:]
    assert nothing_lost(out) == 3 and printed_epochs(run) == [3]
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["config"]
    recorded = tomllib.loads((out / "config.toml").read_text())
    for config in (saved, recorded):
        assert config["train"]["lr"] == 0.02 and config["train"]["epochs"] == 3 and config["mgrit"]["levels"] == 2


# ---------------------------------------------------------------------- 5. a checkpoint that does not fit
def as_an_older_version_wrote_it(out: Path) -> None:
    """No config in the checkpoint and no config.toml beside it: only the tensors tell the network."""
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    del saved["config"]
    torch.save(saved, out / "checkpoint.pt")
    (out / "config.toml").unlink()


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize(
    "case, setting, message",
    [
        ("other depth", "network.depth=15", "--resume: this config changes network.depth: 13 -> 15"),
        ("other width", "network.width=6", "--resume: this config changes network.width: 4 -> 6"),
        ("older checkpoint, other depth", "network.depth=15", "does not fit the network of this config (tensors missing: layers.13"),
        ("older checkpoint, other width", "network.width=6", "does not fit the network of this config (tensors of another shape: "),
        ("64 flipped bytes", "train.epochs=3", "as a checkpoint: damaged, or not written by mgrit-resnet train (its record 'data/"),
    ],
)
def test_5_a_checkpoint_that_does_not_fit_is_one_message_before_any_work(ranks, case, setting, message, run_copy):
    out = run_copy(ranks)
    if case.startswith("older"):
        as_an_older_version_wrote_it(out)
    if case == "64 flipped bytes":
        flip_bytes_in_a_tensor(out / "checkpoint.pt")
    before = files(out)
    run = launch(ranks, ["train", TINY, "--set", setting, "--out", str(out), "--resume"])
    one_error(run, 2, message)
    assert files(out) == before and printed_epochs(run) == []


# ---------------------------------------------------------------------- 6, 7. no lost error line, no hang
REASON = re.compile(r"^rank (\d+): RuntimeError: deliberate failure on rank \1$", re.M)


@pytest.mark.parametrize("ranks", RANKS)
def test_6_every_rank_raising_at_once_says_why(ranks):
    for _ in range(1 if ranks == 1 else 3):  # the lost line showed in 2 of 9 runs at 2 ranks
        run = launch(ranks, ["raise", "-q", "train", TINY], script=FAULT, timeout=60)
        assert run.code == 1, run.err[-3000:]
        if ranks == 1:  # no MPI: Python's own traceback, the reason last
            assert run.err.rstrip().endswith("RuntimeError: deliberate failure on rank 0"), run.err[-3000:]
        else:
            first = REASON.search(run.err)
            assert first is not None, f"no reason line:\n{run.err[-3000:]}"
            assert first.start() < run.err.index("Traceback"), "the reason comes before the traceback"


@pytest.mark.parametrize("ranks, mode", [(1, "all"), (2, "all"), (3, "all"), (2, "one"), (3, "one")])
def test_7_an_api_script_without_the_abort_hook_ends_every_rank(ranks, mode):
    run = launch(ranks, [mode], script=API_RAISES, timeout=60)
    assert run.code != 0
    if ranks == 1:
        assert run.err.rstrip().endswith("RuntimeError: deliberate failure on rank 0"), run.err[-3000:]
    else:
        reasons = [int(m[1]) for m in REASON.finditer(run.err)]
        assert reasons and (mode == "all" or reasons == [1]), run.err[-3000:]


# ---------------------------------------------------------------------- 8. huge sizes
NEEDS = "needs about "


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize(
    "verb, config, setting, message",
    [
        pytest.param("train", TINY, "network.depth=5000000", NEEDS, id="train network.depth=5000000"),
        pytest.param("train", TINY, "network.depth=12345678901234567890", NEEDS, id="train network.depth=12345678901234567890"),
        pytest.param("train", TINY, "network.width=100000", NEEDS, id="train network.width=100000"),
        pytest.param(
            "train", TINY, "data.n_train=1e9", "data.n_train must be an integer >= 1; got 1000000000.0", id="train data.n_train=1e9"
        ),
        pytest.param("train", TINY, "data.n_train=10000000000", NEEDS, id="train data.n_train=10000000000"),
        pytest.param(
            "solve",
            DAHLQUIST,
            "problem.n_steps=1e9",
            "problem.n_steps must be an integer >= 1; got 1000000000.0",
            id="solve problem.n_steps=1e9",
        ),
        pytest.param("solve", DAHLQUIST, "problem.n_steps=100000000000", NEEDS, id="solve problem.n_steps=100000000000"),
    ],
)
def test_8_a_run_too_large_for_memory_is_refused_at_once(ranks, verb, config, setting, message):
    if setting == "network.depth=5000000" and (available_memory() or 0) > 32 * 2**30:
        pytest.skip("this machine has the 37 GiB that network.depth = 5000000 needs")
    line = one_error(launch(ranks, [verb, config, "--set", setting], timeout=60), 2, message)
    if message == NEEDS:
        assert re.search(r"needs about \S+ GiB per rank; this machine has \S+ GiB available", line), line


# ---------------------------------------------------------------------- 9. a full disk
@pytest.mark.parametrize("ranks", RANKS)
def test_9_a_full_disk_before_the_run_is_one_message_and_no_torn_file(ranks, tmp_path):
    out = tmp_path / "D"
    run = launch(ranks, [NOTHING_FITS, "train", TINY, "--out", str(out)], script=FAULT)
    one_error(run, 2, f"mgrit-resnet: error: cannot start the run in {out}: ")
    assert run.errors[0].endswith("; nothing was trained") and printed_epochs(run) == []
    assert nothing_lost(out) == 0 and not (out / "config.toml").exists()


@pytest.mark.parametrize("ranks", RANKS)
def test_9_a_full_disk_at_the_first_checkpoint(ranks, tmp_path):
    out = tmp_path / "D"
    run = launch(ranks, [CHECKPOINT_TOO_BIG, "train", TINY, "--out", str(out)], script=FAULT)
    one_error(run, 2, f"mgrit-resnet: error: cannot save epoch 1 to {out}: ")
    assert run.errors[0].endswith("; no checkpoint was kept") and printed_epochs(run) == [1], "epoch 1's results are printed"
    assert nothing_lost(out) == 0 and not (out / "summary.json").exists()


@pytest.mark.parametrize("ranks", RANKS)
def test_9_a_full_disk_mid_run_keeps_the_last_checkpoint(ranks, run_copy):
    out = run_copy(ranks)
    checkpoint = (out / "checkpoint.pt").read_bytes()
    run = launch(ranks, [CHECKPOINT_TOO_BIG, "train", TINY, "--set", "train.epochs=4", "--out", str(out), "--resume"], script=FAULT)
    one_error(run, 2, f"mgrit-resnet: error: cannot save epoch 3 to {out}: ")
    assert run.errors[0].endswith("; the last checkpoint (epoch 2) is kept") and printed_epochs(run) == [3]
    assert nothing_lost(out) == 2 and (out / "checkpoint.pt").read_bytes() == checkpoint


@pytest.mark.parametrize("ranks", RANKS)
def test_9_solve_json_on_a_full_disk_leaves_no_empty_file(ranks, tmp_path):
    target = tmp_path / "s.json"
    run = launch(ranks, [NOTHING_FITS, "-q", "solve", DAHLQUIST, "--json", str(target)], script=FAULT)
    one_error(run, 2, f"mgrit-resnet: error: cannot write {str(target)!r}: File too large")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- 10. small ones
def latin1_config(tmp_path: Path) -> str:
    path = tmp_path / "latin.toml"
    path.write_bytes(Path(TINY).read_text().replace("# A tiny", "# Caf\xe9: a tiny").encode("latin-1"))
    return str(path)


def file_on_the_way(tmp_path: Path) -> str:
    (tmp_path / "file.txt").write_text("")
    return str(tmp_path / "file.txt" / "r.json")


SMALL = {
    "config path is a folder": (lambda t: ["train", str(t)], lambda t: f"config file {str(t)!r} is a folder, not a TOML file"),
    "non-UTF-8 config": (lambda t: ["train", latin1_config(t)], lambda t: f"config file {str(t / 'latin.toml')!r} is not UTF-8 text"),
    "--json under a file": (
        lambda t: ["solve", DAHLQUIST, "--json", file_on_the_way(t)],
        lambda t: f"--json: cannot create {str(t / 'file.txt' / 'r.json')!r}: {str(t / 'file.txt')!r} is not a writable folder",
    ),
    "mgrit.c_weight": (lambda t: ["train", TINY, "--set", "mgrit.c_weight=0"], lambda t: "error: mgrit.c_weight must be a real number > 0"),
    "mgrit.coarsening list": (
        lambda t: ["train", TINY, "--set", "mgrit.coarsening=[2]"],
        lambda t: "error: mgrit.coarsening must be a single value or a list of at least 2 entries (one per level)",
    ),
    "mgrit.relax list": (
        lambda t: ["solve", DAHLQUIST, "--set", "mgrit.levels=3", "--set", "mgrit.relax=['F']"],
        lambda t: "error: mgrit.relax must be a single value or a list of at least 2 entries (one per level)",
    ),
    "solve: no coarse grid": (
        lambda t: ["solve", DAHLQUIST, "--set", "mgrit.coarsening=4096"],
        lambda t: "mgrit.coarsening=4096 leaves no coarse grid for problem.n_steps=2048",
    ),
    "train: no coarse grid": (
        lambda t: ["train", TINY, "--set", "mgrit.coarsening=16"],
        lambda t: "mgrit.coarsening=16 leaves no coarse grid for network.depth=13",
    ),
    "batch_size > data set": (
        lambda t: ["train", TINY, "--set", "train.batch_size=201"],
        lambda t: "train.batch_size = 201 is larger than the training set (data.n_train = 200)",
    ),
}


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("case", list(SMALL))
def test_10_small_ones_are_one_message_with_exit_2(ranks, case, tmp_path):
    args, message = SMALL[case]
    one_error(launch(ranks, args(tmp_path)), 2, message(tmp_path))


@pytest.mark.parametrize("ranks", RANKS)
def test_10_ctrl_c_exits_130_without_a_traceback_and_the_run_resumes(ranks, tmp_path):
    out = tmp_path / "D"
    proc = start(ranks, ["train", TINY, "--set", "train.epochs=1000", "--out", str(out)], stderr=subprocess.STDOUT)
    watchdog = threading.Timer(TIMEOUT, kill_tree, [proc.pid])  # a hang ends in a kill, and fails below
    watchdog.start()
    try:
        text = ""
        for line in proc.stdout:  # stdout and stderr; at the epoch-2 line the checkpoint of epoch 1 is on disk
            text += line
            if line.startswith("epoch   2"):
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: SIGINT to the foreground process group
                break
        text += proc.stdout.read()
        code = proc.wait()
        assert watchdog.is_alive(), f"hang: killed after {TIMEOUT:g} s\n{text[-3000:]}"
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert code == 130, text[-3000:]
    assert text.count("mgrit-resnet: interrupted\n") == 1 and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    done = nothing_lost(out, orphans_ok=True)  # a rank ended mid-write may leave one, which the next run removes
    assert done >= 1
    run = launch(ranks, ["-q", "train", TINY, "--set", f"train.epochs={done + 1}", "--out", str(out), "--resume"])
    assert run.code == 0 and "Traceback" not in run.err, run.err[-3000:]
    assert nothing_lost(out) == done + 1


@pytest.mark.parametrize("ranks", RANKS)
def test_10_orphans_are_removed_and_every_output_is_0644(ranks, run_copy):
    out = run_copy(ranks)
    orphan = out / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    run = launch(ranks, ["-q", "train", TINY, "--set", "train.epochs=3", "--out", str(out), "--resume"])
    assert run.code == 0 and "Traceback" not in run.err, run.err[-3000:]
    assert not orphan.exists() and nothing_lost(out) == 3
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(["checkpoint.pt", "config.toml", "metrics.jsonl", "summary.json"], 0o644 & ~umask)
