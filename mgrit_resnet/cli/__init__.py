"""The ``mgrit-resnet`` command line.

Verbs: ``solve``, ``train``, ``compare``, ``sweep``, ``plot``, ``verify``, ``predict``, ``tune``, ``config`` and ``info``.

Every verb is one module of this package holding ``HELP`` (its line in
``mgrit-resnet --help``), ``add_arguments(parser)`` and ``prepare(args, comm, rank)``,
which checks everything and returns the job; :data:`VERBS` lists them, and
adding a verb is one module and one line there.

Every verb runs unchanged under ``mpiexec -n P``; only rank 0 prints and
writes files. Bad input (and an output that cannot be written) ends every rank
with exit code 2 and one message; training that diverges (a NaN or infinite
loss) with exit code 3 and one message; Ctrl-C ends with exit code 130 and one line;
an unexpected exception on any rank aborts all of them, its one-line reason first.

The options before the verb apply to every verb: ``--version``, ``-q``
(results only), ``-v`` (a progress line per step) and ``--log-every SECONDS``
(progress lines when stderr is not a terminal; default the environment variable
``MGRIT_RESNET_LOG_EVERY``, else 30).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .. import __version__
from .. import comm as comm_module
from ..config import ConfigError
from . import _common, compare, config, info, plot, predict, solve, sweep, train, tune, verify
from ._common import OutputError, Parser

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # training stopped at a NaN or infinite loss; the last good checkpoint is kept
EXIT_INTERRUPTED = 130  # the shell's code for a job ended by SIGINT (128 + 2)
INTERRUPT_GRACE = 1.0  # seconds another rank leaves rank 0 to say "interrupted" and end every rank, before it does so itself

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
    "config": config,
    "info": info,
}


class _ShowVersion(Exception):
    """Raised by ``--version`` while parsing, so that :func:`main` prints it on rank 0 and returns 0."""


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        raise _ShowVersion


def add_output_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-q``, ``-v`` and ``--log-every``: on the top-level parser, and on every verb's (where they default to the top-level value)."""
    default = {"default": 0} if top else {"default": argparse.SUPPRESS}
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, help="print results only, no progress", **default)
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, help="also a progress line per step", **default)
    parser.add_argument(
        "--log-every",
        metavar="SECONDS",
        help=f"seconds between progress lines when stderr is not a terminal (default ${_common.LOG_EVERY_ENV}, else "
        f"{_common.DEFAULT_LOG_EVERY:g})",
        **({"default": None} if top else {"default": argparse.SUPPRESS}),
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb in :data:`VERBS`; it raises :class:`ConfigError` where argparse would exit."""
    parser = Parser(prog="mgrit-resnet", description="Layer-parallel ResNets and parallel-in-time MGRIT.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    add_output_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    for name, verb in VERBS.items():
        sub = subparsers.add_parser(name, help=verb.HELP)
        verb.add_arguments(sub)
        add_output_options(sub, top=False)
    return parser


def configure(args: argparse.Namespace) -> None:
    """Set :data:`~mgrit_resnet.cli._common.SETTINGS` from ``-q``/``-v`` and ``--log-every`` (or the environment)."""
    if args.log_every is not None:
        log_every = _common.parse_log_every(args.log_every)
    else:
        log_every = _common.parse_log_every(os.environ.get(_common.LOG_EVERY_ENV), f"the environment variable {_common.LOG_EVERY_ENV}")
    _common.SETTINGS.verbosity = args.verbosity
    _common.SETTINGS.log_every = log_every


def _say(rank: int, line: str) -> None:
    """``line`` on stderr from rank 0, flushed at once so that it survives whatever ends the process next."""
    if rank == 0:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _interrupted(comm: Any, rank: int) -> int:
    """Ctrl-C: one line, exit code 130; with several ranks, end them all (one may be waiting for another).

    Rank 0 says it and ends every rank at once. Every other rank first leaves rank 0
    :data:`INTERRUPT_GRACE` seconds for that (its abort ends them), and only then says it and ends
    them itself: rank 0 may be blocked in a message from a rank that stopped, and a rank that
    aborted at once would end rank 0 before it could say anything.
    """
    several = comm is not None and comm.Get_size() > 1
    if several and rank != 0:
        try:
            time.sleep(INTERRUPT_GRACE)
        except KeyboardInterrupt:  # Ctrl-C again
            pass
    _say(0, "mgrit-resnet: interrupted")  # rank 0 at once, another rank only after the grace time
    if several:
        comm.Abort(EXIT_INTERRUPTED)  # pragma: no cover - ends the process
    return EXIT_INTERRUPTED


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
    _common.SETTINGS.verbosity, _common.SETTINGS.log_every = 0, None  # nothing carries over from an earlier call
    try:
        # Everything that checks input happens here, identically on every rank and
        # before any communication, so bad input ends every rank the same way.
        try:
            args = build_parser().parse_args(argv)
        except _ShowVersion:
            if rank == 0:
                print(f"mgrit-resnet {__version__}", flush=True)
            return 0
        configure(args)
        job = VERBS[args.verb].prepare(args, comm, rank)
    except (ConfigError, ValueError, TypeError, ImportError, OutputError) as error:
        _say(rank, f"mgrit-resnet: error: {error}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted(comm, rank)
    try:
        return job()
    except OutputError as error:  # raised on rank 0, the one that writes
        _say(0, f"mgrit-resnet: error: {error}")
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        from ..training.errors import OutputNotWritten, TrainingDiverged

        if not isinstance(error, (TrainingDiverged, OutputNotWritten)):
            raise
        _say(rank, f"mgrit-resnet: error: {error}")  # raised on every rank alike
        return EXIT_DIVERGED if isinstance(error, TrainingDiverged) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted(comm, rank)


def run() -> None:
    """The console entry point ``mgrit-resnet``."""
    sys.exit(main())
