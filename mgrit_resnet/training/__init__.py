"""Training: one epoch loop for every strategy (serial, exact, one-shot, local, trgl), the config check, checkpoints."""

from .checks import check as check
from .loop import TrainResult as TrainResult
from .loop import train as train

__all__ = ["train", "TrainResult", "check"]
