"""What pools used: node spans (`node_usage`) and Pool_ListUsageMetrics (issue 10 item 8).

A node's span opens when it is allocated, or comes back from preemption or deallocation, and
closes when it leaves the pool, is preempted or is deallocated: the time Azure bills a VM for.
Core hours are span overlap × the size's vCPUs, per pool, in Batch's 30-minute aggregation
intervals.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from shoal import clock
from shoal.errors import InvalidQuery
from shoal.model.catalog import find_vm_size
from shoal.service import lifetime
from shoal.service.context import Context
from shoal.store.chunks import in_chunks
from shoal.store.schema import node_usage, nodes, pools

INTERVAL = timedelta(minutes=30)
# A window asked for spans at most this many intervals (31 days): a bound on one answer.
MAX_INTERVALS = 31 * 48


def open_spans(conn: Connection, node_ids: Iterable[str], now: datetime | None = None) -> None:
    """The nodes hold their VMs from now (allocated, recovered, started)."""
    ids = list(node_ids)
    if not ids:
        return
    rows = conn.execute(select(nodes.c.id, nodes.c.is_dedicated, pools.c.account, pools.c.id.label("pool_id"),
                               pools.c.vm_size).join(pools, pools.c.seq == nodes.c.pool_seq)
                        .where(nodes.c.id.in_(ids))).all()
    start = now or clock.now()
    conn.execute(insert(node_usage), [{"account": r.account, "pool_id": r.pool_id, "vm_size": r.vm_size,
                                       "node_id": r.id, "is_dedicated": bool(r.is_dedicated),
                                       "start_time": start} for r in rows])
    lifetime.spans_opened(conn, [(r.account, r.vm_size, bool(r.is_dedicated)) for r in rows], start)


def close_spans(conn: Connection, node_ids: Iterable[str], now: datetime | None = None) -> None:
    """The nodes gave their VMs back (left, preempted, deallocated)."""
    ids = list(node_ids)
    end = now or clock.now()
    for chunk in in_chunks(ids):
        still_open = (node_usage.c.node_id.in_(chunk), node_usage.c.end_time.is_(None))
        lifetime.spans_closed(conn, conn.execute(select(node_usage).where(*still_open)).all(), end)
        conn.execute(update(node_usage).where(*still_open).values(end_time=end))


def _floor(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return when.replace(minute=0 if when.minute < 30 else 30, second=0, microsecond=0)


def _parse(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    when = clock.parse_iso(value)
    if when is None:
        raise InvalidQuery(name, value[:64], "The value must be a date and time in ISO 8601 format.")
    return when


def pool_usage_metrics(ctx: Context, start_text: str | None, end_text: str | None) -> list[dict[str, Any]]:
    """One entry per pool and 30-minute interval that had nodes, oldest first. Without times, the
    last whole interval, as Batch answers."""
    now = clock.now()
    start, end = _parse(start_text, "starttime"), _parse(end_text, "endtime")
    last_whole = _floor(now) - INTERVAL
    first = _floor(start) if start else last_whole
    stop = _floor(end) + (INTERVAL if end and end != _floor(end) else timedelta(0)) if end else last_whole + INTERVAL
    stop = min(stop, _floor(now) + INTERVAL)
    if stop <= first:
        return []
    if (stop - first) / INTERVAL > MAX_INTERVALS:
        raise InvalidQuery("endtime", end_text, f"The time range may span at most {MAX_INTERVALS // 48} days.")
    with ctx.engine.connect() as conn:
        spans = conn.execute(select(node_usage).where(
            node_usage.c.account == ctx.account, node_usage.c.start_time < stop,
            or_(node_usage.c.end_time.is_(None), node_usage.c.end_time > first))).all()
    hours: dict[tuple[str, datetime], float] = {}
    sizes: dict[str, str] = {}
    for span in spans:
        size = find_vm_size(span.vm_size)
        cores = size.vcpus if size else 1
        began, ended = clock.as_utc(span.start_time), clock.as_utc(span.end_time) or now
        assert began is not None
        window = _floor(max(began, first))
        while window < min(ended, stop):
            overlap = min(ended, window + INTERVAL) - max(began, window)
            if overlap > timedelta(0):
                key = (span.pool_id, window)
                hours[key] = hours.get(key, 0.0) + cores * overlap.total_seconds() / 3600
                sizes[span.pool_id] = span.vm_size.lower()
            window += INTERVAL
    return [{"poolId": pool_id, "startTime": clock.iso(window), "endTime": clock.iso(window + INTERVAL),
             "vmSize": sizes[pool_id], "totalCoreHours": total}
            for (pool_id, window), total in sorted(hours.items(), key=lambda item: (item[0][1], item[0][0]))]
