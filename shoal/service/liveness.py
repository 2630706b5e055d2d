"""Whether a node's agent is still calling, judged from memory (Nomad's model).

Every authenticated agent call refreshes its node's timer on the event loop; nothing is written
to the store for it. A node is declared silent only when its timer is older than the heartbeat
timeout AND the loop that refreshes the timers is known to have been running on time: when the
loop itself was held up, agents' calls may be sitting unread in its sockets, so a stale timer
says nothing about the agent. After such a stall, and after the server starts, every node gets
a full timeout again before it can be declared silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("shoal.server")

# How often the loop's own punctuality is measured, and the lag past which it counts as held up.
TICK_S = 0.1
LATE_S = 1.0


class Liveness:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}
        # No timer counts from before this: the server's start, or the end of the last stall.
        self._grace_from = clock()
        self._last_tick = self._grace_from

    def beat(self, node_id: str) -> None:
        """The node's agent just made an authenticated call."""
        self._seen[node_id] = self._clock()

    def forget(self, node_id: str) -> None:
        self._seen.pop(node_id, None)

    def forgive(self) -> None:
        """The loop was held up: every node gets a full timeout from now."""
        self._grace_from = self._clock()

    def tick(self) -> None:
        self._last_tick = self._clock()

    def loop_on_time(self, late_s: float = LATE_S) -> bool:
        """Whether the loop measured itself on time within the last ``late_s``."""
        return self._clock() - self._last_tick <= late_s

    def silent(self, node_ids: Iterable[str], timeout_s: float) -> list[str]:
        """Those of ``node_ids`` that have not called for longer than ``timeout_s``."""
        now = self._clock()
        floor = self._grace_from
        return [n for n in node_ids if now - max(self._seen.get(n, floor), floor) > timeout_s]

    async def watch_loop(self, tick_s: float = TICK_S, late_s: float = LATE_S) -> None:
        """Run on the loop whose punctuality it measures: each wake-up more than ``late_s``
        after it was due means the loop was held up, and forgives every timer."""
        while True:
            due = self._clock() + tick_s
            await asyncio.sleep(tick_s)
            lag = self._clock() - due
            if lag > late_s:
                log.warning("the event loop was held up for %.1f s; node heartbeats start over", lag)
                self.forgive()
            self.tick()
