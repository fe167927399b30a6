"""The errors training raises beyond bad input (``ValueError``)."""

from __future__ import annotations


class OutputNotWritten(RuntimeError):
    """A file of the output folder could not be written (a full disk, a folder removed under the run); raised on every rank alike.

    The checkpoint written before stays: a write replaces it only once the new one is whole on disk.
    """


class TrainingDiverged(RuntimeError):
    """The training loss (or the trained parameters) became NaN or infinite; raised on every rank alike.

    Nothing non-finite is written: the output folder keeps the last good
    checkpoint, its ``metrics.jsonl`` rows and no ``summary.json`` of the failed run.

    Attributes
    ----------
    epoch, step
        Where it diverged (1-based; ``step`` is ``None`` when only the epoch's summed loss showed it).
    loss
        The non-finite loss (``None``: the loss was finite but the parameters were not).
    kept
        The epochs held by the checkpoint left in ``out`` (0: none was written).
    out
        The output folder, or ``None`` when the run saved nothing.
    """

    def __init__(self, epoch: int, step: int | None, loss: float | None, kept: int, out: str | None) -> None:
        self.epoch, self.step, self.loss, self.kept, self.out = epoch, step, loss, kept, out
        where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
        what = f"loss {loss}" if loss is not None else "non-finite parameters after a finite loss"
        if out is None:
            kept_text = "nothing was saved (no --out)"
        elif kept:
            kept_text = f"the last good checkpoint (epoch {kept}) is kept in {out}"
        else:
            kept_text = f"no checkpoint was written to {out} (it diverged in the first epoch)"
        super().__init__(
            f"training diverged at {where} ({what}); {kept_text}; lower train.lr (or try another train.optimizer, "
            "network.activation or a smaller network.t_final) and train again"
            + (" (--resume continues from the checkpoint)" if out is not None and kept else "")
        )
