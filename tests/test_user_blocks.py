"""Your own network on one process: the serial twin, the general layer-parallel path (ranks as threads), the checks."""

import copy

import pytest
import torch
from torch import nn

from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import LayerParallel, NetworkSpec, ODEResNet

DEPTH, T = 7, 1.3


def conv_block(n):
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64))


def ends():
    g = torch.Generator().manual_seed(3)
    opening = nn.Conv2d(1, 3, 3, padding=1, dtype=torch.float64)
    closing = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2, dtype=torch.float64))
    with torch.no_grad():
        for p in [*opening.parameters(), *closing.parameters()]:
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.5)
    return opening, closing


def user(cls=ODEResNet, block=conv_block, depth=DEPTH, **kw):
    opening, closing = ends()
    return cls(block=block, depth=depth, t_final=T, opening=opening, closing=closing, seed=4, **kw)


def batch(size=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn((size, 1, 5, 5), generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1][:size])


def serial_reference(depth=DEPTH):
    net = user(depth=depth)
    x, y = batch()
    xs = x.clone().requires_grad_()
    out = net(xs)
    torch.nn.functional.cross_entropy(out, y).backward()
    return net, out.detach(), xs.grad, {k: p.grad for k, p in net.named_parameters()}


def test_the_serial_twin_is_the_forward_euler_loop():
    net = user()
    x, _ = batch()
    state = net.opening(x)
    for n in range(DEPTH):
        torch.manual_seed(0)  # the blocks do not depend on the global generator after construction
        state = torch.add(state, net.layers[n](state), alpha=T / DEPTH)
    assert torch.equal(net(x), net.closing(state))
    assert list(net.state_dict())[:2] == ["opening.weight", "opening.bias"] and "layers.6.2.bias" in net.state_dict()
    again = user()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items()), "seeded per layer"
    assert not torch.equal(net.layers[0][0].weight, net.layers[1][0].weight)


def relative(a, b):
    return float((a - b).abs().max()) / float(b.abs().max())


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("options", [dict(levels=1), dict(levels=2, coarsening=2, tol=1e-13), dict(levels=3, coarsening=2, tol=1e-13)])
def test_layer_parallel_matches_the_serial_twin(size, options):
    net, out, input_grad, grads = serial_reference()
    x, y = batch()
    # Modules are built outside the threads: torch's global generator is shared by them.
    ends_per_rank = [ends() for _ in range(size)]

    def program(backend):
        opening, closing = ends_per_rank[backend.rank]
        par = LayerParallel(block=conv_block, depth=DEPTH, t_final=T, opening=opening, closing=closing, seed=4, comm=backend, **options)
        xp = x.clone().requires_grad_()
        logits = par(xp)
        torch.nn.functional.cross_entropy(logits, y).backward()
        return logits.detach(), xp.grad, par.full_grad_dict(), par.full_state_dict(), par.stats

    for logits, xg, g, state, stats in ThreadWorld(size).run(program):
        assert list(g) == list(grads) and list(state) == list(net.state_dict())
        assert relative(logits, out) <= 1e-10 and relative(xg, input_grad) <= 1e-10
        assert max(relative(g[k], grads[k]) for k in grads) <= 1e-10
        assert stats.forward["converged"] and stats.adjoint["converged"]
        if options["levels"] == 1:
            assert torch.equal(logits, out) and torch.equal(xg, input_grad) and all(torch.equal(g[k], grads[k]) for k in grads)


def test_state_dicts_ownership_and_predict():
    net = user()
    par = user(LayerParallel, levels=2, coarsening=2, fwd_iters=1, bwd_iters=1)
    state = {k: v + 0.01 for k, v in net.state_dict().items()}
    par.load_full_state_dict(state)
    net.load_state_dict(state)
    assert all(torch.equal(v, state[k]) for k, v in par.full_state_dict().items())
    x, _ = batch()
    assert torch.equal(par.predict(x), net(x).detach())
    assert par.owned_layers == range(DEPTH) and par.layer_owner(6) == 0 and par.ops is None
    with pytest.raises(ValueError, match="state dict does not match this network"):
        par.load_full_state_dict({k: v for k, v in state.items() if k != "layers.3.0.bias"})


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls += 1
        return x * 0.5


def reshaping(n):
    return nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)


@pytest.mark.parametrize(
    "block, error, message",
    [
        (lambda n: "conv", TypeError, r"layer 0: make_block\(0\) must return a torch.nn.Module; got str"),
        (lambda n: nn.BatchNorm2d(3, dtype=torch.float64), ValueError, "layer 0 .*BatchNorm in training mode.*use GroupNorm or LayerNorm"),
        (lambda n: nn.Sequential(nn.Dropout(0.1)), ValueError, r"layer 0 \(Dropout '0'\): dropout draws a new mask"),
        (reshaping, ValueError, r"layer 0: the block maps a state of shape \(2, 3, 5, 5\) .* to \(2, 4, 5, 5\)"),
        (lambda n: nn.Identity() if n < 5 else Counter(), ValueError, "layer 5: its buffers changed from one evaluation to the next"),
        (
            lambda n: nn.Conv2d(3, 3, 3, padding=1, device="meta"),
            ValueError,
            "layer 0: parameter 'weight' is on meta, the network's device is cpu",
        ),
        (lambda n: 1 / 0 if n == 2 else nn.Identity(), ValueError, "layer 2: make_block.2. raised ZeroDivisionError"),
    ],
)
def test_refused_blocks(block, error, message):
    for cls in (ODEResNet, LayerParallel):
        with pytest.raises(error, match=message):
            user(cls, block=block, input_shape=(1, 5, 5))


def test_without_input_shape_the_first_call_checks_the_blocks():
    net = user(LayerParallel, block=reshaping, levels=1)
    x, _ = batch()
    with pytest.raises(ValueError, match=r"layer 0: the block maps a state of shape \(2, 3, 5, 5\)"):
        net(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net(torch.full((2, 1, 5, 5), float("nan"), dtype=torch.float64))


def test_an_eval_mode_batchnorm_is_a_fixed_affine_map_and_stays_one():
    def block(n):
        return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64), nn.BatchNorm2d(3, dtype=torch.float64).eval())

    net, par = user(block=block), user(LayerParallel, block=block, levels=2, coarsening=2, tol=1e-13)
    net.train()
    par.train()
    assert not net.layers[0][1].training and not par.layers["0"][1].training and par.opening.training
    x, _ = batch()
    torch.testing.assert_close(par(x), net(x), rtol=1e-10, atol=0)


def test_bad_arguments():
    spec = NetworkSpec(kind="dense", in_features=2, width=3, depth=6, dtype="float64")
    with pytest.raises(TypeError, match="either a NetworkSpec or block=make_block, not both"):
        LayerParallel(spec, block=conv_block)
    with pytest.raises(TypeError, match="needs depth="):
        LayerParallel(block=conv_block, t_final=1.0)
    with pytest.raises(TypeError, match="depth go with block=make_block"):
        ODEResNet(spec, depth=4)
    with pytest.raises(TypeError, match="pass a NetworkSpec or block=make_block"):
        ODEResNet()
    with pytest.raises(TypeError, match="the opening must be a torch.nn.Module; got int"):
        ODEResNet(block=conv_block, depth=3, t_final=1.0, opening=3)


def test_the_dense_kind_written_as_a_user_block_is_the_built_in_network():
    spec = NetworkSpec(kind="dense", in_features=2, width=4, depth=9, n_classes=3, dtype="float64")
    builtin = ODEResNet(spec, seed=6)

    def block(n):
        linear = nn.Linear(4, 4, dtype=torch.float64)
        linear.load_state_dict(builtin.layers[n].state_dict())
        return nn.Sequential(linear, nn.Tanh())

    opening = nn.Sequential(copy.deepcopy(builtin.opening), nn.Tanh())
    closing = copy.deepcopy(builtin.classifier)
    x = torch.randn(5, 2, dtype=torch.float64)
    for options in (dict(levels=1), dict(levels=3, coarsening=2, tol=1e-13)):
        mine = LayerParallel(block=block, depth=9, t_final=spec.t_final, opening=opening, closing=closing, **options)
        theirs = LayerParallel(spec, seed=6, **options)
        torch.testing.assert_close(mine(x), theirs(x), rtol=1e-12, atol=0)


def test_from_config_builds_a_user_network():
    def build(options):
        return conv_block, *ends()

    section = dict(kind="module", module=build, options={}, depth=DEPTH, t_final=T, dtype="float64", device="cpu")
    net = ODEResNet.from_config(section, seed=4)
    par = LayerParallel.from_config(section, {"levels": 2, "coarsening": 2, "tol": 1e-13}, seed=4)
    x, _ = batch()
    torch.testing.assert_close(par(x), net(x), rtol=1e-10, atol=0)
    assert torch.equal(net(x), user()(x))
