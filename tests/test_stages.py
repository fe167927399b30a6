"""Staged networks on one process: the stages, the serial twin, the layers alone (``ends=False``), ranks as threads, the checks.

The equivalence at 1-4 MPI ranks is in ``test_stages_mpi.py``.
"""

import pytest
import torch
from torch import nn

import mgrit_resnet as mr
from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import (
    LayerParallel,
    NetworkSpec,
    ODEResNet,
    Stage,
    StagedParallel,
    StagedResNet,
    parallel_from_config,
    serial_from_config,
)
from mgrit_resnet.nn.layers import ResidualLayer, seeded_block, stage_seed
from mgrit_resnet.nn.staged import SOLVER_OPTIONS, merge_summaries
from mgrit_resnet.nn.stages import check_stages

F64 = torch.float64


def conv_block(channels):
    return lambda n: nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, dtype=F64), nn.Tanh())


def parts():
    """Your own conv stage (3 ch, 4x4), a strided transition (x10), a built-in conv stage (4 ch, 2x2), a dense stage."""
    torch.manual_seed(7)
    opening = nn.Conv2d(1, 3, 3, padding=1, dtype=F64)
    transitions = [nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=F64), nn.Sequential(nn.Flatten(), nn.Linear(16, 5, dtype=F64))]
    closing = nn.Linear(5, 2, dtype=F64)
    stages = [Stage(5, 1.0, block=conv_block(3)), Stage(6, 2.0, kind="conv", width=4), Stage(5, 1.0, kind="dense", width=5)]
    return stages, transitions, opening, closing


def serial(**kw):
    stages, transitions, opening, closing = parts()
    return StagedResNet(stages, transitions, opening=opening, closing=closing, seed=3, **kw)


def batch(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn((n, 1, 4, 4), generator=g, dtype=F64), torch.tensor([0, 1, 1, 0][:n])


# ---------------------------------------------------------------------- stages
def test_a_stage_is_your_block_or_a_builtin_kind():
    assert not Stage(4, 1.0, block=conv_block(3)).builtin and Stage(4, 1.0, kind="conv", width=3).builtin
    with pytest.raises(TypeError, match="needs block=make_block, or a built-in kind="):
        Stage(4, 1.0)
    with pytest.raises(TypeError, match="either block=make_block or a built-in kind= and width=, not both"):
        Stage(4, 1.0, block=conv_block(3), width=3)
    with pytest.raises(ValueError, match="depth must be an integer >= 1; got 0"):
        Stage(0, 1.0, kind="dense", width=3)
    with pytest.raises(ValueError, match="t_final must be a finite real number > 0"):
        Stage(3, float("inf"), kind="dense", width=3)
    with pytest.raises(ValueError, match="kind must be one of 'dense', 'conv'; got 'rnn'"):
        Stage(3, 1.0, kind="rnn", width=3)
    with pytest.raises(ValueError, match="activation must be one of"):
        Stage(3, 1.0, kind="dense", width=3, activation="sin")
    with pytest.raises(TypeError, match="block must be a callable"):
        Stage(3, 1.0, block="conv")


def test_the_stage_lists_are_checked():
    stages, transitions = check_stages(
        [dict(depth=3, t_final=1.0, kind="dense", width=2), Stage(3, 1.0, kind="dense", width=2)], [nn.Identity()]
    )
    assert stages[0] == Stage(3, 1.0, kind="dense", width=2) and len(transitions) == 1
    with pytest.raises(TypeError, match="stages must be a non-empty list of Stage"):
        check_stages(Stage(3, 1.0, kind="dense", width=2), [])
    with pytest.raises(TypeError, match=r"stages\[1\]: unknown keys \['widht'\]"):
        check_stages([Stage(3, 1.0, kind="dense", width=2), dict(depth=3, t_final=1.0, kind="dense", widht=2)], [nn.Identity()])
    with pytest.raises(ValueError, match=r"stages\[0\]: depth must be an integer >= 1"):
        check_stages([dict(depth=0, t_final=1.0, kind="dense", width=2)], [])
    with pytest.raises(TypeError, match=r"stages\[0\] must be a Stage"):
        check_stages([3], [])
    with pytest.raises(ValueError, match="3 stages need 2 transitions; got 3"):
        check_stages([Stage(3, 1.0, kind="dense", width=2)] * 3, [nn.Identity()] * 3)
    with pytest.raises(TypeError, match="transitions must be a list of modules"):
        check_stages([Stage(3, 1.0, kind="dense", width=2)] * 2, nn.Identity())
    with pytest.raises(ValueError, match=r"stages\[1\].depth must be at least 2 \* ranks - 1 = 5 .* got 4"):
        check_stages([Stage(5, 1.0, kind="dense", width=2), Stage(4, 1.0, kind="dense", width=2)], [nn.Identity()], ranks=3)


# ---------------------------------------------------------------------- the serial twin
def test_the_serial_twin_is_the_stages_and_transitions_in_turn():
    net = serial()
    x, _ = batch()
    state = net.opening(x)
    for s, stage in enumerate(net.stages):
        h = stage.t_final / stage.depth
        for layer in stage.layers:
            f = layer(state) if s == 0 else torch.tanh(stage.spec.ops.pre(state, layer.weight, layer.bias))
            state = torch.add(state, f, alpha=h)
        if s < 2:
            state = net.transitions[s](state)
    assert torch.equal(net(x), net.closing(state))
    keys = list(net.state_dict())
    assert keys[:2] == ["opening.weight", "opening.bias"] and keys[-2:] == ["closing.weight", "closing.bias"]
    assert "stages.0.layers.4.0.weight" in keys and "stages.1.layers.3.bias" in keys and "transitions.1.1.weight" in keys
    assert net.depths == [5, 6, 5]


def test_layer_n_of_stage_s_is_drawn_from_seed_stage_and_layer():
    net = serial()
    for n in range(5):
        block = seeded_block(conv_block(3), n, stage_seed(3, 0))
        assert torch.equal(net.stages[0].layers[n][0].weight, block[0].weight)
    spec = NetworkSpec(kind="conv", width=4, depth=6, t_final=2.0, dtype="float64")
    assert torch.equal(net.stages[1].layers[2].weight, ResidualLayer(spec, 2, stage_seed(3, 1), torch.device("cpu")).weight)
    again = serial()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    same_blocks = StagedResNet([Stage(3, 1.0, block=conv_block(3))] * 2, [nn.Identity()], seed=3)
    assert not torch.equal(same_blocks.stages[0].layers[0][0].weight, same_blocks.stages[1].layers[0][0].weight), (
        "each stage its own stream"
    )


def test_a_transition_that_does_not_fit_the_next_stage():
    stages, transitions, opening, closing = parts()
    transitions[0] = nn.Conv2d(3, 6, 3, stride=2, padding=1, dtype=F64)
    fits = r"transitions\[0\] gives states of shape \(6, 2, 2\) \(torch.float64\), which do not fit stages\[1\]: "
    with pytest.raises(
        ValueError, match=fits + r"the states of conv layers of width 4 must have shape \(batch, 4, H, W\); got \(2, 6, 2, 2\)"
    ):
        StagedResNet(stages, transitions, opening=opening, closing=closing, input_shape=(1, 4, 4))
    net = StagedResNet(stages, transitions, opening=opening, closing=closing)  # checked on the first call
    with pytest.raises(ValueError, match=fits + r".* got \(3, 6, 2, 2\)"):
        net(batch()[0])
    stages[0] = Stage(5, 1.0, block=conv_block(2))
    with pytest.raises(
        ValueError, match=r"the opening gives states of shape \(3, 4, 4\) .* stages\[0\]: layer 0: the block raised RuntimeError"
    ):
        StagedResNet(stages, parts()[1], opening=opening, closing=closing, input_shape=(1, 4, 4))
    transitions = parts()[1]
    transitions[1] = nn.Linear(3, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"transitions\[1\] cannot take the states of stages\[1\], of shape \(4, 2, 2\) .*RuntimeError"):
        StagedResNet(parts()[0], transitions, opening=opening, closing=closing, input_shape=(1, 4, 4))


def test_inputs_are_checked_against_the_input_shape():
    net = serial(input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"the network input must have shape \(batch, 1, 4, 4\); got \(2, 1, 5, 5\)"):
        net(torch.zeros(2, 1, 5, 5, dtype=F64))
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
        serial(input_shape=(1, 0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        net(torch.full((2, 1, 4, 4), float("nan"), dtype=F64))


# ---------------------------------------------------------------------- the layers alone
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_builtin_layers_alone_match_their_serial_twin(kind):
    spec = NetworkSpec(kind=kind, width=3, depth=5, dtype="float64")
    serial_net, par = ODEResNet(spec, seed=2, ends=False), LayerParallel(spec, seed=2, ends=False, levels=1)
    assert list(par.state_dict()) == list(serial_net.state_dict()) == [f"layers.{n}.{k}" for n in range(5) for k in ("weight", "bias")]
    x = torch.randn((2, 3) if kind == "dense" else (2, 3, 4, 4), dtype=F64)
    assert torch.equal(par(x), serial_net(x)) and torch.equal(par.predict(x), serial_net(x))
    assert list(par.full_state_dict()) == list(serial_net.state_dict())
    with pytest.raises(ValueError, match="the states of .* layers of width 3 must have shape"):
        par(torch.zeros(2, 4, dtype=F64))


def test_the_layers_alone_take_no_ends():
    with pytest.raises(TypeError, match="ends=False is the layers alone: pass no opening and no closing"):
        LayerParallel(block=conv_block(3), depth=3, t_final=1.0, opening=nn.Identity(), ends=False)
    with pytest.raises(TypeError, match="ends must be true or false"):
        ODEResNet(NetworkSpec(depth=3), ends=0)


# ---------------------------------------------------------------------- layer-parallel, ranks as threads
@pytest.mark.parametrize("size", [2, 3])
def test_staged_parallel_matches_the_serial_twin(size):
    net = serial(input_shape=(1, 4, 4))
    x, y = batch()
    xs = x.clone().requires_grad_()
    out = net(xs)
    nn.functional.cross_entropy(out, y).backward()
    reference = {k: p.grad for k, p in net.named_parameters()}
    per_rank = [parts() for _ in range(size)]  # modules are built outside the threads: torch's generator is shared

    def program(backend):
        stages, transitions, opening, closing = per_rank[backend.rank]
        par = StagedParallel(stages, transitions, opening=opening, closing=closing, seed=3, comm=backend, levels=2, tol=1e-13)
        xp = x.clone().requires_grad_()
        logits = par(xp)
        nn.functional.cross_entropy(logits, y).backward()
        return logits.detach(), xp.grad, par.full_grad_dict(), par.full_state_dict(), par.stats

    for logits, input_grad, grads, state, stats in ThreadWorld(size).run(program):
        torch.testing.assert_close(logits, out.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(input_grad, xs.grad, rtol=1e-10, atol=1e-14)
        assert list(grads) == list(reference) and list(state) == list(net.state_dict())
        for k, g in reference.items():
            torch.testing.assert_close(grads[k], g, rtol=1e-10, atol=1e-14)
        assert len(stats.stages) == 3 and stats.forward["converged"] and stats.adjoint["converged"]
        assert len(stats.forward["steps_per_rank"]) == size


def test_solver_options_warm_starts_and_errors():
    stages, transitions, opening, closing = parts()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['level'\]"):
        StagedParallel(stages, transitions, opening=opening, closing=closing, level=2)
    assert "levels" in SOLVER_OPTIONS and "warm_start" in SOLVER_OPTIONS and "comm" not in SOLVER_OPTIONS
    par = StagedParallel(stages, transitions, opening=opening, closing=closing, levels=2, fwd_iters=1, bwd_iters=1, warm_start=True)
    x, y = batch()
    par.track_grad_error = True
    assert all(stage.track_grad_error for stage in par.stages)
    nn.functional.cross_entropy(par(x, key="a"), y).backward()
    assert par.stats.grad_error is not None and len(par.stats.stages) == 3
    warm = par.warm_state_dict()
    assert list(warm) == ["a"] and len(warm["a"]["stages"]) == 3 and par.warm_start_bytes() > 0
    par.load_warm_state_dict(warm)
    with pytest.raises(ValueError, match="hold 2 stages; this network has 3"):
        par.load_warm_state_dict({"a": {"fingerprint": warm["a"]["fingerprint"], "stages": warm["a"]["stages"][:2]}})
    state = par.full_state_dict()
    with pytest.raises(ValueError, match=r"state dict does not match this network \(depths \[5, 6, 5\]\): missing \['closing.bias'\]"):
        par.load_full_state_dict({k: v for k, v in state.items() if k != "closing.bias"})
    par.load_full_state_dict(state)
    assert par.layer_owner(1, 3) == 0
    with pytest.raises(ValueError, match=r"stage must be an integer in \[0, 2\]"):
        par.layer_owner(3, 0)


def test_merged_stats_of_the_stages():
    a = dict(iterations=2, residuals=[3.0, 0.0], converged=True, steps_per_rank=[4, 5], bytes_per_rank=[1, 2], wall_time=0.5)
    b = dict(iterations=1, residuals=[4.0], converged=False, steps_per_rank=[1, 1], bytes_per_rank=[0, 1], wall_time=0.25)
    merged = merge_summaries([a, b])
    assert merged == dict(iterations=2, residuals=[5.0, 4.0], converged=False, steps_per_rank=[5, 6], bytes_per_rank=[1, 3], wall_time=0.75)
    assert merge_summaries([a, {}]) == {}


# ---------------------------------------------------------------------- from the config
STAGED = {"network.kind": "conv", "network.in_channels": 1, "network.image_size": 6, "network.depths": [5, 5, 5]}
STAGED |= {"network.widths": [2, 3, 4], "network.dtype": "float64", "network.n_classes": 3}


def test_config_stage_lists():
    from mgrit_resnet.config import ConfigError, stage_depths

    cfg = mr.load_config(None, STAGED)
    assert stage_depths(cfg.network) == [5, 5, 5] and stage_depths(mr.load_config().network) == [64]
    with pytest.raises(ConfigError, match=r"one entry per stage each; got 3 depths \[5, 5, 5\] and 2 widths \[2, 3\]"):
        mr.load_config(None, {**STAGED, "network.widths": [2, 3]})
    with pytest.raises(ConfigError, match=r"network.depths\[1\] must be an integer >= 1; got 0"):
        mr.load_config(None, {**STAGED, "network.depths": [5, 0, 5]})
    with pytest.raises(ConfigError, match="network.widths must be a list of integers >= 1, one per stage"):
        mr.load_config(None, {**STAGED, "network.widths": 3})
    with pytest.raises(ConfigError, match="with network.kind = 'module', build\\(options\\) returns the stages"):
        mr.load_config(None, {"network.kind": "module", "network.module": "a.py:build", "network.depths": [3], "network.widths": [3]})
    with pytest.raises(ValueError, match=r"network.depths = \[5, 5, 5\] makes a network of stages, not a NetworkSpec"):
        NetworkSpec.from_config(cfg.network)


def test_builtin_stages_from_the_config():
    cfg = mr.load_config(None, STAGED)
    net = serial_from_config(cfg.network, seed=2)
    assert isinstance(net, StagedResNet) and net.depths == [5, 5, 5] and net.input_shape == (1, 6, 6)
    tail = [k for k in net.state_dict() if not k.startswith("stages.")]
    assert tail == ["opening.0.weight", "opening.0.bias", "transitions.0.0.weight", "transitions.0.0.bias"] + [
        "transitions.1.0.weight",
        "transitions.1.0.bias",
        "closing.2.weight",
        "closing.2.bias",
    ]
    x = torch.randn(4, 1, 6, 6, dtype=F64)
    state = net.opening(x)
    assert state.shape == (4, 2, 6, 6) and net.transitions[0](state).shape == (4, 3, 3, 3), "a strided 3x3 conv halves the side"
    out = net(x)

    def program(backend):
        par = parallel_from_config(cfg.network, {"levels": 2, "tol": 1e-13}, comm=backend, seed=2)
        return par(x).detach(), par.full_state_dict()

    for logits, state in ThreadWorld(2).run(program):
        torch.testing.assert_close(logits, out.detach(), rtol=1e-12, atol=0)
        assert list(state) == list(net.state_dict()) and all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_builder_may_return_stages():
    def build(options):
        c = options["channels"]
        return {
            "stages": [Stage(5, 1.0, block=conv_block(c)), dict(depth=5, t_final=1.0, kind="conv", width=2 * c)],
            "transitions": [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)],
            "opening": nn.Conv2d(1, c, 3, padding=1),
            "closing": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 3)),
        }

    network = {"kind": "module", "module": build, "options": {"channels": 3}, "dtype": "float64", "device": "cpu"}
    net = serial_from_config(network, seed=1)
    assert isinstance(net, StagedResNet) and net.dtype == F64 and net.transitions[0].weight.dtype == F64
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    par = parallel_from_config(network, {"levels": 1}, seed=1)
    assert isinstance(par, StagedParallel) and torch.equal(par(x), net(x))
    with pytest.raises(TypeError, match="build\\(options\\) returns stages: build the network with mgrit_resnet.nn.serial_from_config"):
        LayerParallel.from_config(network, {})
    with pytest.raises(TypeError, match="a network of stages is a mapping with the keys stages, transitions, opening, closing"):
        serial_from_config({**network, "module": lambda options: {"stage": []}})


def test_training_checks_every_stage():
    from mgrit_resnet.training.checks import check

    cfg = mr.load_config(None, {**STAGED, "network.depths": [5, 4, 5], "data.name": "synthetic"})
    with pytest.raises(ValueError, match=r"network.depths\[1\] = 4 < 2 \* ranks - 1 = 5: some rank would hold no layer"):
        check(cfg, 3)
    check(cfg, 2)
    local = cfg.with_overrides({"train.strategy": "local"})  # block-wise: no block may straddle a transition
    with pytest.raises(ValueError, match=r"train.blocks = 0 \(one block per rank: 2\) cannot cut network.depths = \[5, 4, 5\]"):
        check(local, 2)
    check(local.with_overrides({"train.blocks": 3}), 2)


def test_builtin_stages_pool_the_closing_to_head_pool():
    from mgrit_resnet.config import ConfigError
    from mgrit_resnet.nn.configured import builtin_staged_parts

    plain = serial_from_config(mr.load_config(None, STAGED).network, seed=2)
    cfg = mr.load_config(None, {**STAGED, "network.head_pool": 2})  # sides 6, 3, 2: the final state is 2x2
    net = serial_from_config(cfg.network, seed=2)
    assert list(net.state_dict()) == list(plain.state_dict()), "the same keys: closing.2 is the classifier"
    assert net.closing[2].weight.shape == (3, 4 * 2 * 2) and plain.closing[2].weight.shape == (3, 4)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in net.state_dict().items() if not k.startswith("closing."))
    x = torch.randn(4, 1, 6, 6, dtype=F64)
    finals = []
    for model in (net, plain):
        model.closing.register_forward_pre_hook(lambda module, args: finals.append(args[0]))
    out, out_plain = net(x), plain(x)
    assert finals[0].shape == (4, 4, 2, 2) and torch.equal(finals[0], finals[1]), "only the closing differs"
    linear = net.closing[2]
    expected = nn.functional.adaptive_avg_pool2d(finals[0], 2).flatten(1) @ linear.weight.T + linear.bias
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-15)
    global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), plain.closing[2])
    assert torch.equal(out_plain, global_pool(finals[1])), "head_pool = 1: global average pooling, bitwise as before"

    def program(backend):
        par = parallel_from_config(cfg.network, {"levels": 2, "tol": 1e-13}, comm=backend, seed=2)
        return par(x).detach()

    for logits in ThreadWorld(2).run(program):
        torch.testing.assert_close(logits, out.detach(), rtol=1e-12, atol=0)
    side = r"\(at most the side 2 of the final state: network.image_size = 6, halved \(rounding up\) by the 2 stride-2 transitions"
    with pytest.raises(ConfigError, match=r"network.head_pool must be an integer in \[1, 2\] " + side + r" of network.depths\); got 3"):
        mr.load_config(None, {**STAGED, "network.head_pool": 3})
    with pytest.raises(ValueError, match=r"network.head_pool must be an integer in \[1, 4\] .*; got 5"):  # not through load_config
        builtin_staged_parts({**cfg.network.as_dict(), "image_size": 7, "depths": [5, 5], "widths": [2, 3], "head_pool": 5}, seed=0)
    with pytest.raises(ValueError, match=r"network.head_pool = 2 but network.kind = 'dense': network.head_pool applies to conv networks"):
        mr.load_config(None, {**STAGED, "network.kind": "dense", "network.head_pool": 2})
