"""Layer-parallel network vs its serial twin at the rank count this runs with.

Rank 0 writes a JSON report to argv[1]: for every case the largest relative
differences of logits, parameter gradients and input gradient, whether they
are bitwise equal, and the solver statistics; plus ownership, one-shot and
bad-input checks.
"""

import json
import sys

import torch
from mpi4py import MPI

import mgrit_resnet as mr
from mgrit_resnet.nn import LayerParallel, NetworkSpec, ODEResNet
from mgrit_resnet.nn.warm import unpack_trajectory

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
rank = comm.Get_rank()


def dense(**kw):
    return NetworkSpec(**dict(dict(kind="dense", in_features=3, width=4, n_classes=3, dtype="float64"), **kw))


def conv(**kw):
    return NetworkSpec(**dict(dict(kind="conv", in_channels=2, image_size=4, width=3, n_classes=3, dtype="float64"), **kw))


CASES = {
    "dense_N13_L1": (dense(depth=13), dict(levels=1)),
    "dense_N13_L2_m2": (dense(depth=13), dict(levels=2, coarsening=2, tol=1e-13)),
    "dense_N37_L3_m3_smooth": (
        dense(depth=37, activation="smooth_relu"),
        dict(levels=3, coarsening=3, relax=["F", "FCF"], initial_guess="sequential_coarse", tol=1e-13),
    ),
    "dense_N37_L2_m4_relu_F": (dense(depth=37, activation="relu"), dict(levels=2, coarsening=4, cycle="F", tol=1e-13)),
    "conv_N13_L3_m2": (conv(depth=13), dict(levels=3, coarsening=2, tol=1e-13)),
    "conv_N37_L2_m4_smooth": (conv(depth=37, activation="smooth_relu"), dict(levels=2, coarsening=4, tol=1e-13)),
    "conv_N37_L1_relu": (conv(depth=37, activation="relu"), dict(levels=1)),
    "dense_N37_float32": (dense(depth=37, dtype="float32"), dict(levels=3, coarsening=2, tol=1e-6)),
    # Mean coarse weights; 37 layers: the adjoint's coarse intervals, counted from layer N, are not the forward's.
    "conv_N37_L3_m3_mean": (conv(depth=37), dict(levels=3, coarsening=3, tol=1e-13, coarse_weights="mean")),
    "dense_N13_L2_m2_mean": (dense(depth=13), dict(levels=2, coarsening=2, tol=1e-13, coarse_weights="mean")),
    # The classifier on the final state pooled to 2x2 (network.head_pool): 2 * 4 inputs; 7 layers do not divide over 2, 3 or 4 ranks.
    "conv_N7_L2_m2_pool2": (conv(depth=7, width=2, image_size=6, head_pool=2), dict(levels=2, coarsening=2, tol=1e-13)),
}


def batch(spec, seed=1, size=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((size, *spec.input_shape()), generator=g, dtype=torch.float64)
    y = torch.randint(0, spec.n_classes, (size,), generator=g)
    return x, y


def rel(a, b):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def compare(spec, options, seed=5):
    x, y = batch(spec)
    net = ODEResNet(spec, seed=seed)
    xs = x.clone().requires_grad_()
    out_s = net(xs)
    torch.nn.functional.cross_entropy(out_s, y).backward()
    par = LayerParallel(spec, comm=comm, seed=seed, **options)
    xp = x.clone().requires_grad_()
    out_p = par(xp)
    torch.nn.functional.cross_entropy(out_p, y).backward()
    grads = par.full_grad_dict()
    serial = {k: p.grad for k, p in net.named_parameters()}
    params = par.full_state_dict()
    # predict: the batch in parts through the ranks; 3 rows (fewer than the parts), 13 (parts of two sizes), 40
    predicted = [rel(par.predict(xb), net(xb)) for xb in (batch(spec, 7, n)[0] for n in (3, 13, 40))]
    return {
        "predict": max(predicted),
        "output": rel(out_p, out_s),
        "grad": max(rel(grads[k], serial[k]) for k in serial),
        "input_grad": rel(xp.grad, xs.grad),
        "bitwise": bool(
            torch.equal(out_p, out_s) and all(torch.equal(grads[k], serial[k]) for k in serial) and torch.equal(xp.grad, xs.grad)
        ),
        "same_keys": list(grads) == list(serial),
        "same_init": all(torch.equal(params[k], v) for k, v in net.state_dict().items()),
        "classifier_shape": list(params["classifier.weight"].shape),
        "fwd_iterations": par.stats.forward["iterations"],
        "adj_iterations": par.stats.adjoint["iterations"],
        "fwd_converged": par.stats.forward["converged"],
        "adj_converged": par.stats.adjoint["converged"],
    }


report = {"ranks": comm.Get_size(), "cases": {}}
for name, (spec, options) in CASES.items():
    report["cases"][name] = compare(spec, options)

# Every rank holds exactly its own layers, plus the replicated ends.
spec = dense(depth=37)
par = LayerParallel(spec, comm=comm, levels=2, coarsening=4)
names = sorted(name for name, _ in par.named_parameters())
expected = sorted(
    ["opening.weight", "opening.bias", "classifier.weight", "classifier.bias"]
    + [f"layers.{n}.{k}" for n in par.owned_layers for k in ("weight", "bias")]
)
layer_numel = sum(p.numel() for name, p in par.named_parameters() if name.startswith("layers."))
owned = comm.allgather([par.owned_layers.start, par.owned_layers.stop])
report["ownership"] = {
    "names_match": comm.allgather(names == expected),
    "owned": owned,
    "layer_numel": comm.allgather(layer_numel),
    "per_layer_numel": 4 * 4 + 4,
}

# One-shot: gradient error of the layer stack against the exact one, as iterations grow, warm-started per batch.
spec = dense(depth=37)
x, y = batch(spec, seed=2, size=8)
rows = []
for fwd, bwd in [(1, 1), (2, 1), (3, 3), (5, 5)]:
    par = LayerParallel(
        spec, comm=comm, seed=5, levels=3, coarsening=3, relax=["F", "FCF"], fwd_iters=fwd, bwd_iters=bwd, track_grad_error=True
    )
    torch.nn.functional.cross_entropy(par(x), y).backward()
    rows.append([fwd, bwd, par.stats.grad_error, par.stats.forward["iterations"], par.stats.adjoint["iterations"]])
report["one_shot"] = rows

# One coarse pass and one fine sweep (skip_first_down, 1/1): the error is the coarse steps' own, first layer against mean.
coarse = {}
for weights in ("first", "mean"):
    par = LayerParallel(
        spec, comm=comm, seed=5, levels=2, coarsening=4, relax="F", skip_first_down=True, fwd_iters=1, bwd_iters=1,
        track_grad_error=True, coarse_weights=weights,
    )  # fmt: skip
    torch.nn.functional.cross_entropy(par(x), y).backward()
    coarse[weights] = par.stats.grad_error
report["coarse_weights"] = coarse

# Warm start: the second call with the same key and batch starts from the first call's states.
par = LayerParallel(spec, comm=comm, seed=5, levels=3, coarsening=3, fwd_iters=1, bwd_iters=1, warm_start=True, track_grad_error=True)
errors = []
for key in ("a", "a", "a", "b"):
    xb = x if key == "a" else x + 1.0
    torch.nn.functional.cross_entropy(par(xb, key=key), y).backward()
    errors.append(par.stats.grad_error)
report["warm_start"] = errors

# The same, taking the warm starts as they are (no initial F-relaxation).
par = LayerParallel(
    spec,
    comm=comm,
    seed=5,
    levels=3,
    coarsening=3,
    fwd_iters=1,
    bwd_iters=1,
    warm_start=True,
    relax_warm_start=False,
    track_grad_error=True,
)
errors = []
for _ in range(3):
    torch.nn.functional.cross_entropy(par(x, key="a"), y).backward()
    errors.append(par.stats.grad_error)
report["warm_as_is"] = errors


# One coarse pass per solve with a warm start: the pass takes the FAS right-hand side the batch's last call left
# (parareal's lagged correction), so the calls on one batch converge; the plain pass would repeat the first error.
def lagged_pass(iters, warm):
    return LayerParallel(
        dense(depth=37), comm=comm, seed=5, levels=2, coarsening=4, relax="F", skip_first_down=True, fwd_iters=iters,
        bwd_iters=iters, warm_start=warm, track_grad_error=True, coarse_weights="mean",
    )  # fmt: skip


lagged = []
for warm in (True, False):
    par = lagged_pass(1, warm)
    errors = []
    for call in range(4):
        torch.nn.functional.cross_entropy(par(x, key="a"), y).backward()
        errors.append(par.stats.grad_error)
        if warm and call == 1:  # a round trip through the gathered warm starts (packed, as a checkpoint holds them) changes nothing
            saved, packed = par.warm_state_dict(), par.warm_state_dict(packed=True)
            on_root = par.warm_state_dict(packed=True, root_only=True)
            same_on_root = on_root is not None and all(
                (a is None) == (b is None) and (a is None or torch.equal(a, b))
                for name in ("forward", "adjoint", "forward_rhs", "adjoint_rhs")
                for a, b in zip(unpack_trajectory(packed["a"][name]), unpack_trajectory(on_root["a"][name]), strict=True)
            )
            root_only = {"rank0_same": comm.allgather(same_on_root)[0]}
            root_only["elsewhere_none"] = all(comm.allgather(on_root is None or rank == 0))
            full, state_on_root = par.full_state_dict(), par.full_state_dict(root_only=True)
            same_state = state_on_root is not None and list(state_on_root) == list(full)
            same_state = same_state and all(torch.equal(v, full[k]) for k, v in state_on_root.items())
            root_only["state_rank0_same"] = comm.allgather(same_state)[0]
            root_only["state_elsewhere_none"] = all(comm.allgather(state_on_root is None or rank == 0))
            rhs_points = [i for i, s in enumerate(saved["a"]["forward_rhs"]) if s is not None]
            par.load_warm_state_dict(packed)
    lagged.append(errors)
kept_states = sum(s is not None for s in saved["a"]["forward"])
segments = packed["a"]["forward_rhs"]["segments"]
same = all(
    (a is None) == (b is None) and (a is None or torch.equal(a, b))
    for name in ("forward", "adjoint", "forward_rhs", "adjoint_rhs")
    for a, b in zip(saved["a"][name], unpack_trajectory(packed["a"][name]), strict=True)
)
report["lagged_pass"] = {
    "warm": lagged[0], "cold": lagged[1], "rhs_points": rhs_points, "forward_states": kept_states,
    "packed_equal": same, "root_only": root_only,
    "packed_segments": len(segments), "packed_points": sorted(i for held, _ in segments for i in held),
}  # fmt: skip
# Two iterations per solve: the cycle after the pass takes its right-hand side from the chain the pass left.
par = lagged_pass(2, True)
two = []
for _ in range(3):
    torch.nn.functional.cross_entropy(par(x, key="a"), y).backward()
    two.append(par.stats.grad_error)
report["lagged_pass"]["two_iterations"] = two
report["lagged_pass"]["two_iterations_steps"] = sum(par.stats.forward["steps_per_rank"])

# Two calls before one backward: each call's solves keep what its own backward needs (the solvers reuse their channels).
spec = dense(depth=13)
x1, y = batch(spec, seed=3)
x2, _ = batch(spec, seed=4)
net = ODEResNet(spec, seed=5)
(torch.nn.functional.cross_entropy(net(x1), y) + 2 * torch.nn.functional.cross_entropy(net(x2), y)).backward()
par = LayerParallel(spec, comm=comm, seed=5, levels=2, coarsening=2, tol=1e-13)
first, second = par(x1), par(x2)
(torch.nn.functional.cross_entropy(first, y) + 2 * torch.nn.functional.cross_entropy(second, y)).backward()
grads = par.full_grad_dict()
report["two_calls"] = max(rel(grads[k], p.grad) for k, p in net.named_parameters())

# Bad input: an error on every rank, naming the problem.
messages = {}
par = LayerParallel(dense(depth=13), comm=comm)
bad_inputs = {"shape": torch.zeros(4, 5, dtype=torch.float64), "nan_on_last_rank": x.clone()}
if rank == comm.Get_size() - 1:
    bad_inputs["nan_on_last_rank"][0, 0] = float("nan")
for name, value in bad_inputs.items():
    try:
        par(value)
        messages[name] = None
    except ValueError as error:
        messages[name] = str(error)
for name, build in {
    "depth": lambda: NetworkSpec(depth=0),
    "coarsening": lambda: LayerParallel(dense(depth=13), comm=comm, levels=2, coarsening=16),
    "activation": lambda: NetworkSpec(activation="sigmoid"),
}.items():
    try:
        build()
        messages[name] = None
    except ValueError as error:
        messages[name] = str(error)
report["errors"] = comm.allgather(messages)

if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
