"""An ordinary PyTorch training loop around LayerParallel (``loss.backward(); opt.step()``), as docs/guide/networks.rst shows it."""

import torch
from torch import nn

from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import LayerParallel, ODEResNet

DEPTH, T, STEPS = 9, 1.0, 3


def block(layer):
    return nn.Sequential(nn.Linear(4, 4, dtype=torch.float64), nn.LayerNorm(4, dtype=torch.float64), nn.GELU())


def ends():
    generator = torch.Generator().manual_seed(5)
    opening, closing = nn.Linear(2, 4, dtype=torch.float64), nn.Linear(4, 3, dtype=torch.float64)
    with torch.no_grad():
        for p in [*opening.parameters(), *closing.parameters()]:
            p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) - 0.5)
    return opening, closing


def batches():
    generator = torch.Generator().manual_seed(2)
    return [(torch.randn(6, 2, generator=generator, dtype=torch.float64), torch.randint(0, 3, (6,), generator=generator)) for _ in range(2)]


def train(net, keyed):
    """The loop a user writes: one SGD step per batch; with warm starts each batch is named by its index."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(STEPS):
        for key, (x, y) in enumerate(batches()):
            optimizer.zero_grad()
            logits = net(x, key=key) if keyed else net(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def serial():
    opening, closing = ends()
    net = ODEResNet(block=block, depth=DEPTH, t_final=T, opening=opening, closing=closing, seed=1)
    return train(net, keyed=False), {k: v.detach().clone() for k, v in net.state_dict().items()}


def parallel(ranks, **options):
    def program(backend):
        opening, closing = ends()
        net = LayerParallel(block=block, depth=DEPTH, t_final=T, opening=opening, closing=closing, comm=backend, seed=1, **options)
        losses = train(net, keyed=True)
        return losses, net.full_state_dict(), net.warm_start_bytes(), net.stats.grad_error

    return ThreadWorld(ranks).run(program)


def test_exact_layer_parallel_training_is_serial_training():
    losses, state = serial()
    for rank_losses, rank_state, _, _ in parallel(2, levels=2, coarsening=3, tol=1e-13, max_iter=40):
        torch.testing.assert_close(torch.tensor(rank_losses), torch.tensor(losses), rtol=1e-10, atol=0)
        for key, value in state.items():
            torch.testing.assert_close(rank_state[key], value, rtol=1e-10, atol=1e-12)


def test_one_shot_warm_starts_are_kept_per_batch_key():
    losses, _ = serial()
    one_shot = dict(levels=2, coarsening=3, fwd_iters=1, bwd_iters=1, initial_guess="initial_value", track_grad_error=True)
    runs = parallel(2, warm_start=True, **one_shot)
    cold = parallel(2, warm_start=False, **one_shot)
    for (rank_losses, _, warm_bytes, grad_error), (_, _, no_bytes, cold_error) in zip(runs, cold):
        assert warm_bytes > 0 == no_bytes  # the two batches' trajectories, kept under their keys 0 and 1
        assert grad_error < cold_error / 3  # the last step of a batch seen twice before starts from a good guess
        assert rank_losses[-2] < rank_losses[0]  # batch 0, third visit against its first
        torch.testing.assert_close(torch.tensor(rank_losses[:2]), torch.tensor(losses[:2]), rtol=0.05, atol=0)
