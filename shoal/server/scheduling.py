"""The scheduler duty: a placement pass whenever something may have freed slots or added
work, and at least every SCHEDULER_IDLE_WAKE_S. Reports schedule their own pool inline; this
pass catches everything else (new tasks, new nodes, enabled jobs)."""

from __future__ import annotations

import asyncio
import logging
import time

from shoal import telemetry
from shoal.api.agent import AgentHub
from shoal.config import SCHEDULER_IDLE_WAKE_S
from shoal.server.duty import wait_for_wake
from shoal.service import scheduling
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

log = logging.getLogger("shoal.server")
# A short pause after a wake-up lets a burst of adds or completions share one scheduling pass.
SCHEDULER_COALESCE_S = 0.002


async def scheduler_loop(ctx: Context, wake: asyncio.Event, hub: AgentHub, runner: StoreRunner) -> None:
    while True:
        await wait_for_wake(wake, SCHEDULER_IDLE_WAKE_S)
        await asyncio.sleep(SCHEDULER_COALESCE_S)
        wake.clear()
        started = time.perf_counter()
        try:
            for node_id in await runner.write(scheduling.schedule, ctx):
                hub.wake(node_id)
            telemetry.SCHEDULER_PASS_SECONDS.observe(time.perf_counter() - started)
        except Exception:
            log.exception("scheduling pass failed")
