"""Communication: backends behind one protocol, and what is built on them.

``base`` holds the protocols, the one-rank and reversed backends and the
:class:`Channel` and the :class:`Pipe` of channels to both neighbours; ``mpi`` is the only module that imports mpi4py; ``threads``
runs ranks as threads in one process; ``clocked`` times a backend with a
virtual clock; ``groups`` splits the ranks into data groups of layer-ranks.
"""

from .base import Backend as Backend
from .base import Channel as Channel
from .base import Pipe as Pipe
from .base import Request as Request
from .base import ReversedBackend as ReversedBackend
from .base import SerialBackend as SerialBackend
from .mpi import MPIBackend as MPIBackend
from .mpi import backend_for as backend_for
from .mpi import install_abort_on_error as install_abort_on_error
from .mpi import local_rank as local_rank
from .mpi import mpi_versions as mpi_versions
from .mpi import split as split
from .mpi import world as world

__all__ = ["Backend", "backend_for", "world", "install_abort_on_error"]
