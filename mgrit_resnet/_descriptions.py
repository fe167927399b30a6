"""The config reference: one line of reStructuredText per key of :data:`mgrit_resnet.config.SCHEMA`.

``docs/_ext/config_reference.py`` renders it beside each key's default and
allowed values; a test checks that every key has a line and no line is stale.
"""

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "problem": {
        "kind": "the problem: :class:`~mgrit_resnet.problems.Dahlquist`, :class:`~mgrit_resnet.problems.Heat1D` "
        "or :class:`~mgrit_resnet.problems.Heat2D` (``heat2d`` needs petsc4py)",
        "z": "Dahlquist only: the eigenvalue in :math:`u' = z u`",
        "scheme": "Dahlquist: the time-stepping scheme; the heat problems accept only ``backward_euler``",
        "t_final": "final time :math:`T`",
        "n_steps": "number of fine time steps; the fine grid has ``n_steps + 1`` points",
        "nx": "heat problems only: interior grid points (per direction in 2D)",
        "diffusivity": "heat problems only: the coefficient :math:`a` in :math:`u_t = a \\Delta u`",
    },
    "mgrit": {
        "levels": "maximum number of levels; 1 is a sequential solve",
        "coarsening": "coarsening factor :math:`m` between a level and the next; a list gives one per level",
        "min_coarse": "no level with fewer points than this is created",
        "relax": "relaxation :math:`F(CF)^\\nu`; a list gives one per level",
        "c_weight": "weight :math:`w` of C-relaxation",
        "cycle": "V-cycle, or F-cycle",
        "tol": "stopping tolerance on the fine-level residual",
        "tol_kind": "``tol`` is absolute, or relative to the first residual computed",
        "max_iter": "maximum number of iterations",
        "initial_guess": "fine-level states before the first iteration",
        "skip_first_down": "make the first iteration a coarse pass without relaxation",
        "relax_warm_start": "with ``false``, a warm start (one-shot training) is taken as it is: "
        "the first iteration skips its initial fine F-relaxation",
    },
    "network": {
        "kind": "dense or convolutional residual layers, or ``module``: your own residual branch, opening and "
        "closing (:ref:`config-module`)",
        "module": '``module`` only (and required there): where the builder is, ``"path/to/file.py:build"`` (relative '
        'to the current directory) or ``"package.module:build"``; ``build(options)`` returns '
        "``(make_block, opening, closing)``. From Python it may be the function itself",
        "options": "``module`` only: a table (``[network.options]``) passed to ``build(options)`` as a dict, unchecked; "
        "``--set network.options.KEY=VALUE`` sets one of its keys",
        "in_features": "dense: input size",
        "in_channels": "conv: input channels",
        "image_size": "conv: input image side length",
        "width": "dense width, or number of conv channels",
        "depth": "number of residual layers :math:`N`; layer-parallel runs need at least :math:`2P - 1` on :math:`P` ranks",
        "depths": "a network of stages (:ref:`staged-networks`): the number of layers of each, each at least :math:`2P - 1` on "
        ":math:`P` ranks (``network.depth`` and ``network.width`` are then not read); stage :math:`s` has ``depths[s]`` "
        "layers of ``widths[s]`` channels or features and final time ``t_final``. Between two stages a transition: conv, a "
        "strided 3x3 convolution that halves the resolution; dense, a linear map; each followed by the activation",
        "widths": "with ``depths``: the width of each stage (one entry per stage)",
        "t_final": ":math:`T`; each layer is a step of :math:`h = T/N`",
        "activation": "activation function :math:`\\sigma`",
        "n_classes": "number of output classes",
        "head_pool": "conv: the classifier reads the final state average-pooled to ``head_pool x head_pool`` "
        "(``adaptive_avg_pool2d``) and flattened, ``width * head_pool**2`` features (``widths[-1] * head_pool**2`` for "
        "stages; block-wise training's auxiliary heads too); 1 is global average pooling. At most the final state's side: "
        "``image_size``, or for ``depths`` ``image_size`` halved (rounding up) by each transition. dense: 1 only; "
        "``module``: not read",
        "dtype": "floating-point type",
        "coarse_weights": "an MGRIT coarse step of an interval of layers uses the weights of its first layer (``first``) or "
        "the mean weights of its layers (``mean``; user blocks: their mean parameters and floating buffers; one sum over the "
        "ranks per call; much faster convergence for layers whose weights differ from one to the next)",
        "device": "where each rank computes (``cuda``: GPU ``local rank mod device count``)",
    },
    "data": {
        "name": "the data set; each fixes the input shape and number of classes it needs (an error names them); "
        "``npz``: your own arrays in ``data.path``",
        "path": "``npz`` only (and required there): a file written by ``numpy.savez`` with the arrays ``x_train``, "
        "``y_train`` and optionally ``x_val``, ``y_val``; relative to the current directory",
        "n_train": "number of training samples",
        "n_val": "number of validation samples",
        "seed": "random seed of the data (and of ``verify``'s random batch)",
    },
    "train": {
        "strategy": "``serial`` (autograd through :class:`~mgrit_resnet.nn.ODEResNet`), ``exact`` "
        "(:class:`~mgrit_resnet.nn.LayerParallel` solved to ``mgrit.tol``), ``one_shot``, or block-wise local "
        "training: ``local`` or ``trgl`` (:doc:`local`)",
        "optimizer": "optimiser; ``lbfgs`` is PETSc TAO's L-BFGS and needs petsc4py, strategy ``serial`` or ``exact`` "
        "and ``data_parallel = 1``",
        "lr": "learning rate",
        "batch_size": "samples per optimisation step",
        "epochs": "passes over the training set",
        "fwd_iters": '``one_shot``: forward MGRIT iterations per step; ``"auto"``: chosen per step (up to '
        "``auto_max_iters``) to hold the gradient error at ``grad_error_target`` (:ref:`adaptive-iterations`)",
        "bwd_iters": '``one_shot``: adjoint MGRIT iterations per step; ``"auto"`` as for ``fwd_iters``',
        "seed": "seed of the initial parameters and the batches",
        "warm_start": "``one_shot``: start each batch's solves from the states its last step left",
        "momentum": "``sgd``: momentum",
        "schedule": "learning-rate schedule, stepped once per epoch (``cosine``: to zero over ``epochs``)",
        "lr_step": "``step`` schedule: epochs between decays",
        "lr_gamma": "``step`` schedule: factor of each decay",
        "data_parallel": ":math:`D`, dividing the number of ranks: :math:`D` groups of :math:`P/D` layer-ranks "
        "(for ``local`` and ``trgl``: ranks holding the blocks), each taking a share of every batch",
        "lbfgs_iters": "``lbfgs``: L-BFGS iterations per epoch, each on the mean loss over the whole training set; "
        "the quasi-Newton memory carries over between epochs (they chunk one L-BFGS run) but not across ``--resume``; "
        "PETSc options with the prefix ``-mgrit_`` tune the solver (e.g. ``-mgrit_tao_ls_type armijo``)",
        "blocks": "``local``, ``trgl``: number of blocks :math:`K` (``0``: one per rank of a data group; otherwise between "
        "the number of ranks per data group and ``network.depth``, or the number of stages and the layers of all stages "
        "with ``network.depths``; a block never straddles a transition); a rank holds one or more consecutive blocks",
        "local_schedule": "``local``, ``trgl``: ``parallel`` (all blocks at once, pipelined over the ranks), "
        "``sequential`` (one block after the other) or ``multilap`` (sequential, in ``laps`` laps)",
        "laps": "``multilap``: number of laps (at most ``epochs``); each lap trains every block for its share of ``epochs``",
        "head_hidden": "``local``, ``trgl``: hidden width of every auxiliary head, an MLP (linear, activation, linear) "
        "on the (pooled) block output; ``0``: a linear head. The last block's head is the network's linear classifier",
        "tau": "``trgl``: the kinetic penalty of block :math:`k` has weight :math:`1/(2\\tau_k)`; a number gives "
        ":math:`\\tau/2` to the first :math:`K/2` blocks and :math:`\\tau` to the others; ``inf`` is ``local``",
        "grad_error_target": '``fwd_iters`` or ``bwd_iters = "auto"``: the relative error of the whole gradient '
        "(every parameter's, the opening's and the classifier's included) "
        ":math:`\\|g - g_\\text{exact}\\| / \\|g_\\text{exact}\\|` to hold, estimated every step from the MGRIT "
        "residuals; halved (at most to an eighth) when an epoch's loss stalls",
        "grad_check_every": '``"auto"``: steps between exact checks of the gradient error (each one the step\'s gradient by '
        "serial backprop through layer-serial calls, :math:`2N` layer steps), which calibrate the estimate; more come "
        "after a change of the iterations and when the estimate drifts",
        "auto_max_iters": '``"auto"``: the most iterations one solve may take',
        "checkpoint_every": "epochs (rows of the epoch plan) between two writes of ``checkpoint.pt``; the last is always "
        "written. A one-shot checkpoint carries every batch's warm start, which on a large data set can cost as much to "
        "gather and write as an epoch to train; a run stopped between two checkpoints resumes from the last one and trains "
        "the epochs after it again, exactly as before (``metrics.jsonl`` holds the checkpoint's rows only)",
    },
}
