"""Metric samples for autoscale: one sample per metric per pool every sample period.

Task and node counts come from the store; resource metrics ($CPUPercent, memory, disk,
network) are the average of what the pool's agents last reported. Samples are stamped on the
sample grid of the scaled timeline (shoal/timebase.py; the grid and what formulas see of it are
shoal/autoscale/samples.py) and trimmed to a bounded history.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select

from shoal import clock
from shoal.autoscale import seed_sample_time
from shoal.model.states import JobState, NodeState, PoolState
from shoal.service.context import Context
from shoal.store.schema import job_task_counts, jobs, metric_samples, nodes, pool_node_counts, pools

# Semantics §1.7: keep at least 24 h of history.
HISTORY = timedelta(hours=24)
TASK_METRICS = ("$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks")
NODE_COUNT_METRICS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$PreemptedNodeCount",
                      "$UsableNodeCount", "$TaskSlotsPerNode")
# The pool's targets at each tick, for the dashboard's chart only: a formula cannot name them
# (no `$`), and the autoscale history leaves them out.
TARGET_METRICS = ("targetDedicatedNodes", "targetLowPriorityNodes")
# What agents report (keys of the `metrics` object in a sync) → formula variable.
RESOURCE_METRICS = {
    "cpuPercent": "$CPUPercent", "memoryMiB": "$MemoryBytes", "diskGiB": "$DiskBytes",
    "diskReadBytes": "$DiskReadBytes", "diskWriteBytes": "$DiskWriteBytes", "diskReadOps": "$DiskReadOps",
    "diskWriteOps": "$DiskWriteOps", "networkInBytes": "$NetworkInBytes", "networkOutBytes": "$NetworkOutBytes",
    "wallClockSeconds": "$WallClockSeconds",
}
LIVE_JOB_STATES = (JobState.ACTIVE, JobState.DISABLING, JobState.DISABLED, JobState.ENABLING)


def pool_counts(conn: Connection, pool: Any) -> dict[str, float]:
    """The task- and node-count variables of one pool, as a formula reads them now: sums of the
    counters the store keeps per job and per pool, never a count over tasks or nodes."""
    totals = conn.execute(
        select(func.sum(job_task_counts.c.active - job_task_counts.c.blocked + job_task_counts.c.extra_instances),
               func.sum(job_task_counts.c.running),
               func.sum(job_task_counts.c.succeeded), func.sum(job_task_counts.c.failed))
        .join(jobs, jobs.c.seq == job_task_counts.c.job_seq)
        .where(jobs.c.account == pool.account, jobs.c.pool_key == pool.key,
               jobs.c.state.in_(LIVE_JOB_STATES))).one()
    # A task blocked by its dependencies is active but not yet schedulable: Batch's $ActiveTasks
    # (and so $PendingTasks) count it only once its dependencies are satisfied. A ready
    # multi-instance task counts numberOfInstances times (semantics §1.6).
    active, running, succeeded, failed = (float(value or 0) for value in totals)
    out = {"$ActiveTasks": active, "$RunningTasks": running, "$SucceededTasks": succeeded,
           "$FailedTasks": failed, "$PendingTasks": active + running}
    node_rows = conn.execute(select(pool_node_counts.c.state, pool_node_counts.c.is_dedicated,
                                    pool_node_counts.c.count)
                             .where(pool_node_counts.c.pool_seq == pool.seq,
                                    pool_node_counts.c.state != NodeState.LEAVING_POOL)).all()
    out.update(dict.fromkeys(NODE_COUNT_METRICS, 0.0))
    for state, dedicated, count in node_rows:
        out["$CurrentDedicatedNodes" if dedicated else "$CurrentLowPriorityNodes"] += count
        if state == NodeState.PREEMPTED:
            out["$PreemptedNodeCount"] += count
        if state in (NodeState.IDLE, NodeState.RUNNING):
            out["$UsableNodeCount"] += count
    out["$TaskSlotsPerNode"] = float(pool.slots_per_node)
    return out


# Old samples go in batches through the (pool, time) index, so one tick's trim is bounded work
# and never a scan of the whole table.
TRIM_BATCH = 5000
TRIM_BATCHES_PER_TICK = 20


def trim_history(conn: Connection, pool_seqs: list[int], before: datetime) -> int:
    """Delete samples older than `before`, at most TRIM_BATCH × TRIM_BATCHES_PER_TICK; the rest
    goes on the next tick. Returns how many went."""
    removed = 0
    for pool_seq in pool_seqs:
        for _ in range(TRIM_BATCHES_PER_TICK):
            old = (select(metric_samples.c.seq)
                   .where(metric_samples.c.pool_seq == pool_seq, metric_samples.c.time < before)
                   .order_by(metric_samples.c.time).limit(TRIM_BATCH).scalar_subquery())
            gone = conn.execute(delete(metric_samples).where(metric_samples.c.seq.in_(old))).rowcount
            removed += gone
            if gone < TRIM_BATCH:
                break
    return removed


def _resource_averages(ctx: Context, node_ids: list[str]) -> dict[str, float]:
    readings = [ctx.node_metrics[n] for n in node_ids if n in ctx.node_metrics]
    if not readings:
        return {}
    totals: dict[str, float] = defaultdict(float)
    for reading in readings:
        for key, variable in RESOURCE_METRICS.items():
            totals[variable] += float(reading.get(key) or 0.0)
    out = {variable: total / len(readings) for variable, total in totals.items()}
    out["$SampleNodeCount"] = float(len(readings))
    return out


def record_zero_samples(conn: Connection, pool_seq: int, created: datetime, lag: timedelta) -> None:
    """Semantics §7.10: a new pool starts with one zero sample of every count metric, so
    formulas like `val($PendingTasks.GetSample(1), 0)` have something to read, from the
    evaluation that runs as the pool is created on."""
    when = seed_sample_time(created, lag)
    conn.execute(insert(metric_samples), [
        {"pool_seq": pool_seq, "metric": metric, "node_id": None, "time": when, "value": 0.0}
        for metric in (*TASK_METRICS, *NODE_COUNT_METRICS)])


def sample(ctx: Context, now: datetime) -> None:
    """One sample tick over every pool of the account, stamped `now` (an instant of the sample
    grid, whenever the write gets to run); trims history past HISTORY."""
    with ctx.engine.begin() as conn:
        for pool in conn.execute(select(pools).where(pools.c.account == ctx.account,
                                                     pools.c.state == PoolState.ACTIVE)).all():
            values = pool_counts(conn, pool)
            live = conn.execute(select(nodes.c.id).where(
                nodes.c.pool_seq == pool.seq, nodes.c.state.in_((
                    NodeState.IDLE, NodeState.RUNNING, NodeState.WAITING_FOR_START_TASK,
                    NodeState.START_TASK_FAILED)))).scalars().all()
            values.update(_resource_averages(ctx, list(live)))
            values.update({"targetDedicatedNodes": float(pool.target_dedicated),
                           "targetLowPriorityNodes": float(pool.target_low_priority)})
            conn.execute(insert(metric_samples), [
                {"pool_seq": pool.seq, "metric": metric, "node_id": None, "time": now, "value": value}
                for metric, value in values.items()])
        trim_history(conn, list(conn.execute(select(pools.c.seq)).scalars()),
                     now - HISTORY)


def history(conn: Connection, pool_seq: int, now: datetime) -> dict[str, list[tuple[datetime, float]]]:
    rows = conn.execute(select(metric_samples.c.metric, metric_samples.c.time, metric_samples.c.value)
                        .where(and_(metric_samples.c.pool_seq == pool_seq,
                                    metric_samples.c.time >= now - HISTORY,
                                    metric_samples.c.metric.not_in(TARGET_METRICS)))
                        .order_by(metric_samples.c.time, metric_samples.c.seq)).all()
    out: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for metric, when, value in rows:
        stamp = clock.as_utc(when)
        assert stamp is not None
        out[metric].append((stamp, value))
    return dict(out)


def series(conn: Connection, pool_seq: int, metrics: tuple[str, ...], since: datetime,
           max_points: int) -> dict[str, list[tuple[datetime, float]]]:
    """Pool-level samples of ``metrics`` from ``since`` on, for a chart: a walk of the
    (pool, time) index, thinned to at most ``max_points`` per metric (every n-th sample, the
    last one always kept)."""
    rows = conn.execute(select(metric_samples.c.metric, metric_samples.c.time, metric_samples.c.value)
                        .where(metric_samples.c.pool_seq == pool_seq, metric_samples.c.time >= since,
                               metric_samples.c.metric.in_(metrics), metric_samples.c.node_id.is_(None))
                        .order_by(metric_samples.c.time, metric_samples.c.seq)).all()
    out: dict[str, list[tuple[datetime, float]]] = {metric: [] for metric in metrics}
    for metric, when, value in rows:
        stamp = clock.as_utc(when)
        assert stamp is not None
        out[metric].append((stamp, value))
    for metric, points in out.items():
        if len(points) > max_points:
            step = -(-len(points) // max_points)
            out[metric] = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    return out
