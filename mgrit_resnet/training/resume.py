"""What may change when a run resumes: the config and the tensors of the checkpoint, checked before any work.

A resumed run continues the interrupted one exactly, so only the keys of
:data:`CHANGEABLE` (and the number of ranks) may differ from the config it
was started with; every other change is refused with the keys and both values.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..comm.provenance import plain_config

#: Keys a resumed run may change: dotted keys, or ``"section.*"`` for a whole table.
#: ``[problem]`` is listed because ``train`` does not read it.
CHANGEABLE = (
    "train.epochs",
    "train.fwd_iters",
    "train.bwd_iters",
    "train.grad_error_target",
    "train.grad_check_every",
    "train.auto_max_iters",
    "train.checkpoint_every",
    "train.data_parallel",
    "network.device",
    "mgrit.*",
    "problem.*",
)
_SHOWN = 8  # mismatched tensors named in a message


def changeable(key: str) -> bool:
    """Whether the dotted ``key`` may change on resume (:data:`CHANGEABLE`)."""
    section = key.split(".", 1)[0]
    return key in CHANGEABLE or f"{section}.*" in CHANGEABLE


def saved_config(saved: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The resolved config of the interrupted run: the checkpoint's own, else ``config.toml`` beside it, else ``None``."""
    if isinstance(saved.get("config"), Mapping):
        return dict(saved["config"])
    toml = Path(path).parent / "config.toml"
    try:
        return tomllib.loads(toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, table in config.items() if isinstance(table, Mapping) for key, value in table.items()}


def check_config(cfg: Any, saved: Mapping[str, Any], path: str | Path, blockwise: bool) -> None:
    """Raise ``ValueError`` when ``cfg`` changes a key that resuming the checkpoint ``saved`` (read from ``path``) cannot honour.

    Every changed key outside :data:`CHANGEABLE` is named with its old and new
    value; ``train.epochs`` must be at least the epochs already done. Keys that
    only one of the two configs has (another version of the package) are not compared.

    Parameters
    ----------
    cfg
        The validated config of the resumed run.
    saved
        The checkpoint (:func:`~.checkpoint.read`).
    path
        Where it was read (``config.toml`` beside it is the fallback for older checkpoints).
    blockwise
        Whether the run trains block-wise (its metrics rows are not epochs).
    """
    old = saved_config(saved, path)
    if old is not None:
        before, after = _flat(plain_config(old)), _flat(plain_config(cfg))
        changed = [key for key in before if key in after and before[key] != after[key] and not changeable(key)]
        if changed:
            listed = "; ".join(f"{key}: {before[key]!r} -> {after[key]!r}" for key in changed)
            allowed = ", ".join(CHANGEABLE)
            raise ValueError(
                f"--resume: this config changes {listed} from the run in {str(Path(path).parent)!r}; a resumed run keeps its "
                f"settings (it may change only {allowed} and the number of ranks): undo the change, or start a new run "
                "(another --out, or --force to replace this one)"
            )
    done = len(saved.get("metrics", []))
    if not blockwise and cfg.train.epochs < done:
        raise ValueError(
            f"--resume: train.epochs = {cfg.train.epochs} is below the {done} epochs already done in {str(Path(path).parent)!r}; "
            f"allowed: train.epochs >= {done}"
        )


def check_shapes(saved: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], path: str | Path) -> None:
    """Raise ``ValueError`` when the tensors of the checkpoint ``saved`` are not those of the built model (names and shapes).

    Parameters
    ----------
    saved
        The checkpoint (its tensors may be memory-mapped: only shapes are read).
    expected
        The built model's full state (the network, and the heads of block-wise training): name -> shape.
    path
        Where the checkpoint was read, for the message.
    """
    have = {name: tuple(t.shape) for part in ("model", "heads") for name, t in (saved.get(part) or {}).items()}
    missing = [name for name in expected if name not in have]
    extra = [name for name in have if name not in expected]
    shapes = [
        f"{name} {have[name]} (model {tuple(expected[name])})" for name in expected if name in have and have[name] != tuple(expected[name])
    ]
    if not (missing or extra or shapes):
        return
    parts = []
    for what, names in (("tensors of another shape", shapes), ("tensors the model lacks", extra), ("tensors missing", missing)):
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            parts.append(f"{what}: {', '.join(names[:_SHOWN])}{more}")
    raise ValueError(
        f"--resume: {str(path)!r} does not fit the network of this config ({'; '.join(parts)}); it was written for "
        "another [network] (network.depth, network.width, ...): resume with that config, or start a new run"
    )
