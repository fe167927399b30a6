"""Block-wise local training (local, trgl; parallel, sequential, multilap) and the compare verb."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.config import parse_overrides
from mgrit_resnet.nn import ODEResNet
from mgrit_resnet.training import local, plan, train
from mgrit_resnet.training.blocks import LocalBlock
from mgrit_resnet.training.plan import block_taus, split_evenly

TINY = str(ROOT / "examples" / "tiny_train.toml")
TIMES = ("epoch_time", "bytes_sent")


def config(**overrides):
    return mr.load_config(TINY, {f"train.{k}": v for k, v in overrides.items()})


def run(**overrides):
    """Train in-process; the result, the trainer and its final network and heads."""
    cfg = config(**overrides)
    prepared = local.prepare(cfg, None)
    result = train(cfg, None, prepared=prepared)
    return result, prepared[0], *prepared[0].full_state()


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_blocks_split_the_layers_contiguously_and_default_taus():
    assert split_evenly(13, 4) == [range(0, 4), range(4, 7), range(7, 10), range(10, 13)]
    assert split_evenly(4, 4) == [range(k, k + 1) for k in range(4)]
    assert block_taus(0.4, 4) == [0.2, 0.2, 0.4, 0.4]
    assert block_taus(0.4, 3) == [0.2, 0.4, 0.4]
    assert block_taus([1.0, 2.0], 2) == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"train.tau as a list needs one value per block \(3\); got 2 values"):
        block_taus([1.0, 2.0], 3)


def test_kinetic_term_equals_a_hand_computation():
    spec = mr.nn.NetworkSpec(kind="dense", in_features=2, width=2, depth=4, t_final=2.0, n_classes=3, dtype="float64")
    block = LocalBlock(spec, 1, range(1, 3), last=False, seed=5, device=torch.device("cpu"))
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]], dtype=torch.float64)
    h, expected, state = 0.5, 0.0, x.clone()
    for layer in block.layers:
        w, b = layer.weight.detach(), layer.bias.detach()
        rows = []
        for sample in state:
            rows.append([h * math.tanh(sum(w[i, j] * sample[j] for j in range(2)) + b[i]) for i in range(2)])
        g = torch.tensor(rows, dtype=torch.float64)
        expected += float((g**2).sum()) / 6  # mean over 3 samples x 2 features
        state = state + g
    out, logits, kinetic = block(x)
    assert float(kinetic.detach()) == pytest.approx(expected, rel=1e-14)
    torch.testing.assert_close(out, state, rtol=1e-14, atol=1e-14)
    assert logits.shape == (3, 3)


def test_trgl_step_minimises_cross_entropy_plus_the_kinetic_penalty():
    """One SGD step of a one-block trgl network moves the parameters along the hand-made loss's gradient."""
    cfg = config(strategy="trgl", blocks=1, tau=0.25, optimizer="sgd", momentum=0.0, lr=0.1)
    trainer, data = local.prepare(cfg, None)
    block = trainer.blocks[0]
    x, y = data.train_x[:10], data.train_y[:10]
    before = {k: v.detach().clone() for k, v in block.named_parameters()}
    _, logits, kinetic = block(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + kinetic / (2 * 0.25)
    grads = dict(zip(before, torch.autograd.grad(loss, list(block.parameters()))))
    stats = torch.zeros(1, 4, dtype=torch.float64).numpy()
    trainer.step(x, y, (0,), stats)
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * grads[name], rtol=1e-12, atol=1e-14)
    assert stats[0, 3] == 10 and stats[0, 2] == pytest.approx(10 * float(kinetic.detach()), rel=1e-12)


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_trgl_with_infinite_tau_is_local_exactly(schedule):
    plain, _, net_plain, heads_plain = run(strategy="local", blocks=3, local_schedule=schedule)
    inf, _, net_inf, heads_inf = run(strategy="trgl", blocks=3, local_schedule=schedule, tau=float("inf"))
    assert without_times(inf.metrics) == without_times(plain.metrics)
    for key, value in {**net_plain, **heads_plain}.items():
        assert torch.equal({**net_inf, **heads_inf}[key], value), key
    # A large finite tau approaches it (the penalty weight 1/(2 tau) -> 0).
    _, _, net_big, _ = run(strategy="trgl", blocks=3, local_schedule=schedule, tau=1e12)
    for key, value in net_plain.items():
        torch.testing.assert_close(net_big[key], value, rtol=1e-9, atol=1e-12)
    # A small tau does change the network.
    _, _, net_small, _ = run(strategy="trgl", blocks=3, local_schedule=schedule, tau=1e-3)
    assert not torch.equal(net_small["layers.0.weight"], net_plain["layers.0.weight"])


def test_no_gradient_crosses_a_block_boundary_in_parallel_mode():
    cfg = config(strategy="local", blocks=3)
    grads, inputs = [], []
    for perturb in (False, True):
        trainer, data = local.prepare(cfg, None)
        if perturb:  # another loss for the last block only
            with torch.no_grad():
                trainer.blocks[2].head.weight.mul_(-3.0)
        seen = []
        for block in trainer.blocks:
            block.register_forward_pre_hook(lambda module, args, seen=seen: seen.append((module.index, args[0])))
        captured = {}
        for block in trainer.blocks:
            for name, p in block.named_parameters():
                p.register_hook(lambda g, key=(block.index, name), captured=captured: captured.__setitem__(key, g.clone()))
        trainer.step(data.train_x[:25], data.train_y[:25], (0, 1, 2), torch.zeros(3, 4).numpy())
        grads.append(captured)
        inputs.append(seen)
    for index, x in inputs[0][1:]:
        assert x.grad_fn is None and not x.requires_grad, f"block {index} received an input attached to block {index - 1}'s graph"
    for key, g in grads[0].items():
        if key[0] < 2:
            assert torch.equal(grads[1][key], g), f"block {key[0]}'s gradient depends on block 2's loss ({key[1]})"
    assert not torch.equal(grads[1][(2, "layers.0.weight")], grads[0][(2, "layers.0.weight")])


def test_the_stack_of_blocks_is_the_odeResNet_and_the_checkpoint_loads_into_it(tmp_path):
    cfg = config(strategy="local", blocks=4)
    trainer, data = local.prepare(cfg, None)
    reference = ODEResNet.from_config(cfg.network, seed=cfg.train.seed)
    network, heads = trainer.full_state()
    assert list(network) == list(reference.state_dict()) and sorted(heads) == [
        f"heads.{k}.{p}" for k in range(3) for p in ("bias", "weight")
    ]
    for key, value in reference.state_dict().items():
        assert torch.equal(network[key], value), key
    state = data.val_x
    for block in trainer.blocks:
        state, logits, _ = block(state)
    assert torch.equal(logits, reference(data.val_x))
    # After training, the written checkpoint is an ODEResNet with the reported accuracy.
    assert main(["train", TINY, "--set", "train.strategy=trgl", "--set", "train.blocks=4", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    reference.load_state_dict(saved["model"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    accuracy = float((reference(data.val_x).argmax(1) == data.val_y).double().mean())
    assert accuracy == summary["val_accuracy"] == summary["head_val_accuracy"][-1]
    assert summary["best_head_val_accuracy"] == max(summary["head_val_accuracy"])
    assert summary["blocks"] == [[0, 4], [4, 7], [7, 10], [10, 13]] and summary["tau"] == [0.05, 0.05, 0.1, 0.1]


def test_a_checkpoint_is_written_after_every_epoch(tmp_path):
    cfg = config(strategy="local", blocks=2, local_schedule="sequential")
    seen = []

    def on_epoch(row):  # the checkpoint of the epochs before this one is on disk already
        if seen:
            saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
            assert saved["epoch"] == len(seen) and [r["epoch"] for r in saved["metrics"]] == seen
        seen.append(row["epoch"])

    result = train(cfg, None, tmp_path, on_epoch=on_epoch)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert len(seen) == 2 * cfg.train.epochs and saved["epoch"] == len(result.metrics) == len(seen)


def test_plot_of_a_local_run_draws_every_block_and_head(tmp_path, monkeypatch):
    from mgrit_resnet.studies import plot

    drawn = []
    original = plot._plot_blockwise
    monkeypatch.setattr(plot, "_plot_blockwise", lambda rows, title, path: drawn.append((rows, title)) or original(rows, title, path))
    sets = ["--set", "train.strategy=trgl", "--set", "train.blocks=3", "--set", "train.local_schedule=sequential"]
    assert main(["train", TINY, *sets, "--out", str(tmp_path)]) == 0
    assert main(["plot", str(tmp_path)]) == 0
    ((rows, title),) = drawn
    assert len(rows) == 6 and len(rows[0]["block_train_loss"]) == 3 and title.endswith("trgl")
    assert (tmp_path / "training.png").stat().st_size > 20_000


def test_mlp_heads_are_auxiliary_only_and_drawn_from_their_own_streams():
    cfg = config(strategy="trgl", blocks=3, head_hidden=6)
    trainer, _ = local.prepare(cfg, None)
    first, middle, last = trainer.blocks
    assert isinstance(last.head, torch.nn.Linear), "the last head is the network's classifier"
    for block in (first, middle):
        hidden, act, out = block.head
        assert hidden.weight.shape == (6, 4) and out.weight.shape == (3, 6) and act.act is trainer.spec.act
    assert not torch.equal(first.head[0].weight, middle.head[0].weight[:, :])
    plain, _ = local.prepare(config(strategy="trgl", blocks=3), None)
    assert torch.equal(plain.blocks[2].head.weight, last.head.weight)
    assert torch.equal(plain.blocks[0].layers[0].weight, first.layers[0].weight), "heads do not disturb the layers' streams"
    x = torch.randn(5, 3, dtype=torch.float64)
    state, logits, _ = first(x)
    assert logits.shape == (5, 3)


@pytest.mark.parametrize("head_hidden", [0, 5])
def test_every_head_reads_the_state_pooled_to_head_pool(head_hidden):
    conv = {"network.kind": "conv", "network.in_channels": 1, "network.image_size": 4, "network.width": 2, "network.head_pool": 2}
    train_keys = {"train.strategy": "local", "train.blocks": 3, "train.head_hidden": head_hidden, "train.epochs": 1}
    cfg = mr.load_config(TINY, {**conv, **train_keys, "data.n_train": 50, "data.n_val": 25})
    trainer, data = local.prepare(cfg, None)
    first, middle, last = trainer.blocks
    assert isinstance(last.head, torch.nn.Linear) and last.head.weight.shape == (3, 2 * 2 * 2), "the classifier: width * 2 * 2 inputs"
    for block in (first, middle):
        head = block.head if head_hidden == 0 else block.head[0]
        assert head.weight.shape == ((3, 8) if head_hidden == 0 else (5, 8)), "auxiliary heads read the pooled state too"
    reference = ODEResNet.from_config(cfg.network, seed=cfg.train.seed)
    state = data.val_x
    with torch.no_grad():
        for block in trainer.blocks:
            state, logits, _ = block(state)
            assert logits.shape == (25, 3)
        assert torch.equal(logits, reference(data.val_x)), "the stack of blocks is the ODEResNet with head_pool = 2"
    result = train(cfg, None, prepared=(trainer, data))
    assert len(result.metrics) == 1 and len(result.summary["head_val_accuracy"]) == 3
    assert all(0 <= a <= 1 for a in result.summary["head_val_accuracy"])


def test_schedules_spend_the_same_budget_per_block():
    assert plan.stages("parallel", 3, 4, 2) == [((0, 1, 2), 4)]
    assert plan.stages("sequential", 3, 4, 2) == [((0,), 4), ((1,), 4), ((2,), 4)]
    assert plan.stages("multilap", 2, 5, 2) == [((0,), 3), ((1,), 3), ((0,), 2), ((1,), 2)]
    result = run(strategy="local", blocks=3, local_schedule="multilap", laps=2, epochs=2)[0]
    assert [r["blocks_trained"] for r in result.metrics] == [[0], [1], [2], [0], [1], [2]]
    assert result.metrics[-1]["progress"] == 1.0


@pytest.fixture(scope="module")
def by_ranks(tmp_path_factory):
    out = {}
    for n in (1, 2, 3, 4):
        path = tmp_path_factory.mktemp("local") / f"r{n}.pt"
        mpirun(n, ["python", "tests/mpi/local_training.py", str(path)], timeout=180)
        out[n] = torch.load(path, weights_only=False)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", ["parallel", "sequential", "multilap"])
def test_every_rank_count_gives_the_one_process_result(by_ranks, schedule):
    reference, _, network, heads = run(strategy="trgl", blocks=4, local_schedule=schedule, epochs=2, tau=0.05)
    for n, report in by_ranks.items():
        got = report[schedule]
        assert got["metrics"] == without_times(reference.metrics), f"{n} ranks"
        owned = got["summary"]["owned_blocks"]
        assert got["summary"]["ranks"] == n and len(owned) == n and owned[0][0] == 0 and owned[-1][1] == 4
        assert got["summary"]["head_val_accuracy"] == reference.summary["head_val_accuracy"]
        assert got["root_only"] == [True] * n, "root_only: the network and heads on rank 0, None elsewhere"
        for key, value in {**network, **heads}.items():
            assert torch.equal({**got["network"], **got["heads"]}[key], value), f"{n} ranks: {key}"


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 4])
def test_data_groups_give_the_whole_batch_step(by_ranks, n):
    """Two data groups, each with half of every batch: the same training as one group, to round-off."""
    reference, _, network, heads = run(strategy="trgl", blocks=4, local_schedule="multilap", epochs=2, tau=0.05)
    got = by_ranks[n]["data_parallel"]
    assert got["summary"]["data_parallel"] == 2 and got["summary"]["ranks"] == n
    assert len(got["summary"]["owned_blocks"]) == n // 2, "the blocks are split over the ranks of one group"
    assert len(got["metrics"]) == len(reference.metrics)
    for row, want in zip(got["metrics"], without_times(reference.metrics), strict=True):
        assert row["blocks_trained"] == want["blocks_trained"] and row["head_val_accuracy"] == want["head_val_accuracy"]
        for key in ("train_loss", "train_accuracy", "kinetic", "block_train_loss"):
            np.testing.assert_allclose(np.array(row[key], dtype=float), np.array(want[key], dtype=float), rtol=1e-10, err_msg=key)
    for key, value in {**network, **heads}.items():
        torch.testing.assert_close({**got["network"], **got["heads"]}[key], value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.strategy=local", "train.blocks=14"], "train.blocks (14) must be at most network.depth (13)"),
        (
            ["train.strategy=trgl", "train.blocks=3", "train.tau=[1.0, 2.0]"],
            "train.tau as a list needs one value per block (3); got 2 values",
        ),
        (["train.strategy=trgl", "train.tau=0"], "train.tau must be a real number > 0; got 0.0"),
        (["train.strategy=local", "train.optimizer=lbfgs"], "train.optimizer must be 'sgd' or 'adam'; got 'lbfgs'"),
        (["train.strategy=local", "train.local_schedule=multilap", "train.laps=3"], "train.laps (3) must be at most train.epochs (2)"),
        (
            ["train.strategy=local", "train.local_schedule=greedy"],
            "train.local_schedule must be one of 'parallel', 'sequential', 'multilap'",
        ),
    ],
)
def test_local_bad_input(sets, message, capsys):
    args = ["train", TINY]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert message in capsys.readouterr().err


RESUMED = ["train.strategy=trgl", "train.blocks=4", "train.local_schedule=multilap", "train.laps=2", "train.tau=0.05"]
RESUMED += ["train.schedule=cosine"]  # the learning rate depends on the epoch: the schedules' state must come back too
RESUMED += ["train.head_hidden=8"]  # MLP heads: nested parameter names in the checkpoint and the optimiser states


def sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An uninterrupted run, and a copy of its checkpoint after 4 of its 8 epochs (as a crash would leave it)."""
    root = tmp_path_factory.mktemp("resume")
    full, half = root / "full", root / "half"
    cfg = mr.load_config(TINY, parse_overrides(RESUMED))

    def on_epoch(row):
        if row["epoch"] == 5:  # epochs 1-4 are on disk, the fifth not yet
            half.mkdir()
            for name in ("checkpoint.pt", "metrics.jsonl"):
                (half / name).write_bytes((full / name).read_bytes())

    train(cfg, None, full, on_epoch=on_epoch)
    assert torch.load(half / "checkpoint.pt", weights_only=False)["epoch"] == 4
    return full, half


def finished(run):
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, without_times(rows), torch.load(run / "checkpoint.pt", weights_only=False)


def assert_same_run(got, want):
    (summary, rows, saved), (summary_want, rows_want, saved_want) = got, want
    assert rows == rows_want and len(rows) == 8
    for key in ("head_train_accuracy", "head_val_accuracy", "final_loss"):
        assert summary[key] == summary_want[key], key
    for part in ("model", "heads"):
        for key, value in saved_want[part].items():
            assert torch.equal(saved[part][key], value), key
    assert saved["schedules"] == saved_want["schedules"]
    for block, state in saved_want["optimizers"].items():
        for name, moments in state["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(saved["optimizers"][block]["state"][name][key]), torch.as_tensor(value)), (
                    block,
                    name,
                    key,
                )


def test_local_resume_continues_exactly(interrupted, tmp_path):
    full, half = interrupted
    resumed = tmp_path / "run"
    resumed.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (resumed / name).write_bytes((half / name).read_bytes())
    assert main(["train", TINY, *sets(RESUMED), "--out", str(resumed), "--resume"]) == 0
    assert_same_run(finished(resumed), finished(full))


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_a_local_checkpoint_resumes_at_another_rank_count(interrupted, tmp_path, n):
    full, half = interrupted
    resumed = tmp_path / "run"
    resumed.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (resumed / name).write_bytes((half / name).read_bytes())
    mpirun(n, ["python", "-m", "mgrit_resnet", "train", TINY, *sets(RESUMED), "--out", str(resumed), "--resume"], timeout=180)
    summary, rows, saved = finished(resumed)
    assert summary["ranks"] == n
    assert_same_run((summary, rows, saved), finished(full))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ["train.strategy=one_shot"],
            "was written by train.strategy = 'trgl'; this run resumes serial, exact or one_shot checkpoints only",
        ),
        (["train.local_schedule=sequential"], "follows another schedule than this config"),
        (["train.laps=1"], "follows another schedule than this config"),
    ],
)
def test_local_resume_refuses_another_run(interrupted, tmp_path, change, message, capsys):
    _, half = interrupted
    (tmp_path / "checkpoint.pt").write_bytes((half / "checkpoint.pt").read_bytes())
    assert main(["train", TINY, *sets(RESUMED + change), "--out", str(tmp_path), "--resume"]) == 2
    assert message in capsys.readouterr().err


def test_whole_network_checkpoint_is_not_resumed_block_wise(tmp_path, capsys):
    assert main(["train", TINY, "--out", str(tmp_path)]) == 0
    assert main(["train", TINY, *sets(RESUMED), "--out", str(tmp_path), "--resume"]) == 2
    assert "was written by train.strategy = 'one_shot'; this run resumes local or trgl checkpoints only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "strategies, message",
    [
        ("serial,foo", "--strategies: unknown strategy 'foo'; allowed: serial, exact, one_shot, local, trgl"),
        ("local,local", "--strategies names a strategy twice"),
        (",", "--strategies takes a comma-separated list"),
    ],
)
def test_compare_bad_strategies(strategies, message, capsys):
    assert main(["compare", TINY, "--strategies", strategies]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.mpi
def test_compare_bad_input_under_mpiexec_exits_2_on_every_rank():
    args = ["python", "-m", "mgrit_resnet", "compare", TINY, "--strategies", "serial,local", "--set", "train.blocks=1"]
    proc = mpirun(2, args, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("train.blocks (1) must be at least the number of ranks (2)") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_compare_end_to_end_at_two_ranks(tmp_path):
    out = tmp_path / "cmp"
    args = ["python", "-m", "mgrit_resnet", "compare", TINY, "--strategies", "serial,one_shot,local,trgl", "--set", "train.blocks=3"]
    proc = mpirun(2, [*args, "--out", str(out)], timeout=240)
    assert proc.stdout.count("| trgl |") == 1, "only rank 0 prints"
    results = json.loads((out / "compare.json").read_text())
    assert [r["strategy"] for r in results] == ["serial", "one_shot", "local", "trgl"]
    assert (out / "compare.png").stat().st_size > 20_000 and "| local |" in (out / "compare.md").read_text()
    assert (out / "compare.csv").read_text().count("\n") == 5
    for r in results:
        assert r["ranks"] == 2 and len(r["peak_memory_mib"]) == 2 and min(r["peak_memory_mib"]) > 10
        assert r["memory_measure"] == "VmHWM"
    by_name = {r["strategy"]: r for r in results}
    assert by_name["one_shot"]["bytes_sent"][0] > 0 and by_name["serial"]["bytes_sent"] == [0, 0]
    assert len(by_name["trgl"]["head_val_accuracy"]) == 3 and by_name["serial"]["head_val_accuracy"] is None
    # The same numbers as the train verb with the same config.
    for name in ("serial", "trgl"):
        assert main(["train", TINY, "--set", f"train.strategy={name}", "--set", "train.blocks=3", "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "summary.json").read_text())["val_accuracy"] == by_name[name]["val_accuracy"]
    # local blocks only pass activations forward: rank 0 sends one state per sample and epoch (plus evaluation), rank 1 nothing.
    assert by_name["local"]["bytes_sent"][1] == 0 and by_name["local"]["bytes_sent"][0] > 0
