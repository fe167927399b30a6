"""Convergence plots (matplotlib, imported on first use, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

from .result import SolveResult


def plot_residuals(result: SolveResult, path: str | Path, predicted: float | None = None, title: str = "") -> Path:
    """Draw the residual history of ``result`` on a log scale and save it as an image.

    Parameters
    ----------
    result
        A finished solve.
    path
        Output file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    predicted
        A convergence factor to draw as a reference slope from the first residual.
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = 0 if result.initial_residual is not None else 1
    values = ([result.initial_residual] if start == 0 else []) + list(result.residuals)
    iterations = list(range(start, start + len(values)))
    shown = [(k, r) for k, r in zip(iterations, values) if r > 0]  # exact zeros cannot be drawn on a log scale
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if shown:
        ax.semilogy(*zip(*shown), "o-", label="measured residual")
    if predicted is not None and shown:
        k0, r0 = shown[0]
        ax.semilogy(iterations, [r0 * predicted ** (k - k0) for k in iterations], "--", label=f"two-level theory, factor {predicted:.3g}")
    zeros = [k for k, r in zip(iterations, values) if r == 0]
    if zeros:
        ax.axvline(zeros[0], color="grey", linestyle=":", label=f"exactly zero from iteration {zeros[0]}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("fine-level C-point residual (2-norm)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
