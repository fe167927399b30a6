"""``examples/slurm_peaks.sh`` as Slurm would run it, with a fake ``SLURM_*`` environment and a tiny config (seconds)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "examples" / "slurm_peaks.sh"
TINY = ["--set", "network.depth=13", "--set", "mgrit.levels=2", "--set", "mgrit.coarsening=2"]


def sbatch_like(tmp_path, *args, **env):
    """Run the script as a Slurm job of 2 tasks would, from the submit directory ``ROOT``; the finished process."""
    environment = dict(
        os.environ,
        SLURM_JOB_ID="777",
        SLURM_JOB_NAME="mgrit-peaks",
        SLURM_NTASKS="2",
        SLURM_SUBMIT_DIR=str(ROOT),
        CONFIG="examples/tiny_train.toml",
        OUT=str(tmp_path / "runs" / "peaks-slurm"),
        VENV=str(Path(sys.executable).parent.parent),
        MGRIT_RESNET_LOG_EVERY="0",
        **env,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
    )


def test_the_log_goes_to_the_submit_directory_and_the_run_folder_has_no_job_id():
    header = SCRIPT.read_text()
    assert "#SBATCH --output=slurm-%x-%j.out" in header
    assert "SLURM_JOB_ID}" not in header.split("OUT=")[1].splitlines()[0]


@pytest.mark.mpi
def test_a_slurm_job_runs_logs_progress_and_resumes_when_submitted_again(tmp_path):
    first = sbatch_like(tmp_path, *TINY, "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "runs" / "peaks-slurm"
    assert f"slurm_peaks.sh: job 777: 2 ranks via mpiexec, examples/tiny_train.toml -> {out}\n" in first.stderr
    assert "train one_shot: 1/1 epoch (100 %)" in first.stderr, "progress lines without a terminal"
    assert "one_shot on 2 rank(s)" in first.stdout and (out / "checkpoint.pt").is_file()
    second = sbatch_like(tmp_path, *TINY, "--set", "train.epochs=2")
    assert second.returncode == 0, second.stderr
    assert f"-> {out} (resuming)" in second.stderr
    assert "epoch   2" in second.stdout and "epoch   1 " not in second.stdout


@pytest.mark.mpi
def test_a_launcher_that_does_not_match_mpi4py_is_stopped(tmp_path):
    fake = tmp_path / "mpiexec"
    # N independent one-rank processes: a launcher whose MPI mpi4py does not use
    fake.write_text('#!/bin/bash\nn=$2; shift 2\nfor i in $(seq "$n"); do "$@" & done\nwait\n')
    fake.chmod(0o755)
    proc = sbatch_like(tmp_path, *TINY, MPIEXEC=str(fake))
    assert proc.returncode == 2
    assert "slurm_peaks.sh: mpiexec started 2 processes, but mgrit-resnet saw 'ranks 1' in them:" in proc.stderr
    assert not (tmp_path / "runs" / "peaks-slurm").exists()


@pytest.mark.mpi
def test_a_job_killed_before_its_first_checkpoint_is_started_over(tmp_path):
    out = tmp_path / "runs" / "peaks-slurm"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")  # what a job killed in its first epoch leaves
    proc = sbatch_like(tmp_path, *TINY, "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert f"-> {out} (starting over: no checkpoint)" in proc.stderr and (out / "checkpoint.pt").is_file()
