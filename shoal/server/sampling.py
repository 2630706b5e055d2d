"""The sampling duty: task and node counts and node averages every sample period, on the
scaled timeline, for autoscale formulas."""

from __future__ import annotations

import logging

from shoal.service import metrics
from shoal.service.context import Context

log = logging.getLogger("shoal.server")


async def sampler_loop(ctx: Context) -> None:
    while True:
        try:
            metrics.sample(ctx)
        except Exception:
            log.exception("metric sampling failed")
        await ctx.timebase.sleep(metrics.SAMPLE_PERIOD)
