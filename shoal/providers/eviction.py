"""When the local provider takes spot capacity back: an eviction rate, global or per pool.

The rate is evictions per spot node per hour on the scaled timeline (`shoal up
--spot-eviction-rate R`, or a pool's metadata item `shoal:spotEvictionRate`). Each pass, every
live spot node is evicted with probability 1 − exp(−rate × elapsed hours): a Poisson process, so
evictions arrive at the configured rate however often the provider looks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

POOL_RATE_METADATA = "shoal:spotEvictionRate"


def pool_rate(spec: dict[str, Any], default: float) -> float:
    for item in spec.get("metadata") or []:
        if item.get("name") == POOL_RATE_METADATA:
            try:
                return max(0.0, float(item.get("value") or 0))
            except ValueError:
                return default
    return default


class EvictionPolicy:
    def __init__(self, default_rate: float, seed: int | None = None) -> None:
        self.default_rate = default_rate
        self.random = random.Random(seed)

    def choose(self, nodes: Iterable[tuple[str, dict[str, Any]]], elapsed_hours: float) -> list[str]:
        """Which of these (node id, pool spec) pairs lose their capacity in this pass."""
        evicted = []
        for node_id, spec in nodes:
            rate = pool_rate(spec, self.default_rate)
            if rate > 0 and self.random.random() < 1 - math.exp(-rate * elapsed_hours):
                evicted.append(node_id)
        return evicted
