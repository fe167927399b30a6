"""The general path's cheaper adjoint: the flipped-kernel input VJP for user convolutions, and parameter gradients in the last sweep."""

import pytest
import torch
from conftest import with_and_without_last_sweep
from torch import nn

from mgrit_resnet import MGRIT
from mgrit_resnet.nn import LayerParallel, ODEResNet
from mgrit_resnet.nn.conv_vjp import FastConvVJP, FlippedConv2d, input_grad_only
from mgrit_resnet.nn.module_steps import ModuleAdjoint
from mgrit_resnet.problems import Dahlquist


def relative(a, b):
    return float((a - b).abs().max()) / float(b.abs().max())


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=4, kernel_size=1, bias=False),
        dict(in_channels=2, out_channels=3, kernel_size=(3, 5), padding=(2, 1)),
        dict(in_channels=3, out_channels=3, kernel_size=3, padding=0, padding_mode="circular"),
    ],
)
def test_flipped_kernel_vjp_is_autograds_to_round_off(conv):
    torch.manual_seed(0)
    module = nn.Conv2d(**conv)
    x = torch.randn(4, conv["in_channels"], 9, 8, requires_grad=True)
    out = module(x)
    lam = torch.randn_like(out)
    expected = torch.autograd.grad(out, (x, *module.parameters()), lam)
    with FastConvVJP():
        fast = module(x)
    assert isinstance(fast.grad_fn, FlippedConv2d._backward_cls) and torch.equal(fast, out), "the same forward kernel"
    got = torch.autograd.grad(fast, (x, *module.parameters()), lam, retain_graph=True)
    assert max(relative(g, e) for g, e in zip(got, expected)) <= 1e-5
    with input_grad_only():
        (gx,) = torch.autograd.grad(fast, (x,), lam)
    assert torch.equal(gx, got[0])


@pytest.mark.parametrize(
    "conv, dtype",
    [
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1), torch.float64),  # no faster there: left to autograd
        (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2), torch.float32),
        (dict(in_channels=4, out_channels=4, kernel_size=3, groups=2), torch.float32),
        (dict(in_channels=4, out_channels=4, kernel_size=3, dilation=2), torch.float32),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding="same"), torch.float32),
    ],
)
def test_other_convolutions_keep_autograds_kernel(conv, dtype):
    module = nn.Conv2d(**conv, dtype=dtype)
    with FastConvVJP():
        out = module(torch.randn(2, 4, 9, 9, dtype=dtype, requires_grad=True))
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"


def conv_block(n):
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 1))


def network(cls, **options):
    torch.manual_seed(5)
    opening, closing = nn.Conv2d(1, 3, 3, padding=1), nn.Sequential(nn.Flatten(), nn.Linear(3 * 36, 2))
    return cls(block=conv_block, depth=8, t_final=1.0, opening=opening, closing=closing, seed=1, **options)


def gradients(net, x, y):
    x = x.clone().requires_grad_()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = net.full_grad_dict() if isinstance(net, LayerParallel) else {k: p.grad for k, p in net.named_parameters()}
    return x.grad, grads


def test_a_converged_float32_solve_with_the_fast_vjp_matches_serial_autograd():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 6, 6, generator=g), torch.tensor([0, 1, 1, 0, 1])
    serial_x, serial = gradients(network(ODEResNet), x, y)
    par = network(LayerParallel, levels=3, coarsening=2, tol=1e-7, tol_kind="relative")
    assert par.steps.fast_vjp
    par_x, grads = gradients(par, x, y)
    assert relative(par_x, serial_x) <= 1e-4 and max(relative(grads[k], serial[k]) for k in serial) <= 1e-4
    assert not network(LayerParallel, levels=1).steps.fast_vjp, "one level stays bitwise autograd"


def test_parameter_gradients_taken_in_the_last_sweep_equal_a_pass_of_their_own(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])

    def one_shot():
        torch.set_default_dtype(torch.float64)
        try:
            net = network(LayerParallel, levels=3, coarsening=2, fwd_iters=2, bwd_iters=2)
        finally:
            torch.set_default_dtype(torch.float32)
        return gradients(net, x, y)

    announced, separate, calls = with_and_without_last_sweep(monkeypatch, ModuleAdjoint, one_shot)
    assert calls == 1, "the solver announces its last fine sweep once per solve"
    assert torch.equal(announced[0], separate[0])
    assert all(torch.equal(announced[1][k], separate[1][k]) for k in separate[1])


class Recording(Dahlquist):
    def __init__(self):
        super().__init__(n_steps=16, t_final=1.0)
        self.announced = 0

    def last_sweep(self):
        self.announced += 1


def test_the_last_sweep_is_announced_only_when_the_iteration_limit_ends_the_solve():
    limited, converged = Recording(), Recording()
    result = MGRIT(limited, levels=3, coarsening=2, tol=0.0, max_iter=3).solve()
    assert result.iterations == 3 and limited.announced == 1
    result = MGRIT(converged, levels=2, coarsening=4, tol=1e-3, max_iter=50).solve()
    assert result.converged and converged.announced == 0
