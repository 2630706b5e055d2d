"""Heartbeat timers in memory (shoal.service.liveness), judged only by a loop known to be on time."""

from __future__ import annotations

import asyncio
import time

from shoal.service.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_node_is_silent_only_a_full_timeout_after_its_last_call():
    clock = Clock()
    board = Liveness(clock)
    board.track(["b"])  # live in the store, never called: counts from when it was tracked
    clock.now += 2
    board.beat("a")
    clock.now += 2.5
    assert board.silent(3.0) == ["b"]
    clock.now += 1
    assert board.silent(3.0) == ["b", "a"]
    board.beat("a")
    assert board.silent(3.0) == ["b"]
    board.track(["a", "b"])  # tracking a node already on the board changes nothing
    assert board.silent(3.0) == ["b"]
    board.forget_all(["b"])
    assert board.silent(3.0) == []


def test_finding_the_silent_walks_only_them():
    clock = Clock()
    board = Liveness(clock)
    for i in range(100_000):
        board.beat(f"n{i}")
    clock.now += 10
    for i in range(100_000):  # all call again but n5
        if i != 5:
            board.beat(f"n{i}")
    clock.now += 5
    board.beat("late")
    # Only n5 is older than 12 s; the walk stops at the first node in time.
    assert board.silent(12.0) == ["n5"]


def test_the_store_is_read_for_untracked_live_nodes_only_every_resync_interval():
    clock = Clock()
    board = Liveness(clock)
    assert board.resync_due()
    board.track([])
    assert not board.resync_due()
    clock.now += 29
    assert not board.resync_due()
    clock.now += 1
    assert board.resync_due()


def test_after_a_stall_every_node_gets_a_full_timeout_again():
    clock = Clock()
    board = Liveness(clock)
    board.beat("a")
    board.track(["b"])
    clock.now += 60  # the loop was held up: "a" may well have called, unread
    board.forgive()
    assert board.silent(3.0) == []
    clock.now += 3.5
    assert board.silent(3.0) == ["a", "b"]


def test_the_loop_counts_as_on_time_only_while_it_ticks():
    clock = Clock()
    board = Liveness(clock)
    assert board.loop_on_time(1.0)
    clock.now += 1.5
    assert not board.loop_on_time(1.0)
    board.tick()
    assert board.loop_on_time(1.0)


def test_the_watch_forgives_when_its_own_wake_up_comes_late():
    board = Liveness()

    async def main() -> None:
        watch = asyncio.ensure_future(board.watch_loop(tick_s=0.02, late_s=0.2))
        await asyncio.sleep(0.1)
        board.beat("a")
        time.sleep(0.5)  # block the loop, as a store call on it once did
        before = time.monotonic()
        await asyncio.sleep(0.1)
        watch.cancel()
        # Forgiven at the late wake-up: "a" is not silent for a timeout shorter than the stall.
        assert board.silent(0.3) == []
        assert board._grace_from >= before - 0.05  # noqa: SLF001

    asyncio.run(main())
