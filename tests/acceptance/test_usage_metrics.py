"""Pool_ListUsageMetrics (issue 10 item 8): core hours per pool and 30-minute interval, from when
each node held its VM; nodes that leave stop counting."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.batch import models

from tests.acceptance import rest
from tests.helpers import pool_options, wait_for, wait_pool_idle

POOL = "metered"


def _usage(client: Any, start: datetime, end: datetime) -> list[Any]:
    return [m for m in client.list_pool_usage_metrics(start_time=start, end_time=end) if m.pool_id == POOL]


def test_core_hours_grow_with_the_nodes_and_stop_when_they_leave(client):
    before = datetime.now(UTC)
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2))  # standard_d2s_v3: 2 vCPUs each
    wait_pool_idle(client, POOL, 2)
    time.sleep(2)
    start, end = before - timedelta(hours=1), datetime.now(UTC) + timedelta(minutes=1)
    entries = _usage(client, start, end)
    elapsed_h = (datetime.now(UTC) - before).total_seconds() / 3600
    assert entries, "no usage for a pool with two nodes"
    total = sum(e.total_core_hours for e in entries)
    assert 0 < total <= 2 * 2 * elapsed_h * 1.01
    assert total >= 2 * 2 * (2 / 3600)  # at least the two seconds slept, on both nodes
    assert all(e.vm_size == "standard_d2s_v3" for e in entries)
    assert all((e.end_time - e.start_time) == timedelta(minutes=30) and e.start_time.minute in (0, 30)
               for e in entries)
    client.begin_resize_pool(POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=0), polling_interval=0.2)
    wait_for(lambda: not list(client.list_nodes(POOL)), 30, message="nodes gone")
    settled = sum(e.total_core_hours for e in _usage(client, start, end))
    time.sleep(1.5)
    assert sum(e.total_core_hours for e in _usage(client, start, end)) == settled  # no VM, no hours


def test_without_times_only_the_last_whole_interval_is_listed(client):
    # The pool above came up in the current interval, not the last whole one.
    listed = [m for m in client.list_pool_usage_metrics() if m.pool_id == POOL]
    now = datetime.now(UTC)
    assert all(m.end_time <= now for m in listed)


def test_bad_times_are_refused(shoal):
    for params in ({"starttime": "yesterday"}, {"starttime": "2026-01-01T00:00:00Z", "endtime": "2026-06-01T00:00:00Z"}):
        rest.assert_batch_error(rest.call(shoal, "GET", "/poolusagemetrics", params=params), 400,
                                "InvalidQueryParameterValue")
