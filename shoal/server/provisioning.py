"""The provider duty: bring nodes up and down to match the store, when woken and at least every
``provider.reconcile_interval_s`` (agents that died unannounced are noticed by this pass)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.server.duty import wait_for_wake

log = logging.getLogger("shoal.server")


async def provider_loop(provider: Any, wake: asyncio.Event) -> None:
    while True:
        await wait_for_wake(wake, provider.reconcile_interval_s)
        try:
            await provider.reconcile()
        except Exception:
            log.exception("provider pass failed")
