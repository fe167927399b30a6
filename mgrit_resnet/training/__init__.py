"""Training: strategies (serial, exact, one-shot), optimisers, checkpoints, the training loop."""

from .loop import TrainResult as TrainResult
from .loop import train as train

__all__ = ["train", "TrainResult"]
