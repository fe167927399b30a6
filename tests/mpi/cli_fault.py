"""The ``mgrit-resnet`` command line under an injected fault: ``python cli_fault.py MODE ARGS...`` runs ``main(ARGS)``.

MODE ``raise``: every rank raises a ``RuntimeError`` at once where training would start.
MODE ``fsize=BYTES``: once MPI is up (its shared-memory files written), no file may grow beyond
BYTES (``RLIMIT_FSIZE``): every write past it fails as on a full disk (``EFBIG``; Python ignores SIGXFSZ).
"""

import resource
import sys

from mgrit_resnet.cli import main
from mgrit_resnet.comm import world

mode, args = sys.argv[1], sys.argv[2:]
comm = world()
rank = 0 if comm is None else comm.Get_rank()
if comm is not None:
    comm.allgather(rank)  # every connection made before the limit
if mode.startswith("fsize="):
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(mode.split("=", 1)[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
elif mode == "raise":
    from mgrit_resnet.training import loop

    def fail(*args, **kwargs):
        raise RuntimeError(f"deliberate failure on rank {rank}")

    loop.train = fail
else:
    sys.exit(f"cli_fault.py: unknown mode {mode!r}")
sys.exit(main(args))
