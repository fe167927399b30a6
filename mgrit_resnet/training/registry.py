"""Every training strategy by its ``train.strategy`` name: the one place that knows them all."""

from __future__ import annotations

from ..config import LOCAL_STRATEGIES, STRATEGIES, WHOLE_NETWORK_STRATEGIES
from .local import BlockWise
from .strategy import Strategy
from .whole import WholeNetwork

#: ``train.strategy`` -> the class that trains it, in the order of :data:`mgrit_resnet.config.STRATEGIES`.
REGISTRY: dict[str, type[Strategy]] = {
    **dict.fromkeys(WHOLE_NETWORK_STRATEGIES, WholeNetwork),
    **dict.fromkeys(LOCAL_STRATEGIES, BlockWise),
}


def strategy_class(name: str) -> type[Strategy]:
    """The class that trains ``train.strategy = name``."""
    if name not in REGISTRY:
        raise ValueError(f"train.strategy must be one of {', '.join(map(repr, STRATEGIES))}; got {name!r}")
    return REGISTRY[name]
