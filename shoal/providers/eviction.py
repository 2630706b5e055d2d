"""When a provider takes spot capacity back: an eviction rate, global or per pool.

The rate is evictions per spot node per hour on the scaled timeline (`shoal up
--spot-eviction-rate R`, or a pool's metadata item `shoal:spotEvictionRate`). Each pass, every
live spot node is evicted with probability 1 − exp(−rate × elapsed hours): a Poisson process, so
evictions arrive at the configured rate however often the provider looks.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from typing import Any

from shoal.service import preemption

log = logging.getLogger("shoal.providers")
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


class SpotEvictor:
    """A provider's eviction pass: how much scaled time passed since the last look, which live
    spot nodes the policy takes in that time, and their preemption, through the store runner."""

    def __init__(self, default_rate: float, seed: int | None = None) -> None:
        self.policy = EvictionPolicy(default_rate, seed)
        self._last_check: float | None = None

    async def run(self, ctx: Any, runner: Any) -> None:
        now = time.monotonic()
        elapsed_real = now - (self._last_check or now)
        self._last_check = now
        if elapsed_real <= 0:
            return
        elapsed_hours = elapsed_real * ctx.timebase.scale / 3600
        live = await runner.read(preemption.live_spot_nodes, ctx)
        chosen = self.policy.choose(live, elapsed_hours)
        if chosen:
            log.info("evicting spot nodes %s", chosen)
            await runner.write(preemption.preempt_many, ctx, chosen)
