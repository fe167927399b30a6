"""The networks on one process: the serial twin, gradcheck, activations, initialisation, errors; ranks as threads."""

import pytest
import torch
from conftest import with_and_without_last_sweep

import mgrit_resnet as mr
from mgrit_resnet.comm.counting import CountingBackend
from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import ACTIVATIONS, LayerParallel, NetworkSpec, ODEResNet
from mgrit_resnet.nn.activations import ETA, smooth_relu


def tiny(**kw):
    return NetworkSpec(**dict(dict(kind="dense", in_features=2, width=3, depth=6, n_classes=2, dtype="float64"), **kw))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_gradcheck_through_both_mgrit_solves(kind):
    spec = tiny(kind=kind, in_channels=1, image_size=3, width=2)
    # tol = 0: iterate until the residual is exactly zero (two-level MGRIT is exact after finitely many iterations).
    par = LayerParallel(spec, levels=2, coarsening=2, tol=0.0, max_iter=20, seed=1)
    x = torch.randn((2, *spec.input_shape()), dtype=torch.float64, requires_grad=True)
    weight = par.layers["3"].weight
    assert torch.autograd.gradcheck(par, (x,))
    assert par.stats.forward["converged"] and par.stats.adjoint["converged"]
    # Parameter gradients: compare with finite differences of the loss in one residual weight.
    y = torch.tensor([0, 1])
    loss = torch.nn.functional.cross_entropy(par(x), y)
    loss.backward()
    eps, i = 1e-6, (0, 1) if kind == "dense" else (0, 1, 1, 2)
    with torch.no_grad():
        weight[i] += eps
        up = torch.nn.functional.cross_entropy(par(x), y)
        weight[i] -= 2 * eps
        down = torch.nn.functional.cross_entropy(par(x), y)
        weight[i] += eps
    assert float(weight.grad[i]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-6, abs=1e-9)


def test_serial_network_is_forward_euler():
    spec = tiny(activation="tanh")
    net = ODEResNet(spec, seed=2)
    x = torch.randn(4, 2, dtype=torch.float64)
    states = net.states(x)
    assert len(states) == spec.depth + 1
    for n, layer in enumerate(net.layers):
        expected = states[n] + spec.h * torch.tanh(states[n] @ layer.weight.T + layer.bias)
        torch.testing.assert_close(states[n + 1], expected, rtol=0, atol=1e-15)


def test_initialisation_depends_only_on_seed_and_layer():
    a = ODEResNet(tiny(depth=9), seed=4).state_dict()
    b = ODEResNet(tiny(depth=5), seed=4).state_dict()
    c = ODEResNet(tiny(depth=5, dtype="float32"), seed=4).state_dict()
    for key in b:
        if key.startswith("layers."):
            assert torch.equal(a[key], b[key])
        assert torch.equal(b[key].float(), c[key])
    assert not torch.equal(ODEResNet(tiny(), seed=5).layers[0].weight, ODEResNet(tiny(), seed=4).layers[0].weight)
    assert not torch.equal(a["layers.0.weight"], a["layers.1.weight"])


def test_smooth_relu_is_continuously_differentiable():
    z = torch.tensor([-1.0, -ETA, -0.05, 0.0, 0.05, ETA, 1.0], dtype=torch.float64, requires_grad=True)
    y = smooth_relu(z)
    expected = torch.where(z.abs() < ETA, z * z / (4 * ETA) + z / 2 + ETA / 4, torch.relu(z))
    torch.testing.assert_close(y, expected)
    assert torch.autograd.gradcheck(smooth_relu, (torch.linspace(-0.3, 0.3, 13, dtype=torch.float64).requires_grad_(),))
    # value and slope match at the joins |z| = eta
    for point in (-ETA, ETA):
        left, right = torch.tensor([point - 1e-9, point + 1e-9], dtype=torch.float64)
        assert float(smooth_relu(left)) == pytest.approx(float(smooth_relu(right)), abs=1e-8)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_is_the_autograd_derivative(name):
    act = ACTIVATIONS[name]
    z = torch.randn(50, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, dtype=torch.float64)
    a, saved = act.forward(z.detach())
    (expected,) = torch.autograd.grad(act.apply(z), z, g)
    assert torch.equal(act.backward(g, saved), expected)


def test_state_dict_round_trip_and_mismatch():
    spec = tiny()
    par = LayerParallel(spec, levels=1, seed=0)
    par.load_full_state_dict(ODEResNet(spec, seed=9).state_dict())
    assert all(torch.equal(v, ODEResNet(spec, seed=9).state_dict()[k]) for k, v in par.full_state_dict().items())
    with pytest.raises(ValueError, match="state dict does not match this network"):
        par.load_full_state_dict(ODEResNet(tiny(depth=5)).state_dict())


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(levels=2, coarsening=7), "mgrit.coarsening=7 leaves no coarse grid for network.depth=6"),
        (dict(fwd_iters=0), "fwd_iters must be an integer >= 1"),
        (dict(relax="CF"), "relax must be 'F', 'FCF'"),
        (dict(warm_start="yes"), "warm_start must be true or false"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        LayerParallel(tiny(), **options)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(3, 4), r"must have shape \(batch, 2\); got \(3, 4\)"),
        (torch.zeros(0, 2), r"got \(0, 2\)"),
        (torch.zeros(3, 2, dtype=torch.long), "floating-point"),
        (torch.tensor([[0.0, float("inf")]]), "NaN or infinite"),
        ([[0.0, 1.0]], "must be a torch.Tensor"),
    ],
)
def test_bad_input(x, message):
    for net in (ODEResNet(tiny()), LayerParallel(tiny(), levels=1)):
        with pytest.raises(ValueError, match=message):
            net(x)


def test_from_config_matches_the_interface():
    cfg = mr.load_config(overrides={"network.depth": 8, "network.dtype": "float64", "mgrit.levels": 2})
    net = mr.nn.ODEResNet.from_config(cfg.network, seed=0)
    par = mr.nn.LayerParallel.from_config(cfg.network, cfg.mgrit, comm=None, seed=0)
    assert par.owned_layers == range(8)
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(par(x), net(x), rtol=1e-10, atol=0)


def test_predict_is_the_exact_network_whatever_the_solver_settings():
    spec = tiny(depth=12)
    net = ODEResNet(spec, seed=3)
    par = LayerParallel(spec, levels=3, coarsening=2, fwd_iters=1, bwd_iters=1, seed=3)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(par.predict(x), net(x).detach())
    assert not torch.allclose(par(x), net(x), rtol=1e-8), "one iteration alone is not exact"


# ---------------------------------------------------------------------- ranks as threads
def test_two_calls_before_one_backward_at_two_ranks():
    """Each call's solves keep what its backward needs: reusing the solvers' channels must not overwrite it."""
    spec = tiny(depth=9)
    net = ODEResNet(spec, seed=3)
    x1, x2 = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    loss = torch.nn.functional.cross_entropy(net(x1), y) + 2 * torch.nn.functional.cross_entropy(net(x2), y)
    loss.backward()
    expected = {k: p.grad for k, p in net.named_parameters()}

    def program(backend):
        par = LayerParallel(spec, comm=backend, levels=2, coarsening=2, tol=0.0, max_iter=20, seed=3)
        first, second = par(x1), par(x2)
        (torch.nn.functional.cross_entropy(first, y) + 2 * torch.nn.functional.cross_entropy(second, y)).backward()
        return par.full_grad_dict()

    for grads in ThreadWorld(2).run(program):
        for key, value in expected.items():
            torch.testing.assert_close(grads[key], value, rtol=1e-10, atol=1e-13)


def _messages(inputs):
    """The ValueError each rank raises when rank r passes ``inputs[r]``."""
    spec = tiny()

    def program(backend):
        par = LayerParallel(spec, comm=backend, levels=1)
        try:
            par(inputs[backend.rank])
        except ValueError as error:
            return str(error)
        return None

    return ThreadWorld(len(inputs)).run(program)


def test_the_input_check_at_two_ranks():
    good = torch.zeros(3, 2, dtype=torch.float64)
    nan = good.clone()
    nan[0, 0] = float("nan")
    shape = "the dense network input must have shape (batch, 2); got (3, 4)"
    assert _messages([good, good]) == [None, None]
    assert _messages([torch.zeros(3, 4)] * 2) == [f"{shape} (on rank 0)"] * 2
    assert _messages([good, nan]) == ["the network input contains NaN or infinite values (on rank 1)"] * 2
    assert _messages([good, torch.zeros(3, 4)]) == [
        "the network input differs on rank 1: there it is of the wrong shape (every rank must pass the same input)",
        f"{shape} (on rank 1)",
    ]


def test_a_one_shot_step_pickles_nothing():
    """Per step at two ranks: one buffer gather for the input check and one per solve; no object collective."""
    spec = tiny(depth=13)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])

    def program(backend):
        counting = CountingBackend(backend)
        par = LayerParallel(spec, comm=counting, levels=3, coarsening=2, fwd_iters=2, bwd_iters=1, warm_start=True)
        optimizer = torch.optim.SGD(par.parameters(), lr=0.1)
        for step in range(3):
            if step == 1:
                counting.calls.clear()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(par(x, key=0), y).backward()
            optimizer.step()
        return {k: v / 2 for k, v in counting.calls.items()}

    for calls in ThreadWorld(2).run(program):
        assert calls.get("allgather", 0) == calls.get("gather", 0) == 0
        assert calls["allgather_buffer"] == 3 and calls["bcast_buffer"] == 2
        assert calls["allreduce_sum"] == 3 + 2  # the residuals: initial and after each iteration, forward and adjoint


def test_from_config_reads_the_mgrit_section_as_the_solver_does():
    cfg = mr.load_config(overrides={"network.depth": 8})
    with pytest.raises(ValueError, match="unknown \\[mgrit\\] key 'level'"):
        LayerParallel.from_config(cfg.network, {"level": 2})
    par = LayerParallel.from_config(cfg.network, {"levels": 2, "coarsening": 4})
    assert par.hierarchy.n_levels == 2 and par.hierarchy.factors[0] == 4
    assert par.ops.__class__.__name__ == "DenseOps" and par.stats.forward == {}


def test_set_iterations_turns_a_converged_network_into_a_fixed_count_one():
    par = LayerParallel(tiny(depth=8), levels=2, coarsening=2, tol=1e-12, seed=0)
    x = torch.randn(4, 2, dtype=torch.float64)
    par(x).sum().backward()
    assert par.stats.forward["iterations"] > 1 and par.stats.forward["converged"]
    par.set_iterations(1, 2)
    par(x).sum().backward()
    assert (par.stats.forward["iterations"], par.stats.adjoint["iterations"]) == (1, 2) and (par.fwd_iters, par.bwd_iters) == (1, 2)
    with pytest.raises(ValueError, match="bwd_iters"):
        par.set_iterations(1, 0)


def test_coarse_weights_is_a_network_key_that_only_the_layer_parallel_network_reads():
    import mgrit_resnet as mr
    from mgrit_resnet.nn import parallel_from_config

    cfg = mr.load_config(overrides={"network.coarse_weights": "mean", "mgrit.levels": 2, "network.depth": 8})
    par = LayerParallel.from_config(cfg.network, cfg.mgrit)
    assert par.steps.coarse_weights == "mean" and (0, 2) in par.steps.intervals
    assert torch.equal(ODEResNet.from_config(cfg.network).state_dict()["layers.0.weight"], par.layers["0"].weight)
    staged_cfg = mr.load_config(overrides={"network.coarse_weights": "mean", "network.depths": [3, 3], "network.widths": [3, 4]})
    staged = parallel_from_config(staged_cfg.network, cfg.mgrit)
    assert all(stage.steps.coarse_weights == "mean" for stage in staged.stages)
    with pytest.raises(ValueError, match="coarse_weights must be one of"):
        LayerParallel(tiny(), coarse_weights="average")
    with pytest.raises(ValueError, match="network.coarse_weights"):
        mr.load_config(overrides={"network.coarse_weights": "last"})


# ---------------------------------------------------------------------- network.head_pool
def conv_tiny(**kw):
    return tiny(**dict(dict(kind="conv", in_channels=1, image_size=5, width=3), **kw))


def test_head_pool_1_is_global_average_pooling_bitwise():
    from mgrit_resnet.nn.layers import _ROLE_CLASSIFIER, _uniform_init, classify

    spec = conv_tiny()
    assert spec.head_pool == 1 and spec == conv_tiny(head_pool=1)
    net = ODEResNet(spec, seed=2)
    assert net.classifier.weight.shape == (2, 3) and net.classifier.bias.shape == (2,), "width inputs, as before head_pool"
    weight, bias = _uniform_init(2, _ROLE_CLASSIFIER, 0, (2, 3), (2,), 3)  # the seeded draw with fan_in = width
    assert torch.equal(net.classifier.weight, weight) and torch.equal(net.classifier.bias, bias)
    state = net.states(torch.randn(4, 1, 5, 5, dtype=torch.float64))[-1].detach()
    a, b = state.clone().requires_grad_(), state.clone().requires_grad_()
    pooled, plain = classify(spec, net.classifier, a), net.classifier(b.mean(dim=(2, 3)))
    assert torch.equal(pooled, plain), "the logits of state.mean(dim=(2, 3)) through the Linear, bitwise"
    g = torch.randn_like(plain)
    pooled.backward(g)
    plain.backward(g)
    assert torch.equal(a.grad, b.grad), "and its adjoint"


@pytest.mark.parametrize("k", [2, 3])
def test_head_pool_k_pools_the_final_state_to_k_by_k_before_the_classifier(k):
    spec = conv_tiny(head_pool=k)
    net = ODEResNet(spec, seed=2)
    assert net.classifier.weight.shape == (2, 3 * k * k)
    assert float(net.classifier.weight.detach().abs().max()) <= 1 / (3 * k * k) ** 0.5, "drawn with fan_in = width * head_pool**2"
    assert torch.equal(net.layers[0].weight, ODEResNet(conv_tiny(), seed=2).layers[0].weight), "the layers do not change"
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    state = net.states(x)[-1]
    # adaptive average pooling by hand: cell i covers rows floor(i * 5 / k) to ceil((i + 1) * 5 / k), the same for columns
    edges = [(i * 5 // k, -(-(i + 1) * 5 // k)) for i in range(k)]
    cells = torch.stack([torch.stack([state[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for c0, c1 in edges], -1) for r0, r1 in edges], -2)
    torch.testing.assert_close(cells, torch.nn.functional.adaptive_avg_pool2d(state, k), rtol=0, atol=1e-15)
    expected = cells.flatten(1) @ net.classifier.weight.T + net.classifier.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-13, atol=1e-15)


def test_head_pool_layer_parallel_at_two_ranks():
    spec = conv_tiny(depth=7, image_size=6, width=2, head_pool=2)
    net = ODEResNet(spec, seed=3)
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    torch.nn.functional.cross_entropy(net(x), y).backward()

    def program(backend):
        par = LayerParallel(spec, comm=backend, levels=2, coarsening=2, tol=1e-13, seed=3)
        logits = par(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        return logits.detach(), par.full_grad_dict()

    for logits, grads in ThreadWorld(2).run(program):
        torch.testing.assert_close(logits, net(x).detach(), rtol=1e-12, atol=0)
        assert grads["classifier.weight"].shape == (2, 8)
        for key, p in net.named_parameters():
            torch.testing.assert_close(grads[key], p.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kind="dense", head_pool=2), r"network.head_pool = 2 but network.kind = 'dense': network.head_pool applies to conv "
         r"networks only .*a dense network takes network.head_pool = 1"),
        (dict(kind="conv", head_pool=0), r"network.head_pool must be an integer >= 1; got 0"),
        (dict(kind="conv", image_size=5, head_pool=6), r"network.head_pool must be an integer in \[1, 5\] \(at most the side 5 of the "
         r"final state: network.image_size = 5\); got 6"),
    ],
)  # fmt: skip
def test_bad_head_pool(options, message):
    with pytest.raises(ValueError, match=message):
        conv_tiny(**options)
    with pytest.raises(ValueError, match=message):  # a ConfigError, at load time
        mr.load_config(None, {f"network.{key}": value for key, value in options.items()})


def test_head_pool_is_not_read_by_a_user_network():
    from mgrit_resnet.nn import serial_from_config

    overrides = {"network.kind": "module", "network.module": "examples/user_block.py:build", "network.depth": 2}
    cfg = mr.load_config(None, {**overrides, "network.head_pool": 99})
    assert cfg.network.head_pool == 99, "like every built-in-only key, it is not checked"
    built, plain = serial_from_config(cfg.network, seed=1), serial_from_config(mr.load_config(None, overrides).network, seed=1)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(built(x), plain(x)), "nor read: the user's closing is the closing"


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "smooth_relu"])
def test_the_multilevel_adjoint_step_applies_the_step_size_once_to_the_same_values(kind, activation):
    from mgrit_resnet.nn.propagators import BuiltinSteps

    shape = dict(in_features=5, width=4) if kind == "dense" else dict(in_channels=1, image_size=6, width=3)
    spec = NetworkSpec(kind=kind, depth=4, n_classes=3, activation=activation, dtype="float64", **shape)
    net = ODEResNet(spec, seed=1)
    weights = {n: (layer.weight.detach(), layer.bias.detach()) for n, layer in enumerate(net.layers)}
    weights[(0, 2)] = weights[0]
    x0 = torch.randn(3, *([spec.width] if kind == "dense" else [spec.width, 6, 6]), dtype=torch.float64)
    steps = BuiltinSteps(spec, spec.fast_ops())
    forward = steps.forward_problem(x0, weights)
    state = x0
    for n in range(spec.depth):
        state = forward.step(state, n, n + 1, 0)
    lam = torch.randn_like(state)
    bitwise, folded = (steps.adjoint_problem(lam, forward, one_level=flag) for flag in (True, False))
    assert bitwise.bitwise and not folded.bitwise
    for start, stop, level in [(0, 1, 0), (1, 2, 0), (2, 4, 1)]:
        a, b = bitwise.step(lam, start, stop, level), folded.step(lam, start, stop, level)
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-15) and not torch.equal(a - lam, torch.zeros_like(a))
    for layer in (2, 3):  # the fine steps above went through layers 3 and 2
        for got, expected in zip(folded.parameter_grads(layer), bitwise.parameter_grads(layer)):
            assert torch.allclose(got, expected, rtol=1e-13, atol=1e-15) and expected.abs().max() > 0


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_builtin_parameter_gradients_taken_in_the_last_sweep_equal_a_pass_of_their_own(kind, monkeypatch):
    from mgrit_resnet.nn.propagators import AdjointProblem

    shape = dict(in_features=5, width=4) if kind == "dense" else dict(in_channels=1, image_size=6, width=3)
    spec = NetworkSpec(kind=kind, depth=9, n_classes=3, dtype="float64", **shape)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, *spec.input_shape(), generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])

    def one_shot():
        net = LayerParallel(spec, levels=3, coarsening=2, fwd_iters=2, bwd_iters=2, seed=0)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        return {name: p.grad.clone() for name, p in net.named_parameters()}

    announced, separate, calls = with_and_without_last_sweep(monkeypatch, AdjointProblem, one_shot)
    assert calls == 1, "the adjoint solve announces its last fine sweep once"
    assert announced.keys() == separate.keys() and all(torch.equal(announced[k], separate[k]) for k in separate)
    assert all(v.abs().max() > 0 for k, v in separate.items() if k.startswith("layers"))
