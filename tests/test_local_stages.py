"""Block-wise local training (local, trgl) of a network of stages: blocks never straddle a transition.

The plan (which layers of which stage every block holds) is checked as pure
integers; the blocks against the serial :class:`~mgrit_resnet.nn.StagedResNet`;
training under the CLI at 1, 2 and 3 ranks against each other, as
``test_local.py`` checks a network of one stage.
"""

import itertools
import json

import pytest
import torch
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.nn import StagedResNet, serial_from_config
from mgrit_resnet.training import check, local, train
from mgrit_resnet.training.blocks import StagedBlock
from mgrit_resnet.training.plan import block_bounds, split_evenly, stage_blocks, stage_layers

TINY = str(ROOT / "examples" / "tiny_train.toml")
TIMES = ("epoch_time", "bytes_sent")
#: Three conv stages of 3, 2 and 3 layers (2, 3 and 4 channels at 6x6, 3x3 and 2x2) on the tiny config's synthetic data.
STAGED = {"network.kind": "conv", "network.in_channels": 1, "network.image_size": 6, "network.depths": [3, 2, 3]}
STAGED |= {"network.widths": [2, 3, 4], "data.n_train": 60, "data.n_val": 30, "train.batch_size": 15}


def config(**train):
    return mr.load_config(TINY, {**STAGED, **{f"train.{k}": v for k, v in train.items()}})


def sets(pairs):
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


# ---------------------------------------------------------------------- the plan
def test_blocks_end_at_stage_boundaries_and_one_stage_is_cut_as_before():
    assert block_bounds([3, 2, 3], 5) == [(0, range(0, 2)), (0, range(2, 3)), (1, range(0, 2)), (2, range(0, 2)), (2, range(2, 3))]
    assert block_bounds([3, 2, 3], 3) == [(0, range(0, 3)), (1, range(0, 2)), (2, range(0, 3))]
    assert stage_blocks([10, 2], 3) == [2, 1] and stage_blocks([8, 8, 8], 4) == [2, 1, 1] and stage_blocks([10, 2], 12) == [10, 2]
    for depth, k in itertools.product(range(1, 14), range(1, 14)):
        if k <= depth:
            assert block_bounds([depth], k) == [(0, r) for r in split_evenly(depth, k)], "one stage: the cut of a one-stage network"
    for depths in ([1, 1], [3, 2, 3], [5, 1, 4], [2, 7], [4, 4, 4, 4]):
        for k in range(len(depths), sum(depths) + 1):
            cut = block_bounds(depths, k)
            assert len(cut) == k and all(len(layers) >= 1 for _, layers in cut)
            for s, depth in enumerate(depths):  # each stage is covered in order by its own blocks: none straddles a transition
                mine = [layers for stage, layers in cut if stage == s]
                assert mine and mine[0].start == 0 and mine[-1].stop == depth
                assert all(a.stop == b.start for a, b in zip(mine, mine[1:]))
            assert [stage for stage, _ in cut] == sorted(stage for stage, _ in cut)
            # the largest block is as small as any split of k blocks, one or more per stage, makes it
            best = min(
                max(-(-d // c) for d, c in zip(depths, counts))
                for counts in itertools.product(*(range(1, d + 1) for d in depths))
                if sum(counts) == k
            )
            assert max(len(layers) for _, layers in cut) == best, (depths, k)


def test_the_layers_a_rank_holds_of_every_stage():
    cut = block_bounds([3, 2, 3], 5)
    owned = split_evenly(5, 3)
    assert [stage_layers(cut, mine, [3, 2, 3]) for mine in owned] == [
        [range(0, 3), range(0, 0), range(0, 0)],
        [range(3, 3), range(0, 2), range(0, 2)],
        [range(3, 3), range(2, 2), range(2, 3)],
    ]


def test_a_block_count_that_would_straddle_a_transition_is_refused(capsys):
    with pytest.raises(ValueError, match=r"2 blocks cannot cut stages of \[3, 2, 3\] layers without a block that straddles"):
        stage_blocks([3, 2, 3], 2)
    with pytest.raises(ValueError, match=r"between 3 and 8 blocks can"):
        block_bounds([3, 2, 3], 9)
    with pytest.raises(
        ValueError,
        match=r"train.blocks \(2\) cannot cut network.depths = \[3, 2, 3\] without a block that straddles a transition: "
        r"a block holds layers of one stage, so at least 3 blocks \(one per stage\) are needed; set train.blocks >= 3",
    ):
        check(config(strategy="local", blocks=2), 1)
    with pytest.raises(ValueError, match=r"train.blocks = 0 \(one block per rank: 2\) cannot cut network.depths = \[3, 2, 3\]"):
        check(config(strategy="trgl"), 2)
    with pytest.raises(
        ValueError, match=r"train.blocks \(9\) must be at most the number of layers of all stages \(sum of network.depths = 8\)"
    ):
        check(config(strategy="local", blocks=9), 1)
    check(config(strategy="trgl"), 3)  # one block per rank, one per stage
    assert main(["train", TINY, *sets({**STAGED, "train.strategy": "local", "train.blocks": 2})]) == 2
    assert "without a block that straddles a transition" in capsys.readouterr().err


@pytest.mark.mpi
def test_the_refusal_is_one_message_and_exit_2_under_mpiexec():
    proc = mpirun(
        2, ["python", "-m", "mgrit_resnet", "train", TINY, *sets({**STAGED, "train.strategy": "local"})], timeout=120, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.count("train.blocks = 0 (one block per rank: 2) cannot cut network.depths = [3, 2, 3]") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------- the blocks
def test_the_stack_of_blocks_is_the_staged_resnet_and_its_checkpoint_loads_into_it(tmp_path):
    cfg = config(strategy="trgl", blocks=5, head_hidden=5)
    trainer, data = local.prepare(cfg, None)
    reference = serial_from_config(cfg.network, seed=cfg.train.seed)
    assert isinstance(reference, StagedResNet)
    network, heads = trainer.full_state()
    assert list(network) == list(reference.state_dict()), "keyed and ordered as StagedResNet.state_dict()"
    for key, value in reference.state_dict().items():
        assert torch.equal(network[key], value), key
    assert sorted({".".join(k.split(".")[:2]) for k in heads}) == [f"heads.{k}" for k in range(4)]
    blocks = trainer.blocks
    assert all(isinstance(b, StagedBlock) for b in blocks)
    assert [(b.stage, b.layer_range) for b in blocks] == block_bounds([3, 2, 3], 5)
    # The transition into a stage leads the stage's first block; block 0 holds the opening; the last head is the closing.
    assert blocks[0].entry is not None and {k.split(".")[0] for k in blocks[0].portable_parameters()} >= {"opening"}
    assert blocks[1].entry is None and blocks[3].entry is not None and blocks[4].entry is None
    assert any(k.startswith("transitions.0.") for k in blocks[2].portable_parameters())
    assert any(k.startswith("transitions.1.") for k in blocks[3].portable_parameters())
    assert blocks[4].head is not None and all(not k.startswith("heads.") for k in blocks[4].portable_parameters())
    state = data.val_x
    with torch.no_grad():
        for block in blocks:
            state, logits, kinetic = block(state)
            assert state.shape[1:] == [(2, 6, 6), (2, 6, 6), (3, 3, 3), (4, 2, 2), (4, 2, 2)][block.index]
            assert logits.shape == (len(data.val_y), 3) and float(kinetic) > 0
        assert torch.equal(logits, reference(data.val_x)), "bitwise the serial network of stages"
    # After training, the written checkpoint is the StagedResNet with the reported accuracy.
    overrides = {**STAGED, "train.strategy": "trgl", "train.blocks": 5, "train.local_schedule": "sequential"}
    assert main(["train", TINY, *sets(overrides), "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    reference.load_state_dict(saved["model"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    with torch.no_grad():
        accuracy = float((reference(data.val_x).argmax(1) == data.val_y).double().mean())
    assert accuracy == summary["val_accuracy"] == summary["head_val_accuracy"][-1]
    assert summary["blocks"] == [[0, 0, 2], [0, 2, 3], [1, 0, 2], [2, 0, 2], [2, 2, 3]], "[stage, start, stop]"
    assert summary["owned_layers"] == [[[0, 3], [0, 2], [0, 3]]]


@pytest.mark.parametrize("head_hidden", [0, 4])
def test_the_heads_of_every_stage_pool_to_head_pool(head_hidden):
    train_keys = {"train.strategy": "local", "train.blocks": 5, "train.head_hidden": head_hidden}
    cfg = mr.load_config(TINY, {**STAGED, "network.head_pool": 2, **train_keys})
    trainer, data = local.prepare(cfg, None)
    reference = serial_from_config(cfg.network, seed=cfg.train.seed)
    blocks = trainer.blocks
    assert [spec.image_size for spec in trainer.staged.specs] == [6, 3, 2] and all(spec.head_pool == 2 for spec in trainer.staged.specs)
    for block in blocks[:-1]:  # stages of 2, 2, 3 and 4 channels: each head reads its channels pooled to 2x2
        head = block.head if head_hidden == 0 else block.head[0]
        assert head.weight.shape == ((3,) if head_hidden == 0 else (4,)) + (block.spec.width * 4,)
    assert blocks[-1].head is trainer.staged.closing and blocks[-1].head[2].weight.shape == (3, 4 * 4), "the closing's classifier"
    state = data.val_x
    with torch.no_grad():
        for block in blocks:
            state, logits, _ = block(state)
            assert logits.shape == (len(data.val_y), 3)
        assert torch.equal(logits, reference(data.val_x)), "bitwise the serial network of stages with head_pool = 2"


def test_a_transition_learns_from_the_block_it_leads_only():
    cfg = config(strategy="local", blocks=5, optimizer="sgd", lr=0.5)
    trainer, data = local.prepare(cfg, None)
    x, y = data.train_x[:15], data.train_y[:15]

    def snapshot():
        return {k: v.detach().clone() for b in trainer.blocks for k, v in b.portable_parameters().items()}

    for k, changes in ((1, "stages.0.layers.2."), (2, "transitions.0.")):
        before = snapshot()
        trainer.step(x, y, (k,), torch.zeros(5, 4, dtype=torch.float64).numpy())
        after = snapshot()
        moved = {key for key in before if not torch.equal(before[key], after[key])}
        assert moved == set(trainer.blocks[k].portable_parameters()), f"block {k} trains its own parameters only"
        assert any(key.startswith(changes) for key in moved)


def test_a_staged_local_run_resumes_exactly(tmp_path):
    overrides = {**STAGED, "train.strategy": "trgl", "train.blocks": 4, "train.local_schedule": "multilap", "train.laps": 2}
    full, half = tmp_path / "full", tmp_path / "half"
    cfg = mr.load_config(TINY, overrides)

    def on_epoch(row):
        if row["epoch"] == 3:  # epochs 1-2 are on disk, the third not yet
            half.mkdir()
            for name in ("checkpoint.pt", "metrics.jsonl"):
                (half / name).write_bytes((full / name).read_bytes())

    train(cfg, None, full, on_epoch=on_epoch)
    assert main(["train", TINY, *sets(overrides), "--out", str(half), "--resume"]) == 0
    rows = [without_times(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) for run in (full, half)]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    saved = [torch.load(run / "checkpoint.pt", weights_only=False) for run in (full, half)]
    for part in ("model", "heads"):
        for key, value in saved[0][part].items():
            assert torch.equal(saved[1][part][key], value), key


# ---------------------------------------------------------------------- at every rank count
RUNS = {
    "local": {"train.strategy": "local", "train.blocks": 5, "train.local_schedule": "parallel"},
    "trgl": {"train.strategy": "trgl", "train.blocks": 5, "train.local_schedule": "multilap", "train.laps": 2, "train.tau": 0.05},
}
RANKS = [1, 2, 3]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of :data:`RUNS` under ``mpiexec -n P mgrit-resnet train`` at every P of :data:`RANKS`: (summary, rows, checkpoint)."""
    out = {}
    for name, overrides in RUNS.items():
        for n in RANKS:
            folder = tmp_path_factory.mktemp(f"{name}{n}")
            mpirun(n, ["python", "-m", "mgrit_resnet", "train", TINY, *sets({**STAGED, **overrides}), "--out", str(folder)], timeout=240)
            summary = json.loads((folder / "summary.json").read_text())
            rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            out[name, n] = summary, without_times(rows), torch.load(folder / "checkpoint.pt", weights_only=False)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", list(RUNS))
def test_every_rank_count_gives_the_one_rank_result(runs, name, n):
    (summary, rows, saved), (summary_1, rows_1, saved_1) = runs[name, n], runs[name, 1]
    assert rows == rows_1 and len(rows) == (1 if name == "local" else 5) * 2
    assert summary["ranks"] == n and summary["head_val_accuracy"] == summary_1["head_val_accuracy"]
    assert summary["head_train_accuracy"] == summary_1["head_train_accuracy"] and summary["val_accuracy"] == summary_1["val_accuracy"]
    assert summary["blocks"] == [[0, 0, 2], [0, 2, 3], [1, 0, 2], [2, 0, 2], [2, 2, 3]]
    assert summary["owned_blocks"] == [[r.start, r.stop] for r in split_evenly(5, n)]
    cut = block_bounds([3, 2, 3], 5)
    owned = [[[r.start, r.stop] for r in stage_layers(cut, mine, [3, 2, 3])] for mine in split_evenly(5, n)]
    assert summary["owned_layers"] == owned, "every rank's layers of every stage"
    for part in ("model", "heads"):
        assert list(saved[part]) == list(saved_1[part])
        for key, value in saved_1[part].items():
            assert torch.equal(saved[part][key], value), f"{n} ranks: {key}"
    if n > 1:  # the pipe carried states of the stage each rank's last block ends in
        assert all(sent > 0 for sent in summary["bytes_sent"][:-1]) and summary["bytes_sent"][-1] == 0
