"""Pool_GetAllLifetimeStatistics and Job_GetAllLifetimeStatistics (api-versions before
2023-05-01.17.0; issue 10 item 8): the account's totals, from one row of counters.

The counters are added to where things happen, in the same transaction: every task move
(transitions._apply) counts completed tasks by result, their retries and their wait (creation to
the start of the last attempt), and the wall-clock time of every attempt that leaves a node; every
node span that opens or closes (usage.open_spans / close_spans) moves the dedicated cores counted as
open, so the dedicated core time up to now is closed core-seconds + open cores × now − Σ cores ×
start. An answer reads one row, whatever the number of tasks, jobs or nodes.

CPU times, I/O and the resource statistics are not measured on local nodes: they are 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from shoal import clock
from shoal.model.catalog import find_vm_size
from shoal.service.context import Context
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, lifetime_stats

_COUNTERS = ("succeeded", "failed", "retries", "wall_clock_seconds", "wait_seconds", "closed_core_seconds",
             "open_dedicated_cores", "open_core_epochs")


def _add(conn: Connection, increments: dict[str, dict[str, float]], now: datetime) -> None:
    """Add ``increments`` ({account: {counter: amount}}) to the accounts' rows."""
    row = lifetime_stats.c
    for account, amounts in increments.items():
        amounts = {name: value for name, value in amounts.items() if value}
        if not amounts:
            continue
        changed = conn.execute(update(lifetime_stats).where(row.account == account).values(
            last_update_time=now, **{name: getattr(row, name) + value for name, value in amounts.items()})).rowcount
        if not changed:  # the one writer: no insert can race this one
            conn.execute(insert(lifetime_stats).values(
                account=account, start_time=now, last_update_time=now,
                **{name: amounts.get(name, 0) for name in _COUNTERS}))


def count_moves(conn: Connection, moves: list[dict[str, Any]], attempt_ends: list[tuple[dict[str, Any], datetime]],
                now: datetime) -> None:
    """Count what these task moves finished: completed tasks by result, their retries and wait
    times, and the wall-clock time of the attempts that left a node (``attempt_ends``)."""
    job_seqs = {m["b_job_seq"] for m in moves if m["b_state"] == "completed"}
    job_seqs |= {m["b_job_seq"] for m, _end in attempt_ends}
    if not job_seqs:
        return
    accounts: dict[int, str] = {}
    for chunk in in_chunks(sorted(job_seqs)):
        accounts.update((seq, account) for seq, account in conn.execute(
            select(jobs.c.seq, jobs.c.account).where(jobs.c.seq.in_(chunk))))
    increments: dict[str, dict[str, float]] = {}
    for move in moves:
        account = accounts.get(move["b_job_seq"])
        if move["b_state"] != "completed" or account is None:
            continue
        counts = increments.setdefault(account, {})
        result = "succeeded" if move["b_outcome"] == "success" else "failed"
        counts[result] = counts.get(result, 0) + 1
        info = move["b_info"]
        counts["retries"] = counts.get("retries", 0) + int(info.get("retryCount") or 0)
        started, created = clock.parse_iso(info.get("startTime")), move.get("b_created")
        if started is not None and created is not None:
            counts["wait_seconds"] = counts.get("wait_seconds", 0.0) + max(
                0.0, clock.seconds_between(started, clock.as_utc(created) or started))
    for move, end in attempt_ends:
        account = accounts.get(move["b_job_seq"])
        began = clock.as_utc(move["b_previous_time"])
        if account is None or began is None:
            continue
        counts = increments.setdefault(account, {})
        counts["wall_clock_seconds"] = counts.get("wall_clock_seconds", 0.0) + max(
            0.0, clock.seconds_between(clock.as_utc(end) or began, began))
    _add(conn, increments, now)


def _cores(vm_size: str) -> float:
    size = find_vm_size(vm_size)
    return float(size.vcpus if size else 1)


def spans_opened(conn: Connection, spans: Iterable[tuple[str, str, bool]], start: datetime) -> None:
    """Dedicated nodes ((account, vm size, is dedicated) each) hold their VMs from ``start``."""
    increments: dict[str, dict[str, float]] = {}
    for account, vm_size, dedicated in spans:
        if dedicated:
            counts = increments.setdefault(account, {"open_dedicated_cores": 0.0, "open_core_epochs": 0.0})
            counts["open_dedicated_cores"] += _cores(vm_size)
            counts["open_core_epochs"] += _cores(vm_size) * start.timestamp()
    _add(conn, increments, start)


def spans_closed(conn: Connection, spans: Iterable[Any], end: datetime) -> None:
    """The open spans (rows of node_usage) closed at ``end``."""
    increments: dict[str, dict[str, float]] = {}
    for span in spans:
        if not span.is_dedicated:
            continue
        start = clock.as_utc(span.start_time) or end
        cores = _cores(span.vm_size)
        counts = increments.setdefault(span.account, {"open_dedicated_cores": 0.0, "open_core_epochs": 0.0,
                                                      "closed_core_seconds": 0.0})
        counts["open_dedicated_cores"] -= cores
        counts["open_core_epochs"] -= cores * start.timestamp()
        counts["closed_core_seconds"] += cores * max(0.0, clock.seconds_between(end, start))
    _add(conn, increments, end)


def _row(ctx: Context) -> tuple[Any, datetime]:
    now = clock.now()
    with ctx.engine.connect() as conn:
        return conn.execute(select(lifetime_stats).where(lifetime_stats.c.account == ctx.account)).first(), now


def _duration(seconds: float) -> str:
    return clock.format_duration(timedelta(seconds=round(max(0.0, seconds), 3)))


def pool_statistics(ctx: Context) -> dict[str, Any]:
    row, now = _row(ctx)
    start = clock.iso(row.start_time if row is not None else now)
    updated = clock.iso(row.last_update_time if row is not None else now)
    core_seconds = 0.0
    if row is not None:
        core_seconds = row.closed_core_seconds + row.open_dedicated_cores * now.timestamp() - row.open_core_epochs
    return {
        "usageStats": {"startTime": start, "lastUpdateTime": updated, "dedicatedCoreTime": _duration(core_seconds)},
        "resourceStats": {"startTime": start, "diskReadIOps": "0", "diskWriteIOps": "0", "lastUpdateTime": updated,
                          "avgCPUPercentage": 0.0, "avgMemoryGiB": 0.0, "peakMemoryGiB": 0.0, "avgDiskGiB": 0.0,
                          "peakDiskGiB": 0.0, "diskReadGiB": 0.0, "diskWriteGiB": 0.0, "networkReadGiB": 0.0,
                          "networkWriteGiB": 0.0},
    }


def job_statistics(ctx: Context) -> dict[str, Any]:
    row, now = _row(ctx)
    return {
        "startTime": clock.iso(row.start_time if row is not None else now),
        "lastUpdateTime": clock.iso(row.last_update_time if row is not None else now),
        "userCPUTime": "PT0S", "kernelCPUTime": "PT0S",
        "wallClockTime": _duration(row.wall_clock_seconds if row is not None else 0.0),
        "readIOps": "0", "writeIOps": "0", "readIOGiB": 0.0, "writeIOGiB": 0.0,
        "numTaskRetries": str(row.retries if row is not None else 0),
        "numSucceededTasks": str(row.succeeded if row is not None else 0),
        "numFailedTasks": str(row.failed if row is not None else 0),
        "waitTime": _duration(row.wait_seconds if row is not None else 0.0),
    }
