"""Training: determinism, exact resume, portable checkpoints, data x layer parallelism, the train and plot verbs."""

import json
import re

import pytest
import torch
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet import training
from mgrit_resnet.cli import main

TINY = str(ROOT / "examples" / "tiny_train.toml")
TIMES = ("epoch_time", "wall_time", "bytes_sent")


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def train(n, out, *sets, resume=False):
    args = ["python", "-m", "mgrit_resnet", "train", TINY, "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return mpirun(n, args + (["--resume"] if resume else []), timeout=300)


def test_train_writes_the_interface_outputs_and_plots(tmp_path, capsys):
    out = tmp_path / "missing" / "run"  # missing parents are created
    assert main(["train", TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train_accuracy", "val_accuracy", "final_loss", "epochs", "wall_time", "ranks", "strategy", "owned_layers"):
        assert key in summary
    assert summary["ranks"] == 1 and summary["strategy"] == "one_shot" and summary["owned_layers"] == [[0, 13]]
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] < rows[0]["train_loss"]
    assert all(r["fwd_iterations"] == 1 and r["adj_iterations"] == 1 for r in rows)
    assert 'strategy = "one_shot"' in (out / "config.toml").read_text()
    assert summary["val_accuracy"] > 0.6, "synthetic clusters are learnable in two epochs"
    assert main(["plot", str(out)]) == 0
    assert (out / "training.png").stat().st_size > 10_000
    assert "epoch   2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, message",
    [
        (["--set", "train.data_parallel=3"], "train.data_parallel must divide the number of ranks (1); got 3"),
        (["--resume"], "--resume needs --out DIR"),
        (["--set", "data.name=mnist"], "data.name must be one of"),
        (["--set", "train.checkpoint_every=0"], "train.checkpoint_every must be an integer >= 1"),
    ],
)
def test_train_bad_input(options, message, capsys):
    assert main(["train", TINY, *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_resume_from_an_unreadable_checkpoint_is_bad_input(tmp_path, content, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    assert main(["train", TINY, "--out", str(tmp_path), "--resume"]) == 2
    assert "--resume: cannot read" in capsys.readouterr().err


def test_train_refuses_an_output_folder_it_cannot_create(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["train", TINY, "--out", str(blocker / "run")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err


def test_plot_of_a_folder_without_metrics(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2])
def test_training_is_deterministic(tmp_path, n):
    train(n, tmp_path / "a")
    train(n, tmp_path / "b")
    assert without_times(metrics(tmp_path / "a")) == without_times(metrics(tmp_path / "b"))
    for row in metrics(tmp_path / "a"):
        # The network's MGRIT messages count: every rank sends boundary states in every epoch.
        assert len(row["bytes_sent"]) == n and (n == 1 or min(row["bytes_sent"]) > 0)


@pytest.mark.mpi
def test_resume_continues_exactly_and_checkpoints_move_between_rank_counts(tmp_path):
    train(2, tmp_path / "full", "train.epochs=3")
    train(2, tmp_path / "part", "train.epochs=2")
    train(2, tmp_path / "part", "train.epochs=3", resume=True)
    full, part = metrics(tmp_path / "full"), metrics(tmp_path / "part")
    assert len(part) == 3
    for a, b in zip(full, part):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6) and a["val_accuracy"] == b["val_accuracy"]
    state_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    state_part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for key, value in state_full.items():
        torch.testing.assert_close(state_part[key], value, rtol=1e-6, atol=1e-9)
    # The P = 2 checkpoint, evaluated at P = 1 and P = 3 (nothing left to train): the same validation accuracy.
    expected = json.loads((tmp_path / "full" / "summary.json").read_text())["val_accuracy"]
    for n in (1, 3):
        train(n, tmp_path / "full", "train.epochs=3", resume=True)
        summary = json.loads((tmp_path / "full" / "summary.json").read_text())
        assert summary["ranks"] == n and summary["val_accuracy"] == expected


class Stopped(Exception):
    """Stands for a job killed after an epoch's metrics, before its checkpoint."""


def test_checkpoints_every_few_epochs_resume_exactly_from_the_last(tmp_path):
    def run(out, epochs, every, stop_at=None, resume=False):
        seen = []

        def on_epoch(row):
            path = out / "checkpoint.pt"
            seen.append(torch.load(path, weights_only=False)["epoch"] if path.exists() else 0)
            if row["epoch"] == stop_at:
                raise Stopped

        cfg = mr.load_config(TINY, overrides={"train.epochs": epochs, "train.checkpoint_every": every})
        training.train(cfg, out=out, resume=resume, on_epoch=on_epoch)
        return seen

    # Saved after epochs 2, 4 and the last, 5: on_epoch runs before the epoch's save.
    assert run(tmp_path / "every", 5, 2) == [0, 0, 2, 2, 4]
    assert torch.load(tmp_path / "every" / "checkpoint.pt", weights_only=False)["epoch"] == 5
    run(tmp_path / "each", 5, 1)
    assert without_times(metrics(tmp_path / "every")) == without_times(metrics(tmp_path / "each"))
    # Stopped in epoch 4: the checkpoint and metrics.jsonl hold epoch 2; the resumed run trains 3 to 5 as the whole run did.
    with pytest.raises(Stopped):
        run(tmp_path / "stopped", 5, 2, stop_at=4)
    assert [r["epoch"] for r in metrics(tmp_path / "stopped")] == [1, 2]
    run(tmp_path / "stopped", 5, 2, resume=True)
    assert without_times(metrics(tmp_path / "stopped")) == without_times(metrics(tmp_path / "each"))
    resumed = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)["model"]
    whole = torch.load(tmp_path / "each" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[k], v) for k, v in whole.items())


LAGGED_PASS = ["mgrit.levels=2", "mgrit.coarsening=4", "mgrit.relax=F", "mgrit.skip_first_down=true", "network.coarse_weights=mean"]


@pytest.mark.mpi
def test_the_lagged_coarse_pass_resumes_exactly_and_at_another_rank_count(tmp_path):
    # The warm starts of a one-shot run with one coarse pass are the coarse right-hand sides: the checkpoint carries
    # them, so a resumed run continues as if never stopped (bitwise at the same rank count, to rounding at another).
    train(2, tmp_path / "full", *LAGGED_PASS, "train.epochs=3")
    train(2, tmp_path / "same", *LAGGED_PASS, "train.epochs=2")
    train(2, tmp_path / "same", *LAGGED_PASS, "train.epochs=3", resume=True)
    train(2, tmp_path / "other", *LAGGED_PASS, "train.epochs=2")
    train(3, tmp_path / "other", *LAGGED_PASS, "train.epochs=3", resume=True)
    full = metrics(tmp_path / "full")
    assert without_times(metrics(tmp_path / "same")) == without_times(full)
    other = metrics(tmp_path / "other")
    for a, b in zip(full, other, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9) and a["val_accuracy"] == b["val_accuracy"]
        assert a["fwd_residual"] == pytest.approx(b["fwd_residual"], rel=1e-6)
    # Without the right-hand sides the resumed epoch would start from plain coarse passes: a different run.
    cold = tmp_path / "cold"
    train(2, cold, *LAGGED_PASS, "train.epochs=2")
    checkpoint = torch.load(cold / "checkpoint.pt", weights_only=False)
    for entry in checkpoint["warm_start"].values():
        assert entry["forward_rhs"] is not None and entry["adjoint_rhs"] is not None
        entry["forward_rhs"] = entry["adjoint_rhs"] = None
    torch.save(checkpoint, cold / "checkpoint.pt")
    train(2, cold, *LAGGED_PASS, "train.epochs=3", resume=True)
    assert metrics(cold)[2]["fwd_residual"] != pytest.approx(full[2]["fwd_residual"], rel=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("strategy", ["exact", "serial"])
def test_data_times_layer_parallel_gives_the_same_gradient(tmp_path, strategy):
    results = {}
    for d in (1, 2):
        path = tmp_path / f"g{d}.pt"
        mpirun(4, ["python", "tests/mpi/training.py", str(path), str(d), strategy], timeout=120)
        results[d] = torch.load(path, weights_only=False)
        assert results[d]["replicated_identical"] and results[d]["same_loss"]
    assert results[1]["loss"] == pytest.approx(results[2]["loss"], rel=1e-12)
    for key, g in results[1]["grads"].items():
        torch.testing.assert_close(results[2]["grads"][key], g, rtol=1e-9, atol=1e-12)


LBFGS = [
    "train.optimizer=lbfgs",
    "network.depth=16",
    "network.dtype=float64",
    "data.n_train=300",
    "data.n_val=100",
    "train.epochs=3",
    "train.lbfgs_iters=4",
]


@pytest.mark.petsc
@pytest.mark.mpi
@pytest.mark.parametrize("n, strategy", [(1, "serial"), (2, "exact")])
def test_lbfgs_from_petsc_tao_decreases_the_peaks_objective(tmp_path, n, strategy):
    args = ["python", "-m", "mgrit_resnet", "train", str(ROOT / "examples" / "peaks.toml"), "--out", str(tmp_path / "run")]
    for s in [*LBFGS, f"train.strategy={strategy}"]:
        args += ["--set", s]
    mpirun(n, args, timeout=300)
    losses = [r["train_loss"] for r in metrics(tmp_path / "run")]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.petsc
@pytest.mark.mpi
@pytest.mark.parametrize("n, strategy", [(1, "serial"), (2, "exact")])
def test_lbfgs_epochs_chunk_one_run(tmp_path, n, strategy):
    """The quasi-Newton memory carries over between epochs: 3 epochs of 4 iterations are one run of 12."""
    sets = ["train.optimizer=lbfgs", f"train.strategy={strategy}"]
    train(n, tmp_path / "chunked", *sets, "train.epochs=3", "train.lbfgs_iters=4")
    train(n, tmp_path / "whole", *sets, "train.epochs=1", "train.lbfgs_iters=12")
    chunked = torch.load(tmp_path / "chunked" / "checkpoint.pt", weights_only=False)["model"]
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    for key, value in whole.items():
        assert torch.equal(chunked[key], value), key


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.optimizer=lbfgs", "train.strategy=one_shot"], "train.optimizer = 'lbfgs' needs exact gradients"),
    ],
)
def test_lbfgs_bad_combinations(sets, message, capsys):
    args = ["train", TINY]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["serial", "one_shot", "trgl"])
def test_resume_without_an_output_folder_is_the_same_error_for_every_strategy(strategy):
    from mgrit_resnet.training import train as train_in_process

    cfg = mr.load_config(TINY, {"train.strategy": strategy})
    with pytest.raises(ValueError, match=re.escape("--resume needs --out DIR (the folder holding checkpoint.pt)")):
        train_in_process(cfg, None, out=None, resume=True)


def test_the_registry_holds_every_strategy_of_the_config():
    from mgrit_resnet.training.registry import REGISTRY
    from mgrit_resnet.training.strategy import Strategy

    assert tuple(REGISTRY) == mr.config.STRATEGIES
    assert all(issubclass(kind, Strategy) for kind in REGISTRY.values())
    assert {name for name, kind in REGISTRY.items() if kind.blockwise} == set(mr.config.LOCAL_STRATEGIES)


@pytest.mark.parametrize("strategy", ["serial", "exact"])
def test_the_performance_model_times_the_training_loops_step(strategy):
    """perfmodel.training_step and the loop's batch gradient are one step: the same loss and the same parameters after it."""
    from mgrit_resnet.studies.perfmodel import training_step
    from mgrit_resnet.training.loop import prepare
    from mgrit_resnet.training.optim import make_optimizer
    from mgrit_resnet.training.whole import batch_gradient

    cfg = mr.load_config(TINY, {"train.strategy": strategy})
    (groups, data, ours), (_, _, theirs) = prepare(cfg, None), prepare(cfg, None)
    index = data.batches(0, 25, 0)[0]
    params = [p for _, p in ours.named_parameters()]
    optimizer = make_optimizer(cfg.train, params)
    optimizer.zero_grad(set_to_none=False)
    loss, _ = batch_gradient(groups, ours, params, data.train_x, data.train_y, index, key=0)
    optimizer.step()
    other = make_optimizer(cfg.train, [p for _, p in theirs.named_parameters()])
    assert training_step(theirs.module, other, data.train_x[index], data.train_y[index], key=0) == loss
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), name


def train_example_on_two_ranks(tmp_path, example, sets):
    """``examples/<example>`` trained by the CLI on 2 ranks with ``sets``: its summary and its checkpoint."""
    args = ["python", "-m", "mgrit_resnet", "train", str(ROOT / "examples" / example), "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    mpirun(2, args, timeout=300)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    return summary, torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)


@pytest.mark.mpi
def test_the_mnist_example_trains_one_shot_on_two_ranks_with_its_pooled_head(tmp_path):
    # examples/mnist5k.toml on a few images: the classifier reads the state pooled to 4 x 4 (8 channels x 16 cells),
    # the lagged coarse pass runs on 2 ranks, the network learns (global pooling alone: about chance here).
    summary, saved = train_example_on_two_ranks(tmp_path, "mnist5k.toml", ["data.n_train=500", "data.n_val=200", "train.epochs=3"])
    assert summary["ranks"] == 2 and summary["strategy"] == "one_shot" and summary["val_accuracy"] > 0.3  # 0.11 with head_pool = 1
    assert tuple(saved["model"]["classifier.weight"].shape) == (10, 8 * 16)
    assert saved["epoch"] == 3 and all(e["forward_rhs"] is not None for e in saved["warm_start"].values())


def test_the_demo_config_trains_one_shot_on_two_ranks(tmp_path):
    # make demo's job (examples/demo.toml: a user block, the lagged coarse pass) on a few images: it runs on 2 ranks,
    # learns, and its one checkpoint (after the last epoch) carries the coarse right-hand sides that resume needs.
    summary, saved = train_example_on_two_ranks(tmp_path, "demo.toml", ["data.n_train=200", "data.n_val=100", "train.epochs=2"])
    assert summary["ranks"] == 2 and summary["strategy"] == "one_shot" and summary["val_accuracy"] > 0.2
    losses = [r["train_loss"] for r in metrics(tmp_path / "run")]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert saved["epoch"] == 2 and all(e["forward_rhs"] is not None for e in saved["warm_start"].values())
