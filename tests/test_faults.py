"""Faults found by fault injection (issue "Runs you can trust and watch"): each test fails on the code before the fix."""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import ROOT, flip_bytes_in_a_tensor, mpirun

import mgrit_resnet as mr
from mgrit_resnet import cli
from mgrit_resnet._checks import check_float, check_memory
from mgrit_resnet._files import atomic_path
from mgrit_resnet.cli import VERBS, _common, main
from mgrit_resnet.cli._common import OutputError, Progress, Settings, check_output, format_residual, write_json
from mgrit_resnet.mgrit import check_coarse_grid

DAHLQUIST = str(ROOT / "examples" / "dahlquist.toml")
TINY = str(ROOT / "examples" / "tiny_train.toml")


def one_error(capsys, code, message):
    """``code`` is 2 and stderr is exactly one line holding ``message``."""
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------- 1. NaN and inf
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_real_number_checks_refuse_nan_and_inf(value):
    with pytest.raises(ValueError, match=r"^train\.lr must be a finite real number; got"):
        check_float("train.lr", value)
    with pytest.raises(ValueError, match=r"^mgrit\.tol must be a finite real number >= 0.0; got"):
        check_float("mgrit.tol", value, minimum=0.0)


def test_inf_only_where_allowed():
    assert check_float("train.tau", math.inf, allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=r"train\.tau must be a real number or inf \(not NaN\); got nan"):
        check_float("train.tau", math.nan, allow_inf=True)


def test_dahlquist_refuses_a_non_finite_z():
    section = {"kind": "dahlquist", "z": math.nan, "t_final": 5.0, "n_steps": 10, "scheme": "backward_euler"}
    with pytest.raises(ValueError, match=r"^problem\.z must be a finite number"):
        mr.problems.from_config(section)
    with pytest.raises(ValueError, match=r"^z must be a finite number"):
        mr.problems.Dahlquist(z=complex(-1.0, math.inf))


@pytest.mark.parametrize(
    "verb, config, setting, message",
    [
        ("solve", DAHLQUIST, "problem.z=nan", "problem.z must be a finite number"),
        ("solve", DAHLQUIST, "problem.z='nan+1j'", "problem.z must be a finite number"),
        ("solve", DAHLQUIST, "problem.t_final=inf", "problem.t_final must be a finite real number; got inf"),
        ("solve", DAHLQUIST, "mgrit.tol=inf", "mgrit.tol must be a finite real number >= 0.0; got inf"),
        ("train", TINY, "train.lr=inf", "train.lr must be a finite real number; got inf"),
        ("train", TINY, "train.lr=nan", "train.lr must be a finite real number; got nan"),
        ("train", TINY, "train.momentum=inf", "train.momentum must be a finite real number >= 0.0; got inf"),
        ("train", TINY, "network.t_final=nan", "network.t_final must be a finite real number; got nan"),
    ],
)
def test_non_finite_config_values_exit_2_with_one_message(verb, config, setting, message, capsys):
    one_error(capsys, main([verb, config, "--set", setting]), message)


# ---------------------------------------------------------------------- 2. --version, 3. Ctrl-C
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mgrit-resnet {mr.__version__}\n"


@pytest.mark.parametrize("where", ["prepare", "job"])
def test_ctrl_c_exits_130_with_one_line(where, monkeypatch, capsys):
    def prepare(args, comm, rank):
        if where == "prepare":
            raise KeyboardInterrupt

        def job():
            raise KeyboardInterrupt

        return job

    monkeypatch.setitem(VERBS, "wait", types.SimpleNamespace(HELP="wait", add_arguments=lambda parser: None, prepare=prepare))
    assert main(["wait"]) == 130
    assert capsys.readouterr().err == "mgrit-resnet: interrupted\n"


def test_ctrl_c_during_training_at_one_rank(tmp_path):
    command = [str(Path(sys.executable).parent / "mgrit-resnet"), "train", TINY, "--set", "train.epochs=1000"]
    env = dict(os.environ, MGRIT_RESNET_LOG_EVERY="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        if first.startswith("mgrit-resnet: note: no --out"):  # said once, before the work
            first = proc.stderr.readline()  # the first progress line: the job is under way
        assert first.startswith("train one_shot: "), first
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert err.splitlines()[-1] == "mgrit-resnet: interrupted" and "Traceback" not in err


# ---------------------------------------------------------------------- 4, 5. no lost error line, no hang without the hook
@pytest.mark.mpi
def test_an_exception_in_an_api_script_without_the_hook_ends_every_rank():
    start = time.monotonic()
    proc = mpirun(2, ["python", "tests/mpi/api_raises.py", "one"], timeout=60, check=False)
    assert proc.returncode != 0
    assert "rank 1: RuntimeError: deliberate failure on rank 1\n" in proc.stderr
    # The abort may cut off the traceback (the hook flushes the reason first for this): one that made it out comes after it.
    assert "Traceback" not in proc.stderr or proc.stderr.index("rank 1: RuntimeError") < proc.stderr.index("Traceback")
    assert time.monotonic() - start < 60


@pytest.mark.mpi
def test_when_every_rank_raises_the_reason_comes_first():
    proc = mpirun(2, ["python", "tests/mpi/api_raises.py", "all"], timeout=60, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    assert lines[first].startswith("rank ") and ": RuntimeError: deliberate failure on rank" in lines[first], proc.stderr
    # The abort may cut off the rest of the output (the hook flushes the reason first for this): a traceback that
    # made it out comes after the reason.
    tracebacks = [i for i, line in enumerate(lines) if line == "Traceback (most recent call last):"]
    assert all(first < i for i in tracebacks)


# ---------------------------------------------------------------------- 6. solve's own checks
def test_solve_needs_a_problem_table(capsys):
    one_error(capsys, main(["solve", TINY]), f"solve: the config {TINY!r} has no [problem] table")
    assert main(["solve", TINY, "--set", "problem.kind=dahlquist"]) == 0


def test_solve_refuses_a_coarsening_that_leaves_no_coarse_grid(capsys):
    message = "mgrit.coarsening=4096 leaves no coarse grid for problem.n_steps=2048 (a coarse level needs at least mgrit.min_coarse=2"
    one_error(capsys, main(["solve", DAHLQUIST, "--set", "mgrit.coarsening=4096"]), message)
    assert main(["solve", DAHLQUIST, "--set", "mgrit.coarsening=4096", "--set", "mgrit.levels=1"]) == 0


def test_the_coarse_grid_rule_is_one_function():
    with pytest.raises(ValueError, match=r"^mgrit\.coarsening=8 leaves no coarse grid for network\.depth=4 "):
        check_coarse_grid({"levels": 3, "coarsening": 8}, 4, "network.depth")
    check_coarse_grid({"levels": 1, "coarsening": 8}, 4, "network.depth")
    check_coarse_grid({"levels": 2, "coarsening": 2}, 4, "network.depth")


# ---------------------------------------------------------------------- 7. output and config checks
def test_a_file_on_the_way_is_not_a_missing_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ValueError) as error:
        check_output("--json", blocker / "sub" / "r.json")
    assert str(error.value) == f"--json: cannot create {str(blocker / 'sub' / 'r.json')!r}: {str(blocker)!r} is not a writable folder"


def test_a_config_that_is_a_folder_or_not_utf8_names_the_file(tmp_path, capsys):
    one_error(capsys, main(["solve", str(tmp_path)]), f"config file {str(tmp_path)!r} is a folder, not a TOML file")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[problem]\nkind = "dahlquist" # caf\xe9\n'.encode("latin-1"))
    for verb in ("solve", "train", "sweep"):
        extra = ["--grid", "mgrit.levels=1,2", "--out", str(tmp_path / "s.csv")] if verb == "sweep" else []
        one_error(capsys, main([verb, str(latin), *extra]), f"config file {str(latin)!r} is not UTF-8 text")


def test_plot_of_a_missing_folder_names_it(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    err = one_error(capsys, main(["plot", str(missing)]), f"plot: {str(missing)!r} does not exist")
    assert "--out:" not in err and "the folder" not in err


# ---------------------------------------------------------------------- 8. no empty or torn files
@pytest.fixture
def full_disk(monkeypatch):
    """Every ``Path.write_text`` writes half its text, then fails as a full disk does."""

    def write_text(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_leaves_no_torn_json(tmp_path, full_disk):
    target = tmp_path / "r.json"
    with pytest.raises(OutputError, match=f"cannot write {str(target)!r}: No space left on device"):
        write_json(target, {"x": list(range(100))}, rank=0)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path, full_disk):
    target = tmp_path / "r.json"
    with open(target, "w") as f:
        f.write('{"old": true}\n')
    with pytest.raises(OutputError):
        write_json(target, {"new": True}, rank=0)
    assert json.loads(target.read_text()) == {"old": True} and list(tmp_path.iterdir()) == [target]


def test_solve_on_a_full_disk_exits_2_with_one_message(tmp_path, full_disk, capsys):
    target = tmp_path / "r.json"
    code = main(["solve", DAHLQUIST, "--set", "problem.n_steps=64", "--json", str(target)])
    one_error(capsys, code, f"mgrit-resnet: error: cannot write {str(target)!r}: No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_json_gets_the_usual_mode(tmp_path):
    write_json(tmp_path / "r.json", {}, rank=0)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------- 9. progress everywhere
def drive(settings, steps=3):
    bar = Progress(0, steps, "train one_shot", "epoch", settings)
    for k in range(1, steps + 1):
        bar.goto(k, loss=0.5, res=f"{format_residual(None)}/{format_residual(1e-5)}")
    bar.close()


def test_progress_lines_without_a_terminal(capsys):
    drive(Settings(verbosity=0, log_every=0.0))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3, "a line per step (log_every = 0 s), the last one not twice"
    assert err[0].startswith("train one_shot: 1/3 epoch (33 %), loss 0.5, res -/1.0e-05, ")
    assert "ETA" in err[0] and "epoch/s" in err[0]
    drive(Settings(verbosity=0, log_every=3600.0))
    assert capsys.readouterr().err == "", "throttled: nothing within the first hour"
    bar = Progress(0, 10, "sweep", "point", Settings(log_every=0.0))
    bar.goto(1)
    bar._every = 3600.0  # then throttled: the steps in between are not shown, the last one is
    bar.goto(2)
    bar.goto(3, note=None)
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err] == ["sweep: 1/10 point (10 %)", "sweep: 3/10 point (30 %)"] and "note -" in err[1]
    drive(Settings(verbosity=1, log_every=3600.0))
    assert len(capsys.readouterr().err.splitlines()) == 3, "-v: a line per step"
    drive(Settings(verbosity=-1, log_every=0.0))
    assert capsys.readouterr().err == "", "-q: no progress"


def test_format_residual_takes_none():
    assert format_residual(None) == "-" and format_residual(math.nan) == "-" and format_residual(1.234e-5) == "1.2e-05"


def test_quiet_verbose_and_log_every_reach_every_verb(monkeypatch, capsys):
    small = ["solve", DAHLQUIST, "--set", "problem.n_steps=64"]
    assert main(["--log-every", "0", *small]) == 0
    assert "MGRIT: 1/" in capsys.readouterr().err
    assert main([*small, "--log-every", "0"]) == 0, "after the verb too"
    assert "MGRIT: 1/" in capsys.readouterr().err
    monkeypatch.setenv("MGRIT_RESNET_LOG_EVERY", "0")
    assert main(small) == 0
    assert "MGRIT: 1/" in capsys.readouterr().err
    assert main(["-q", *small]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MGRIT_RESNET_LOG_EVERY", "soon")
    one_error(capsys, main(small), "the environment variable MGRIT_RESNET_LOG_EVERY must be a number of seconds >= 0")
    assert _common.SETTINGS.verbosity == 0


# ---------------------------------------------------------------------- 11. figures
@pytest.fixture
def figures(monkeypatch):
    """The plot functions return their figure instead of saving it."""
    from mgrit_resnet.studies import plot

    monkeypatch.setattr(plot, "_save", lambda fig, path: fig)
    return plot


def test_tune_figure_draws_the_max_error_and_labels_that_do_not_overlap(figures):
    from mgrit_resnet.studies.tune import TuneRow

    rows = [
        TuneRow(lv, m, "FCF", 8, 5e-3 + 2e-5 * lv + 1e-5 * m, 0.02, 0.05 * (1 + 0.05 * lv + 0.02 * m))
        for lv in (2, 3, 4)
        for m in (2, 4, 8)
    ]
    rows[0].pareto = True
    fig = figures.plot_tune(rows, "unused.png", rows[0], max_error=0.06)
    (ax,) = fig.axes
    assert any(list(line.get_ydata()) == [0.06, 0.06] for line in ax.get_lines()), "the --max-error line"
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(rows)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]


def test_compare_figure_keeps_one_colour_per_strategy_and_the_whole_accuracy_range(figures):
    def curve(acc, blocks=0):
        return [{"progress": e / 4, "val_accuracy": acc, **({"head_val_accuracy": [acc] * blocks} if blocks else {})} for e in range(1, 5)]

    results = [
        {"strategy": "serial", "val_accuracy": 0.96, "curve": curve(0.96)},
        {"strategy": "local", "val_accuracy": 0.95, "head_val_accuracy": [0.93, 0.95], "curve": curve(0.95, 2)},
        {"strategy": "trgl", "val_accuracy": 0.94, "head_val_accuracy": [0.92, 0.94], "curve": curve(0.94, 2)},
    ]
    fig = figures.plot_compare(results, "unused.png")
    colours = {}
    for ax in fig.axes:
        assert ax.get_ylim() == (0.0, 1.02)
        for line in ax.get_lines():
            strategy = line.get_label().split(" ")[0].rstrip(",")
            colours.setdefault(strategy, set()).add(line.get_color())
    assert set(colours) == {"serial", "local", "trgl"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({c for cs in colours.values() for c in cs}) == 3


def test_sweep_figure_puts_coarsening_on_a_log2_axis_and_the_problem_in_the_title(figures):
    from mgrit_resnet.studies.sweep import Table

    rows = [
        {"mgrit.coarsening": str(m), "mgrit.relax": r, "mean_factor": "0.1", "theory_bound": "0.1"}
        for m in (4, 8, 16)
        for r in ("F", "FCF")
    ]
    fig = figures.plot_sweep(Table(["mgrit.coarsening", "mgrit.relax"], "solve", rows), "unused.png", "solve heat1d: nx = 32")
    assert fig.axes[0].get_xscale() == "log" and fig.axes[1].get_xscale() == "linear"
    assert fig._suptitle.get_text() == "solve heat1d: nx = 32"


def test_sweep_records_what_it_ran_and_plot_titles_with_it(tmp_path, capsys):
    table = tmp_path / "s.csv"
    assert main(["sweep", DAHLQUIST, "--set", "problem.n_steps=64", "--grid", "mgrit.coarsening=2,4", "--out", str(table)]) == 0
    record = json.loads((tmp_path / "s.sweep.json").read_text())
    assert record["title"] == "solve dahlquist: z = -1.0, backward_euler, T = 40.0, 64 steps"
    from mgrit_resnet.cli.plot import sweep_title

    assert sweep_title(table, tmp_path / "s.sweep.json") == f"s.csv: {record['title']}"


# ---------------------------------------------------------------------- 12. the theory page
def test_the_convergence_table_marks_an_unstable_coarse_step(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "_ext"))
    import theory_tables

    text = theory_tables.table_rst(-4.0, "forward_euler", 20.0, 256, [2, 8], ["F"], 2)
    rows = text.split("   * - ")[2:]
    assert theory_tables.UNSTABLE not in rows[0]  # m = 2: |mu| = 0.375
    assert rows[1].count(theory_tables.UNSTABLE) == 2  # m = 8: |mu| = 1.5, neither bound
    sys.modules.pop("theory_tables")


def test_a_solve_that_cannot_fit_in_memory_is_refused_before_any_work(capsys):
    assert main(["solve", str(ROOT / "examples" / "dahlquist.toml"), "--set", "problem.n_steps=100000000000"]) == 2
    assert "solving problem.n_steps = 100000000000 (dahlquist) on 1 rank(s) needs about" in capsys.readouterr().err


# ---------------------------------------------------------------------- 13. found by rerunning the fault list at P = 1, 2, 3
# (tests/test_fault_list.py launches every point of the list through the command line at 1, 2 and 3 ranks)
def test_the_memory_check_counts_every_rank_on_the_machine(monkeypatch):
    from mgrit_resnet import _checks
    from mgrit_resnet.training import check

    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert _checks.ranks_on_this_node() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert _checks.ranks_on_this_node() == 2
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")  # mpiexec of MPICH (the wheel's)
    assert _checks.ranks_on_this_node() == 3
    with pytest.raises(ValueError, match=r"^a run needs about 1 GiB per rank; this machine has 2 GiB available for its 3 ranks \(0\.667"):
        check_memory(2**30, "a run", limit=2**31)
    check_memory(2**30, "a run", limit=2**31, sharing=2)
    # 5,000,000 layers over 3 ranks: 12 GiB each, 37 GiB in all, refused on a machine with 30 GiB (it grew to an OOM kill)
    monkeypatch.setattr(_checks, "available_memory", lambda: 30 * 2**30)
    cfg = mr.load_config(TINY, {"network.depth": 5_000_000})
    with pytest.raises(ValueError, match=r"needs about 12\.3 GiB per rank; this machine has 30 GiB available for its 3 ranks"):
        check(cfg, 3)
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")  # three nodes, one rank each: it fits
    check(cfg, 3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"levels": 3, "coarsening": [2]}, "mgrit.coarsening must be a single value or a list of at least 2 entries"),
        ({"levels": 3, "relax": ["F"]}, "mgrit.relax must be a single value or a list of at least 2 entries"),
        ({"levels": 2, "c_weight": 0.0}, "mgrit.c_weight must be a real number > 0; got 0.0"),
    ],
)
def test_mgrit_from_config_names_the_config_keys(options, message, capsys):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        mr.MGRIT.from_config(None, options, n_steps=16)
    with pytest.raises(ValueError, match=r"^n_steps must be an integer >= 1"):  # a keyword of the call, not a config key
        mr.MGRIT.from_config(None, options, n_steps=0)
    sets = [arg for key, value in options.items() for arg in ("--set", f"mgrit.{key}={value!r}")]
    one_error(capsys, main(["train", TINY, *sets]), f"mgrit-resnet: error: {message}")
    one_error(capsys, main(["solve", DAHLQUIST, *sets]), f"mgrit-resnet: error: {message}")


def test_a_checkpoint_with_a_flipped_byte_is_refused_before_any_work(tmp_path, capsys):
    from mgrit_resnet.training import checkpoint

    out = tmp_path / "run"
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--out", str(out)]) == 0
    checkpoint.read(out / "checkpoint.pt")  # whole: its CRC-32 checks pass
    flip_bytes_in_a_tensor(out / "checkpoint.pt")
    torch = pytest.importorskip("torch")
    torch.load(out / "checkpoint.pt", weights_only=False)  # torch itself loads it, with other numbers
    with pytest.raises(ValueError, match=r"damaged, .* \(its record 'data/\d+' fails its CRC-32 check"):
        checkpoint.read(out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    one_error(capsys, main(["train", TINY, "--set", "train.epochs=2", "--out", str(out), "--resume"]), "fails its CRC-32 check")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_a_full_disk_before_the_first_epoch_is_one_message_and_no_torn_file(tmp_path, monkeypatch, capsys):
    from mgrit_resnet.training import checkpoint

    real = checkpoint.write_text_atomically

    def half_then_full(path, text):  # as a full disk does: part of the file, then ENOSPC
        if path.name == "config.toml":
            with atomic_path(path) as temporary:
                temporary.write_text(text[: len(text) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text)

    monkeypatch.setattr(checkpoint, "write_text_atomically", half_then_full)
    out = tmp_path / "run"
    code = main(["train", TINY, "--set", "train.epochs=1", "--out", str(out)])
    one_error(capsys, code, f"mgrit-resnet: error: cannot start the run in {out}: [Errno 28] No space left on device; nothing was trained")
    assert list(out.iterdir()) == []


def test_train_reports_a_bad_config_before_importing_torch():
    script = "import sys; from mgrit_resnet.cli import main; code = main(['train', sys.argv[1], '--set', 'train.lr=inf']); "
    script += "print(code, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script, TINY], capture_output=True, text=True, timeout=120)
    assert done.stdout == "2 False\n" and "train.lr must be a finite real number; got inf" in done.stderr


def test_ctrl_c_on_another_rank_says_it_when_rank_0_cannot(monkeypatch, capsys):
    """Rank 0 may be blocked in a message from a stopped rank: after a grace time another rank says it, then ends them all."""
    aborted = []
    comm = types.SimpleNamespace(Get_size=lambda: 3, Abort=aborted.append)
    monkeypatch.setattr(cli, "INTERRUPT_GRACE", 0.0)
    assert cli._interrupted(comm, 2) == 130
    assert aborted == [130] and capsys.readouterr().err == "mgrit-resnet: interrupted\n"
    assert cli._interrupted(comm, 0) == 130  # rank 0 at once
    assert aborted == [130, 130] and capsys.readouterr().err == "mgrit-resnet: interrupted\n"
