"""The autoscale duty: evaluates every pool whose interval has come, and wakes the provider
when a target changed."""

from __future__ import annotations

import asyncio
import logging

from shoal.autoscale import SAMPLE_PERIOD
from shoal.server.duty import Wakeups
from shoal.service import autoscale
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

log = logging.getLogger("shoal.server")
AUTOSCALE_CHECK_S = 1.0


async def autoscale_loop(ctx: Context, wakeups: Wakeups, runner: StoreRunner) -> None:
    while True:
        try:
            if await runner.write(autoscale.run_due, ctx):
                wakeups.provider.set()
        except Exception:
            log.exception("autoscale pass failed")
        await asyncio.sleep(min(AUTOSCALE_CHECK_S, ctx.timebase.real_seconds(SAMPLE_PERIOD)))
