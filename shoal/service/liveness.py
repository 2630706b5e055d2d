"""Whether a node's agent is still calling, judged from memory (Nomad's model).

Every authenticated agent call refreshes its node's timer on the event loop; nothing is written
to the store for it. A node is declared silent only when its timer is older than the heartbeat
timeout AND the loop that refreshes the timers is known to have been running on time: when the
loop itself was held up, agents' calls may be sitting unread in its sockets, so a stale timer
says nothing about the agent. After such a stall, and after the server starts, every node gets
a full timeout again before it can be declared silent.

The timers are kept in the order of their last call, so finding the silent ones walks only
those (and stops at the first node that called in time): a pass costs what is silent, not what
is alive. Nodes enter the board by calling, or by `track` (the live nodes of the store, read
once at start and again every RESYNC_S, for a node that turned live without a call).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

log = logging.getLogger("shoal.server")

# How often the loop's own punctuality is measured, and the lag past which it counts as held up.
TICK_S = 0.1
LATE_S = 1.0
# How often the store's live nodes are read to track those that never called.
RESYNC_S = 30.0


class Liveness:
    """Beats come from the event loop; the silent-node duty reads from the store's writer thread,
    so the board is guarded by a lock (uncontended in the common case: a few hundred ns)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # node id -> time of its last call, oldest first.
        self._seen: OrderedDict[str, float] = OrderedDict()
        # No timer counts from before this: the server's start, or the end of the last stall.
        self._grace_from = clock()
        self._last_tick = self._grace_from
        self._synced_at: float | None = None

    def beat(self, node_id: str) -> None:
        """The node's agent just made an authenticated call."""
        with self._lock:
            self._seen[node_id] = self._clock()
            self._seen.move_to_end(node_id)

    def track(self, node_ids: Iterable[str]) -> None:
        """Nodes the store says are live: those not on the board yet get a full timeout from now."""
        now = self._clock()
        with self._lock:
            for node_id in node_ids:
                if node_id not in self._seen:
                    self._seen[node_id] = now
            self._synced_at = now

    def resync_due(self, every_s: float = RESYNC_S) -> bool:
        return self._synced_at is None or self._clock() - self._synced_at >= every_s

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._seen.pop(node_id, None)

    def forget_all(self, node_ids: Iterable[str]) -> None:
        with self._lock:
            for node_id in node_ids:
                self._seen.pop(node_id, None)

    def forgive(self) -> None:
        """The loop was held up: every node gets a full timeout from now."""
        self._grace_from = self._clock()

    def tick(self) -> None:
        self._last_tick = self._clock()

    def loop_on_time(self, late_s: float = LATE_S) -> bool:
        """Whether the loop measured itself on time within the last ``late_s``."""
        return self._clock() - self._last_tick <= late_s

    def silent(self, timeout_s: float) -> list[str]:
        """The nodes on the board that have not called for longer than ``timeout_s``, oldest
        first: a walk from the oldest call that stops at the first one in time."""
        deadline = self._clock() - timeout_s
        if self._grace_from >= deadline:
            return []  # every timer counts from the grace, which is younger than a timeout
        quiet = []
        with self._lock:
            for node_id, seen in self._seen.items():
                if seen >= deadline:
                    break
                quiet.append(node_id)
        return quiet

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
