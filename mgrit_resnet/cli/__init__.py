"""The ``mgrit-resnet`` command line.

Verbs: ``solve``, ``train``, ``compare``, ``sweep``, ``plot``, ``verify``, ``predict``, ``tune`` and ``info``.

Every verb is one module of this package holding ``HELP`` (its line in
``mgrit-resnet --help``), ``add_arguments(parser)`` and ``prepare(args, comm, rank)``,
which checks everything and returns the job; :data:`VERBS` lists them, and
adding a verb is one module and one line there.

Every verb runs unchanged under ``mpiexec -n P``; only rank 0 prints and
writes files. Bad input ends every rank with exit code 2 and one message; an
unexpected exception on any rank aborts all of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import comm as comm_module
from ..config import ConfigError
from . import compare, info, plot, predict, solve, sweep, train, tune, verify
from ._common import Parser

EXIT_BAD_INPUT = 2

# The verbs in the order ``--help`` lists them. Their modules import torch,
# matplotlib and the studies only inside ``prepare``, so ``--help`` and ``solve`` stay light.
VERBS: dict[str, ModuleType] = {
    "solve": solve,
    "train": train,
    "compare": compare,
    "sweep": sweep,
    "plot": plot,
    "verify": verify,
    "predict": predict,
    "tune": tune,
    "info": info,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb in :data:`VERBS`; it raises :class:`ConfigError` where argparse would exit."""
    parser = Parser(prog="mgrit-resnet", description="Layer-parallel ResNets and parallel-in-time MGRIT.")
    subparsers = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    for name, verb in VERBS.items():
        verb.add_arguments(subparsers.add_parser(name, help=verb.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; its exit code (``EXIT_BAD_INPUT`` on bad input, on every rank alike).

    Parameters
    ----------
    argv
        The arguments after the program name; ``None``: ``sys.argv[1:]``.
    """
    comm = comm_module.world()
    comm_module.install_abort_on_error(comm)
    rank = 0 if comm is None else comm.Get_rank()
    try:
        # Everything that checks input happens here, identically on every rank and
        # before any communication, so bad input ends every rank the same way.
        args = build_parser().parse_args(argv)
        job = VERBS[args.verb].prepare(args, comm, rank)
    except (ConfigError, ValueError, TypeError, ImportError) as error:
        if rank == 0:
            print(f"mgrit-resnet: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return job()


def run() -> None:
    """The console entry point ``mgrit-resnet``."""
    sys.exit(main())
