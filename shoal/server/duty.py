"""What every background duty shares: the wake-ups between them, and a loop that runs one duty
again and again, so a failing or hung duty never stops another."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("shoal.server")


@dataclass
class Wakeups:
    """Events the request path and the duties set to run another duty now rather than later."""

    scheduler: asyncio.Event = field(default_factory=asyncio.Event)
    provider: asyncio.Event = field(default_factory=asyncio.Event)


async def run_periodically(name: str, duty: Callable[[], Any], interval_s: float, timeout_s: float) -> None:
    """Run ``duty`` every ``interval_s``; a coroutine it returns gets ``timeout_s`` to finish."""
    while True:
        try:
            outcome = duty()
            if asyncio.iscoroutine(outcome):
                await asyncio.wait_for(outcome, timeout_s)
        except TimeoutError:
            log.warning("duty %r took longer than %s s; it runs again next pass", name, timeout_s)
        except Exception:
            log.exception("duty %r failed", name)
        await asyncio.sleep(interval_s)


async def wait_for_wake(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` passes; the event is cleared for the next wait."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass
    event.clear()
