"""The sampling duty: task and node counts and node averages every sample period, on the
scaled timeline, for autoscale formulas."""

from __future__ import annotations

import logging

from shoal.service import metrics
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

log = logging.getLogger("shoal.server")


async def sampler_loop(ctx: Context, runner: StoreRunner) -> None:
    while True:
        try:
            await runner.write(metrics.sample, ctx)
        except Exception:
            log.exception("metric sampling failed")
        await ctx.timebase.sleep(metrics.SAMPLE_PERIOD)
