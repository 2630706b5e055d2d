"""Where store work runs, so the event loop only does I/O.

SQLite through pysqlite begins a transaction only at the first write statement: a read-then-write
function that ran beside another one in a second thread could act on what it read before the
other committed (a lost update, a task placed twice). So every function that may write runs on
ONE writer thread, in the order it was submitted: writes keep exactly the serial semantics they
had when everything ran on the loop. Pure reads need no such order and run on reader threads:

- ``read``: point reads (one resource, an agent's token check, the tail of a long poll);
- ``scan``: listings and counts, which may walk many rows; a lane of their own, so a few
  clients listing a big job cannot make a cheap GET or an agent wait behind them.

Each lane's backlog is bounded for work a client asked for: past the bound the caller gets
`Busy` at once (the API answers 503 ServerBusy with Retry-After) instead of a wait that ends in a
client timeout. Work of the control plane itself (agents, duties) is never refused: there is at
most one call per node and one per duty in flight, so its backlog is bounded by construction.

A request handler is a coroutine: `run_coroutine` runs it to completion on the lane's thread in
an event loop of that thread's own, so route code stays as it is. Such a handler must not await
anything bound to the main loop (the node file client, the wake-up events): see `on_loop`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shoal import telemetry

T = TypeVar("T")

WRITE_THREADS = 1  # never more: see the module docstring
READ_THREADS = 4
SCAN_THREADS = 4
# Queued-plus-running client work per lane past which a client request is refused.
WRITE_BACKLOG = 256
READ_BACKLOG = 128
SCAN_BACKLOG = 32
RETRY_AFTER_S = 1


class Busy(Exception):
    """A lane's backlog is full: the caller should come back after ``retry_after_s``."""

    def __init__(self, lane: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(f"the {lane} lane is full")
        self.lane = lane
        self.retry_after_s = retry_after_s


_thread_loops = threading.local()


def _loop_of_this_thread() -> asyncio.AbstractEventLoop:
    loop = getattr(_thread_loops, "loop", None)
    if loop is None:
        loop = _thread_loops.loop = asyncio.new_event_loop()
    return loop


class Lane:
    """A fixed set of threads with a counted backlog."""

    def __init__(self, name: str, threads: int, backlog: int) -> None:
        self.name = name
        self.backlog = backlog
        # Threads are named <prefix>_<n>: how `submit` knows a call comes from the lane itself.
        self._thread_prefix = f"shoal-{name}"
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=self._thread_prefix)
        self._lock = threading.Lock()
        self._pending = 0
        self._seconds = telemetry.STORE_CALL_SECONDS.labels(name)

    @property
    def pending(self) -> int:
        """Calls submitted and not yet finished (queued or running)."""
        return self._pending

    def full(self) -> bool:
        """Whether client work would be refused now."""
        return self._pending >= self.backlog

    def _done(self, started: float) -> Callable[[concurrent.futures.Future[Any]], None]:
        # A done-callback, not a `finally` in the call: a queued call that is cancelled before
        # it starts never runs, and must still leave the count.
        def done(_future: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._pending -= 1
            self._seconds.observe(time.perf_counter() - started)

        return done

    def submit(self, fn: Callable[..., T], *args: Any, shed: bool) -> concurrent.futures.Future[T]:
        if threading.current_thread().name.startswith(self._thread_prefix + "_"):
            # From one of this lane's own threads the call would wait for itself (on the one
            # writer, for ever): refuse it at once, as the bug it is.
            raise RuntimeError(f"work submitted to the {self.name} lane from that lane")
        with self._lock:
            if shed and self._pending >= self.backlog:
                raise Busy(self.name)
            self._pending += 1
        started = time.perf_counter()
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        future.add_done_callback(self._done(started))
        return future

    async def call(self, fn: Callable[..., T], *args: Any, shed: bool = False) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, shed=shed))

    async def run_coroutine(self, make: Callable[..., Awaitable[T]], *args: Any, shed: bool = False) -> T:
        """``await make(*args)`` on this lane, in the event loop of the thread that runs it."""

        def run() -> T:
            return _loop_of_this_thread().run_until_complete(_as_coroutine(make, *args))

        return await self.call(run, shed=shed)

    def shutdown(self) -> None:
        """Let what was submitted finish (acknowledged work is committed), then stop."""
        self._executor.shutdown(wait=True)


async def _as_coroutine(make: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await make(*args)


class StoreRunner:
    """The three lanes of store work (see the module docstring)."""

    def __init__(self, *, read_threads: int = READ_THREADS, scan_threads: int = SCAN_THREADS,
                 write_backlog: int = WRITE_BACKLOG, read_backlog: int = READ_BACKLOG,
                 scan_backlog: int = SCAN_BACKLOG) -> None:
        self.writer = Lane("writer", WRITE_THREADS, write_backlog)
        self.reader = Lane("reader", read_threads, read_backlog)
        self.scanner = Lane("scanner", scan_threads, scan_backlog)

    def lane(self, name: str) -> Lane:
        return {"write": self.writer, "read": self.reader, "scan": self.scanner}[name]

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.writer.call(fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.reader.call(fn, *args)

    async def scan(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.scanner.call(fn, *args)

    def shutdown(self) -> None:
        for lane in (self.scanner, self.reader, self.writer):
            lane.shutdown()


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` made callable from any thread: it runs on ``loop``. asyncio objects (an Event's
    set, most of all) are not thread-safe; a wake-up set from a store thread must travel."""

    def call(*args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    return call
