"""Account quotas (semantics §6.1) and the machine's node capacity: what bounds the work one
request can ask for.

As in Batch, the pool and active-job quotas refuse the create (409 `PoolQuotaReached`,
`ActiveJobAndScheduleQuotaReached`), while the core quotas never refuse a request: a pool whose
targets exceed them is accepted, gets the nodes that fit, and ends its resize with the resize
error `AccountCoreQuotaReached`. The local machine's node capacity works the same way with
`AllocationFailed`, so a target of a billion nodes costs one short resize, not a billion rows.

Defaults lie within the ranges Batch gives new Batch-service-mode accounts (semantics §6.1:
dedicated cores 0–900, low-priority cores 0–100, pools 0–100, active jobs 100–300); each is
adjustable with an environment variable of the server (Batch: a support request).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from shoal.errors import Conflict
from shoal.model import catalog
from shoal.model.states import JobState, NodeState, PoolState
from shoal.service.context import Context
from shoal.store.schema import job_schedules, jobs, nodes, pools


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Quotas:
    dedicated_cores: int
    low_priority_cores: int
    pools: int
    active_jobs_and_schedules: int
    # Nodes this machine hosts at once (each local node is an agent process).
    machine_nodes: int


def current() -> Quotas:
    return Quotas(
        dedicated_cores=_env_int("SHOAL_QUOTA_DEDICATED_CORES", 500),
        low_priority_cores=_env_int("SHOAL_QUOTA_LOW_PRIORITY_CORES", 100),
        pools=_env_int("SHOAL_QUOTA_POOLS", 100),
        active_jobs_and_schedules=_env_int("SHOAL_QUOTA_ACTIVE_JOBS", 300),
        machine_nodes=_env_int("SHOAL_MAX_NODES", 64),
    )


# Jobs that no longer count against the quota (Batch: completed jobs do not; a job being deleted
# is on its way out).
_INACTIVE_JOB_STATES = (JobState.COMPLETED, JobState.DELETING)


def check_pool_count(ctx: Context, conn: Connection) -> None:
    count = conn.execute(select(func.count()).select_from(pools).where(
        pools.c.account == ctx.account, pools.c.state != PoolState.DELETING)).scalar_one()
    if count >= current().pools:
        raise Conflict("The pool quota for the account has been reached.", code="PoolQuotaReached",
                       values={"Quota": str(current().pools)})


def active_jobs_and_schedules(ctx: Context, conn: Connection) -> int:
    """Active jobs and job schedules share one quota (semantics §6.1)."""
    count = conn.execute(select(func.count()).select_from(jobs).where(
        jobs.c.account == ctx.account, jobs.c.state.not_in(_INACTIVE_JOB_STATES))).scalar_one()
    return int(count) + int(conn.execute(select(func.count()).select_from(job_schedules).where(
        job_schedules.c.account == ctx.account,
        job_schedules.c.state.not_in(_INACTIVE_JOB_STATES))).scalar_one())


def check_active_jobs(ctx: Context, conn: Connection, *, adding: int = 1) -> None:
    """Refuse adding `adding` jobs or schedules beyond the quota."""
    limit = current().active_jobs_and_schedules
    if active_jobs_and_schedules(ctx, conn) + adding > limit:
        raise Conflict("Active job and job schedule quota for the account has been reached.",
                       code="ActiveJobAndScheduleQuotaReached", values={"Quota": str(limit)})


def vcpus_of(vm_size: str) -> int:
    size = catalog.find_vm_size(vm_size)
    return size.vcpus if size is not None else 1


@dataclass(frozen=True)
class Room:
    """How many more nodes of one kind a pool may get now, and what stops it at that number."""

    nodes: int
    limited_by: str | None  # "quota", "capacity", or None when `wanted` fits


def room_for(ctx: Context, conn: Connection, pool: Any, dedicated: bool, wanted: int) -> Room:
    """Nodes of `pool` that may be added now, out of `wanted`, within the account's core quota
    for that kind and the machine's node capacity."""
    if wanted <= 0:
        return Room(0, None)
    quota = current()
    limit_cores = quota.dedicated_cores if dedicated else quota.low_priority_cores
    used_cores = 0
    rows = conn.execute(
        select(pools.c.vm_size, func.count())
        .select_from(nodes.join(pools, pools.c.seq == nodes.c.pool_seq))
        .where(pools.c.account == ctx.account, nodes.c.is_dedicated.is_(dedicated),
               nodes.c.state != NodeState.LEAVING_POOL)
        .group_by(pools.c.vm_size)).all()
    for vm_size, count in rows:
        used_cores += vcpus_of(vm_size) * count
    by_quota = max(0, (limit_cores - used_cores) // vcpus_of(pool.vm_size))
    all_nodes = conn.execute(select(func.count()).select_from(nodes)).scalar_one()
    by_capacity = max(0, quota.machine_nodes - all_nodes)
    allowed = min(wanted, by_quota, by_capacity)
    if allowed == wanted:
        return Room(allowed, None)
    return Room(allowed, "quota" if by_quota <= by_capacity else "capacity")


def quota_error(dedicated: bool) -> dict[str, str]:
    kind = "dedicated" if dedicated else "low-priority"
    return {"code": "AccountCoreQuotaReached",
            "message": f"The specified account has reached its {kind} core quota; the pool was resized "
                       f"as far as the quota allows."}


def capacity_error() -> dict[str, str]:
    return {"code": "AllocationFailed",
            "message": "This machine has no capacity for more nodes (SHOAL_MAX_NODES); the pool was "
                       "resized as far as the capacity allows."}

