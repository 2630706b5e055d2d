"""The provider duty: bring nodes up and down to match the store, when woken and at least every
PROVIDER_RECONCILE_S (agents that died are noticed by this pass)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.config import PROVIDER_RECONCILE_S
from shoal.server.duty import wait_for_wake

log = logging.getLogger("shoal.server")


async def provider_loop(provider: Any, wake: asyncio.Event) -> None:
    while True:
        await wait_for_wake(wake, PROVIDER_RECONCILE_S)
        try:
            await provider.reconcile()
        except Exception:
            log.exception("provider pass failed")
