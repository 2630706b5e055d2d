"""The usage ledger (beyond Azure, issue 10 item 8): what jobs and pools used, in core-hours and
node-hours, so a user can price a workload (`shoal usage`; prices are the client's to apply).

Jobs: every attempt that leaves a node (completed, retried, requeued, terminated) adds its
slot-seconds (duration × requiredSlots) and core-seconds (slot-seconds × the node's vCPUs per
slot) to its job's counter row for that pool, VM size and node kind, in the transaction that
ends it: one grouped write per job touched, whatever the number of tasks. Pools: the node spans
of `node_usage` (service/usage.py), the time each node held its VM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from shoal import clock
from shoal.model.catalog import find_vm_size
from shoal.service.context import Context
from shoal.store.chunks import in_chunks
from shoal.store.schema import job_usage, jobs, node_usage, nodes, pools

# A job has a row per pool, VM size and node kind it ran on: a handful.
MAX_ROWS_PER_ANSWER = 2000


@dataclass(frozen=True)
class EndedAttempt:
    node_id: str
    job_seq: int
    slots: int
    start: datetime | None
    end: datetime


def record(conn: Connection, ended: Iterable[EndedAttempt]) -> None:
    """Add what these attempts used to their jobs' rows."""
    attempts = [a for a in ended if a.start is not None]
    if not attempts:
        return
    where: dict[str, Any] = {}
    for chunk in in_chunks(sorted({a.node_id for a in attempts})):
        where.update((r.id, r) for r in conn.execute(
            select(nodes.c.id, nodes.c.is_dedicated, pools.c.id.label("pool_id"), pools.c.vm_size,
                   pools.c.slots_per_node).join(pools, pools.c.seq == nodes.c.pool_seq).where(nodes.c.id.in_(chunk))))
    owners: dict[int, Any] = {}
    for seqs in in_chunks(sorted({a.job_seq for a in attempts})):
        owners.update((r.seq, r) for r in conn.execute(
            select(jobs.c.seq, jobs.c.id, jobs.c.account).where(jobs.c.seq.in_(seqs))))
    totals: dict[tuple[str, str, str, str, bool], list[float]] = {}
    for attempt in attempts:
        node, job = where.get(attempt.node_id), owners.get(attempt.job_seq)
        if node is None or job is None:
            continue
        assert attempt.start is not None
        seconds = max(0.0, (clock.as_utc(attempt.end) - clock.as_utc(attempt.start)).total_seconds())  # type: ignore[operator]
        size = find_vm_size(node.vm_size)
        cores_per_slot = (size.vcpus if size else 1) / max(1, node.slots_per_node or 1)
        key = (job.account, job.id, node.pool_id, node.vm_size.lower(), bool(node.is_dedicated))
        total = totals.setdefault(key, [0, 0.0, 0.0])
        total[0] += 1
        total[1] += seconds * attempt.slots
        total[2] += seconds * attempt.slots * cores_per_slot
    for (account, job_id, pool_id, vm_size, dedicated), (count, slot_s, core_s) in totals.items():
        match = ((job_usage.c.account == account) & (job_usage.c.job_id == job_id) & (job_usage.c.pool_id == pool_id)
                 & (job_usage.c.vm_size == vm_size) & (job_usage.c.is_dedicated == dedicated))
        changed = conn.execute(update(job_usage).where(match).values(
            attempts=job_usage.c.attempts + count, slot_seconds=job_usage.c.slot_seconds + slot_s,
            core_seconds=job_usage.c.core_seconds + core_s)).rowcount
        if not changed:  # one writer (the store runner's), so no other insert can race this one
            conn.execute(insert(job_usage).values(account=account, job_id=job_id, pool_id=pool_id, vm_size=vm_size,
                                                  is_dedicated=dedicated, attempts=count, slot_seconds=slot_s,
                                                  core_seconds=core_s))


def _kind(dedicated: bool) -> str:
    return "dedicated" if dedicated else "spot"


def usage(ctx: Context, after_job: str | None = None) -> dict[str, Any]:
    """The ledger: every pool's node-hours and core-hours (since the account began), and the
    jobs' rows in job id order after ``after_job``, a page at a time (``nextJob`` continues)."""
    now = clock.now()
    with ctx.engine.connect() as conn:
        spans = conn.execute(select(node_usage.c.pool_id, node_usage.c.vm_size, node_usage.c.is_dedicated,
                                    node_usage.c.start_time, node_usage.c.end_time)
                             .where(node_usage.c.account == ctx.account)).all()
        query = select(job_usage).where(job_usage.c.account == ctx.account)
        if after_job is not None:
            query = query.where(job_usage.c.job_id > after_job)
        job_rows = list(conn.execute(query.order_by(job_usage.c.job_id, job_usage.c.pool_id, job_usage.c.vm_size,
                                                    job_usage.c.is_dedicated).limit(MAX_ROWS_PER_ANSWER)))
    pools_out: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for span in spans:
        size = find_vm_size(span.vm_size)
        began, ended = clock.as_utc(span.start_time), clock.as_utc(span.end_time) or now
        hours = max(0.0, (ended - began).total_seconds()) / 3600  # type: ignore[operator]
        entry = pools_out.setdefault((span.pool_id, span.vm_size.lower(), bool(span.is_dedicated)), {
            "poolId": span.pool_id, "vmSize": span.vm_size.lower(), "kind": _kind(bool(span.is_dedicated)),
            "vcpus": size.vcpus if size else 1, "nodeHours": 0.0, "coreHours": 0.0})
        entry["nodeHours"] += hours
        entry["coreHours"] += hours * entry["vcpus"]
    following = None
    if len(job_rows) == MAX_ROWS_PER_ANSWER:
        # The last job's rows may go on past the page: that job starts the next one.
        last = job_rows[-1].job_id
        job_rows = [row for row in job_rows if row.job_id != last]
        following = job_rows[-1].job_id if job_rows else None
    jobs_out = [{"jobId": row.job_id, "poolId": row.pool_id, "vmSize": row.vm_size,
                 "kind": _kind(bool(row.is_dedicated)), "attempts": row.attempts,
                 "taskHours": row.slot_seconds / 3600, "coreHours": row.core_seconds / 3600} for row in job_rows]
    return {"asOf": clock.iso(now), "pools": sorted(pools_out.values(), key=lambda p: (p["poolId"], p["kind"])),
            "jobs": jobs_out, "nextJob": following}
