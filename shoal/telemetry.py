"""What the server process counts about itself, for `/metrics` (Prometheus' text format).

In-process counters and histograms are updated where the work happens (the request wrapper, the
scheduler, the store lanes, the agent routes); thread-safe, so store threads may update them.
What the store already counts (tasks by state per job, nodes by state per pool, kept as counters
in the same transactions as the state changes) is read at scrape time from those counter rows:
one small read whatever the number of tasks or nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from shoal.model.states import TaskState
from shoal.store.schema import job_task_counts, jobs, pool_node_counts, pools

# The `_created` series add a timestamp per counter that no query of ours needs.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)

# Latency buckets from a point read (~1 ms) to a long-poll that waited its whole timeout.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("shoal_requests", "HTTP requests answered, by operation and status code.",
                   ["operation", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("shoal_request_duration_seconds", "Time to answer an HTTP request, by operation.",
                            ["operation"], buckets=_SECONDS, registry=REGISTRY)
PLACEMENTS = Counter("shoal_task_placements", "Tasks placed on nodes by the scheduler.", registry=REGISTRY)
SCHEDULER_PASS_SECONDS = Histogram("shoal_scheduler_pass_duration_seconds",
                                   "Duration of a scheduling pass over every pool.", buckets=_SECONDS,
                                   registry=REGISTRY)
STORE_CALL_SECONDS = Histogram("shoal_store_call_duration_seconds",
                               "Time a store call took from submission to its end, by lane "
                               "(writer, reader, scanner): queueing included.",
                               ["lane"], buckets=_SECONDS, registry=REGISTRY)
AGENT_SYNCS = Counter("shoal_agent_syncs", "Node agent syncs received (a batch sync counts each node's entry).",
                      registry=REGISTRY)

# Every operation name a request can be counted under is a handler's name (a fixed set): a
# label value never comes from what the client sent.
UNMATCHED = "unmatched"


_STATES = (str(TaskState.ACTIVE), str(TaskState.RUNNING), str(TaskState.COMPLETED))
_RESULTS = ("succeeded", "failed")


class StoreCounts:
    """Tasks by state and nodes by state per pool, from the store's counter rows."""

    def __init__(self, engine: Any, account: str) -> None:
        self.engine = engine
        self.account = account

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("shoal_tasks", "Tasks of live jobs by state (from the job counters).",
                                  labels=["state"])
        results = GaugeMetricFamily("shoal_completed_tasks", "Completed tasks of live jobs by result.",
                                    labels=["result"])
        nodes = GaugeMetricFamily("shoal_nodes", "Compute nodes by pool, state and kind (dedicated or spot).",
                                  labels=["pool", "state", "kind"])
        with self.engine.connect() as conn:
            buckets = (*_STATES, *_RESULTS)
            totals = conn.execute(select(*(func.coalesce(func.sum(job_task_counts.c[b]), 0) for b in buckets))
                                  .select_from(job_task_counts.join(jobs, jobs.c.seq == job_task_counts.c.job_seq))
                                  .where(jobs.c.account == self.account)).one()
            for bucket, total in zip(buckets, totals, strict=True):
                (tasks if bucket in _STATES else results).add_metric([bucket], float(total))
            rows = conn.execute(select(pools.c.id, pool_node_counts.c.state, pool_node_counts.c.is_dedicated,
                                       pool_node_counts.c.count)
                                .select_from(pool_node_counts.join(pools, pools.c.seq == pool_node_counts.c.pool_seq))
                                .where(pools.c.account == self.account, pool_node_counts.c.count > 0))
            for pool_id, state, dedicated, count in rows:
                nodes.add_metric([pool_id, state, "dedicated" if dedicated else "spot"], float(count))
        yield tasks
        yield results
        yield nodes


def exposition() -> bytes:
    """The registry in Prometheus' text format; reads the store (call it off the event loop)."""
    return generate_latest(REGISTRY)


_watched: list[StoreCounts] = []


def watch_store(engine: Any, account: str) -> StoreCounts:
    """Report this store's counts from now on (a process serves one store: a later call, from a
    server made again in the same process, replaces the earlier one)."""
    while _watched:
        REGISTRY.unregister(_watched.pop())  # type: ignore[arg-type]
    counts = StoreCounts(engine, account)
    REGISTRY.register(counts)  # type: ignore[arg-type]
    _watched.append(counts)
    return counts
