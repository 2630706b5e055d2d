"""The sampling duty: task and node counts and node averages on every instant of the sample
grid (shoal/autoscale/samples.py), on the scaled timeline, for autoscale formulas.

Sleeping a period after each write would stretch the cadence by the write's duration (at
`--time-scale 60` a 50 ms write is 3 s of the timeline), so windows would hold fewer samples
than Batch's; waking on the grid and stamping the grid instant keeps exactly one sample per
period. A tick the server could not reach in time is skipped, a gap as Batch's histories have.
"""

from __future__ import annotations

import logging

from shoal.autoscale import next_sample_time
from shoal.service import metrics
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

log = logging.getLogger("shoal.server")


async def sampler_loop(ctx: Context, runner: StoreRunner) -> None:
    due = next_sample_time(ctx.timebase.now())
    while True:
        await ctx.timebase.sleep(due - ctx.timebase.now())
        try:
            await runner.write(metrics.sample, ctx, due)
        except Exception:
            log.exception("metric sampling failed")
        due = next_sample_time(max(due, ctx.timebase.now()))
