"""``python -m mgrit_resnet``: the ``mgrit-resnet`` command line."""

from .cli import run

run()
