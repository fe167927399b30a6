"""Runs you can trust: divergence stops cleanly, runs are not overwritten, resumes keep their settings, outputs carry provenance."""

import errno
import json
import os
import re
import stat

import pytest
import torch
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.training import train
from mgrit_resnet.training.errors import TrainingDiverged

TINY = str(ROOT / "examples" / "tiny_train.toml")
DIVERGING = {"train.optimizer": "sgd", "network.activation": "relu", "train.lr": 30.0, "train.epochs": 6}
PROVENANCE = {"version", "git_commit", "config", "ranks", "threads", "python", "torch"}
PROVENANCE |= {"mpi4py", "mpi_library", "petsc4py", "started", "host"}


def sets(overrides):
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def finite_checkpoint(path):
    saved = torch.load(path, weights_only=False)
    return all(torch.isfinite(t).all() for t in saved["model"].values()), saved


# ---------------------------------------------------------------- 1. divergence
@pytest.mark.parametrize("every", [1, 2])
def test_divergence_stops_at_the_first_nan_loss_and_keeps_the_last_good_checkpoint(tmp_path, every):
    cfg = mr.load_config(TINY, overrides={**DIVERGING, "train.checkpoint_every": every})
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+, step \d+ \(loss nan\); the last good checkpoint") as info:
        train(cfg, out=tmp_path)
    kept = info.value.kept
    assert kept >= 1 and kept % every == 0 and kept < info.value.epoch <= kept + every
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == kept and "NaN" not in "".join(rows) and "Infinity" not in "".join(rows)
    assert not (tmp_path / "summary.json").exists()
    finite, saved = finite_checkpoint(tmp_path / "checkpoint.pt")
    assert finite and saved["epoch"] == kept
    resumed = mr.load_config(TINY, overrides={**DIVERGING, "train.lr": 30.0})
    with pytest.raises(TrainingDiverged):  # the kept checkpoint resumes (and, at this rate, diverges again)
        train(resumed, out=tmp_path, resume=True)


def test_divergence_without_out_says_nothing_was_saved():
    cfg = mr.load_config(TINY, overrides=DIVERGING)
    with pytest.raises(TrainingDiverged, match=r"nothing was saved \(no --out\)"):
        train(cfg)


@pytest.mark.mpi
def test_divergence_under_mpiexec_exits_3_with_one_line(tmp_path):
    out = tmp_path / "D"
    proc = mpirun(2, ["python", "-m", "mgrit_resnet", "train", TINY, *sets(DIVERGING), "--out", str(out)], check=False)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and re.match(
        rf"mgrit-resnet: error: training diverged at epoch 3, step \d+ \(loss nan\); the last good checkpoint \(epoch 2\) "
        rf"is kept in {re.escape(str(out))}; lower train.lr",
        lines[0],
    ), proc.stderr
    assert "Traceback" not in proc.stderr
    assert finite_checkpoint(out / "checkpoint.pt")[0] and not (out / "summary.json").exists()


# ---------------------------------------------------------------- 2. --out onto a run
def test_out_onto_a_previous_run_needs_resume_or_force(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "holds a previous run (metrics.jsonl, checkpoint.pt); give --resume to continue it, --force to replace it" in err
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--out", out, "--resume", "--force"]) == 2
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--set", "train.seed=3", "--out", out, "--force"]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_without_out_says_once_that_nothing_is_saved(capsys):
    assert main(["train", TINY, "--set", "train.epochs=1"]) == 0
    assert capsys.readouterr().err.count("no --out, so nothing of this run is saved") == 1


def test_compare_out_onto_a_previous_comparison_needs_force(tmp_path, capsys):
    (tmp_path / "compare.json").write_text("[]")
    assert main(["compare", TINY, "--strategies", "serial", "--out", str(tmp_path)]) == 2
    assert "give --force to replace it" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. resume
@pytest.fixture
def two_epochs(tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "train", TINY, "--set", "train.epochs=2", "--out", str(out)]) == 0
    return out


def test_resume_allows_more_epochs_and_other_mgrit_settings(two_epochs, capsys):
    args = ["-q", "train", TINY, "--set", "train.epochs=3", "--set", "mgrit.coarsening=3", "--set", "mgrit.levels=2"]
    assert main([*args, "--out", str(two_epochs), "--resume"]) == 0
    assert len((two_epochs / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((two_epochs / "summary.json").read_text())["epochs"] == 3


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train.lr": 0.5}, ["train.lr: 0.02 -> 0.5"]),
        ({"train.batch_size": 20, "network.dtype": "float32"}, ["train.batch_size: 25 -> 20", "network.dtype: 'float64' -> 'float32'"]),
        ({"network.width": 8}, ["network.width: 4 -> 8"]),
        ({"data.n_train": 150}, ["data.n_train: 200 -> 150"]),
        ({"train.strategy": "exact", "train.seed": 1}, ["train.strategy: 'one_shot' -> 'exact'", "train.seed: 0 -> 1"]),
    ],
)
def test_resume_refuses_changed_settings_naming_each(two_epochs, capsys, overrides, named):
    assert main(["train", TINY, *sets({"train.epochs": 3, **overrides}), "--out", str(two_epochs), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mgrit-resnet: error: --resume: this config changes ") and "Traceback" not in err
    for text in named:
        assert text in err
    assert len((two_epochs / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_fewer_epochs_than_done(two_epochs, capsys):
    assert main(["train", TINY, "--set", "train.epochs=1", "--out", str(two_epochs), "--resume"]) == 2
    assert "train.epochs = 1 is below the 2 epochs already done" in capsys.readouterr().err


def test_resume_of_a_checkpoint_that_does_not_fit_the_model_is_one_message(two_epochs, capsys):
    path = two_epochs / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    del saved["config"]  # as an older version wrote it, and no config.toml beside it: only the tensors tell
    torch.save(saved, path)
    (two_epochs / "config.toml").unlink()
    assert main(["train", TINY, "--set", "network.width=6", "--out", str(two_epochs), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the network of this config (tensors of another shape: " in err and "Traceback" not in err


# ---------------------------------------------------------------- 4. provenance
def test_summary_and_solve_json_carry_provenance(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "train", TINY, "--set", "train.epochs=1", "--out", str(out)]) == 0
    block = json.loads((out / "summary.json").read_text())["provenance"]
    assert set(block) == PROVENANCE
    assert block["version"] == mr.__version__ and block["ranks"] == 1 and block["config"]["train"]["epochs"] == 1
    assert block["started"].endswith("+00:00") and block["git_commit"] is None or len(block["git_commit"]) == 40
    assert main(["-q", "solve", str(ROOT / "examples" / "dahlquist.toml"), "--json", str(tmp_path / "s.json")]) == 0
    solved = json.loads((tmp_path / "s.json").read_text())
    assert set(solved["provenance"]) == PROVENANCE and "residuals" in solved
    assert solved["provenance"]["config"]["problem"]["kind"] == "dahlquist"


def test_checkpoint_stores_the_resolved_config(two_epochs):
    saved = torch.load(two_epochs / "checkpoint.pt", weights_only=False)
    assert saved["config"]["train"]["epochs"] == 2 and saved["config"]["network"]["width"] == 4


# ---------------------------------------------------------------- 5. small ones
def test_checkpoint_is_0644_and_orphans_are_removed(two_epochs):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((two_epochs / "checkpoint.pt").stat().st_mode) == 0o644 & ~umask
    orphan = two_epochs / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert main(["-q", "train", TINY, "--set", "train.epochs=3", "--out", str(two_epochs), "--resume"]) == 0
    assert not orphan.exists()


def test_batch_larger_than_the_training_set_is_a_clear_error(capsys):
    cfg = mr.load_config(TINY, overrides={"train.batch_size": 500})
    with pytest.raises(ValueError, match=re.escape("train.batch_size = 500 is larger than the training set (data.n_train = 200)")):
        mr.training.check(cfg, 1)
    assert main(["train", TINY, "--set", "train.batch_size=201"]) == 2


@pytest.mark.parametrize(
    "key, value",
    [("network.depth", 5_000_000), ("network.depth", 12345678901234567890), ("network.width", 100_000), ("data.n_train", 10**10)],
)
def test_a_run_that_cannot_fit_in_memory_is_refused_before_any_work(key, value):
    from mgrit_resnet.training import check

    cfg = mr.load_config(ROOT / "examples" / "tiny_train.toml", {key: value})
    with pytest.raises(ValueError, match=r"needs about .* GiB per rank; this machine has .* GiB available"):
        check(cfg, 1)


def test_the_memory_check_names_what_sizes_the_run():
    from mgrit_resnet._checks import check_memory

    check_memory(2**30, "a run", limit=2**31)
    with pytest.raises(ValueError, match=r"a run needs about 2 GiB per rank; this machine has 1 GiB available"):
        check_memory(2**31, "a run", limit=2**30)


def test_a_full_disk_is_a_clear_error_that_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    from mgrit_resnet.training import checkpoint
    from mgrit_resnet.training.errors import OutputNotWritten

    cfg = mr.load_config(ROOT / "examples" / "tiny_train.toml", {"train.epochs": 3})
    out = tmp_path / "run"
    real, calls = checkpoint.save_atomically, []

    def fill_the_disk_at_epoch_2(payload, path):
        calls.append(payload["epoch"])
        if payload["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(payload, path)

    monkeypatch.setattr(checkpoint, "save_atomically", fill_the_disk_at_epoch_2)
    with pytest.raises(
        OutputNotWritten,
        match=r"cannot save epoch 2 to .*No space left on device; the last checkpoint \(epoch 1\) is kept",
    ):
        train(cfg, None, out)
    assert calls == [1, 2]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / "summary.json").exists()
    assert not list(out.glob(".*.tmp"))


def test_a_metrics_row_that_cannot_be_appended_is_cut_back_and_the_message_says_what_is_on_disk(tmp_path, monkeypatch):
    from mgrit_resnet.training import loop
    from mgrit_resnet.training.errors import OutputNotWritten

    cfg = mr.load_config(ROOT / "examples" / "tiny_train.toml", {"train.epochs": 3})
    out = tmp_path / "run"
    real_write = os.write
    appends = []

    def half_a_row_then_full(fd, data):  # the second epoch's row: half of it reaches the disk, then ENOSPC
        if data.endswith(b"\n") and data.startswith(b"{"):
            appends.append(len(data))
            if len(appends) == 2:
                real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(loop.os, "write", half_a_row_then_full)
    with pytest.raises(OutputNotWritten, match=r"cannot save epoch 2 to .*checkpoint.pt holds epoch 2, metrics.jsonl ends before it"):
        train(cfg, None, out)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["epoch"] == 1, "no torn row"
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2


def test_a_summary_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    from mgrit_resnet.training import checkpoint
    from mgrit_resnet.training.errors import OutputNotWritten

    real = checkpoint.write_text_atomically

    def no_room(path, text):  # config.toml and metrics.jsonl fit, the summary does not
        if path.name == "summary.json":
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(checkpoint, "write_text_atomically", no_room)
    cfg = mr.load_config(ROOT / "examples" / "tiny_train.toml", {"train.epochs": 1})
    with pytest.raises(OutputNotWritten, match=r"summary.json: .*No space left on device; the checkpoint of epoch 1 is kept"):
        train(cfg, None, tmp_path / "run")
