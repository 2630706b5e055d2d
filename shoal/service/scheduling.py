"""The shell around the pure scheduler: snapshot from the store, plan, commit in one transaction."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from shoal import clock, telemetry
from shoal.agent.layout import task_folder
from shoal.model.states import SCHEDULABLE_NODE_STATES, JobState, NodeState, PoolState, TaskState
from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan
from shoal.service import job_prep_nodes, subtasks
from shoal.service.context import Context
from shoal.store.chunks import in_chunks
from shoal.store.schema import job_task_counts, jobs, nodes, pools, tasks

# The most placements one transaction commits; a pass over a pool with more free slots and ready
# tasks continues in the next transaction. Each costs a snapshot (~80 ms CPU at 10,000 free nodes),
# so 5,000 keeps a 10,000 × 4-slot fill at ~1.25× the CPU of one transaction while no transaction
# holds the write lock for more than ~0.4 s (measured on SQLite, bench/placement.py --store).
PLACEMENTS_PER_TRANSACTION = 5_000


# Built once and run with every placement of a pass (executemany): per-row statement building
# cost more than the database work.
_START = (
    update(tasks)
    .where(tasks.c.seq == bindparam("b_seq"), tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0)
    .values(state=TaskState.RUNNING, previous_state=TaskState.ACTIVE,
            previous_state_transition_time=bindparam("b_previous_time", type_=tasks.c.state_transition_time.type),
            state_transition_time=bindparam("b_now", type_=tasks.c.state_transition_time.type),
            node_id=bindparam("b_node"), attempt=bindparam("b_attempt"),
            execution_info=bindparam("b_info", type_=tasks.c.execution_info.type),
            node_info=bindparam("b_node_info", type_=tasks.c.node_info.type), etag=bindparam("b_etag"),
            last_modified=bindparam("b_now", type_=tasks.c.last_modified.type), retention_deadline=None,
            outcome=None)
)


_COUNT_RUN = (
    update(nodes)
    .where(nodes.c.id == bindparam("b_node"))
    .values(total_tasks_run=nodes.c.total_tasks_run + bindparam("b_count"))
)
# The pool's schedulable nodes with a free slot, in the order that breaks placement ties: a walk
# of the partial index ix_nodes_free (used_slots is kept by triggers, migration 0008), so a pass
# that follows one agent's report on a full 10,000-node pool reads the one node it freed.
_FREE_NODES = (
    select(nodes.c.id, nodes.c.slots, nodes.c.used_slots.label("used"), nodes.c.is_dedicated)
    .where(nodes.c.pool_seq == bindparam("b_pool"), nodes.c.used_slots < nodes.c.slots,
           nodes.c.state.in_(SCHEDULABLE_NODE_STATES), nodes.c.scheduling_state == "enabled",
           nodes.c.pending_action.is_(None))
    .order_by(nodes.c.allocation_time, nodes.c.id)
)
# The per-size ready queues (index ix_tasks_ready: job, state, unsatisfied, required_slots, seq):
# the smallest size a job has waiting within a range, and a job's oldest ready tasks of one size.
# Both are index seeks; see scheduler/backlog.py for why these two are all a pass needs to read.
# A task blocked by its dependencies (unsatisfied > 0) is active but outside every seek.
_NEXT_SIZE = (
    select(tasks.c.required_slots)
    .where(tasks.c.job_seq == bindparam("b_job"), tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances == 0, tasks.c.required_slots >= bindparam("b_low"),
           tasks.c.required_slots <= bindparam("b_high"))
    .order_by(tasks.c.required_slots)
    .limit(1)
)
# The pool's active jobs, each with its smallest waiting size that some node could take (an index
# seek per job inside one statement): jobs whose tasks cannot fit cost no round trip and drop out.
_SMALLEST_FITTING = (
    select(tasks.c.required_slots)
    .where(tasks.c.job_seq == jobs.c.seq, tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances == 0, tasks.c.required_slots >= 1, tasks.c.required_slots <= bindparam("b_largest"))
    .order_by(tasks.c.required_slots)
    .limit(1)
    .scalar_subquery()
)
# The smallest instance count of a job's ready multi-instance tasks (the gang queues of
# ix_tasks_ready, instances >= 1): a seek. `b_gangs` is 0 on a pool whose nodes have more than one
# slot, where a multi-instance task never runs (semantics §3.5), so its gangs are never read.
_SMALLEST_GANG = (
    select(tasks.c.instances)
    .where(tasks.c.job_seq == jobs.c.seq, tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances >= 1, tasks.c.instances <= bindparam("b_gangs"))
    .order_by(tasks.c.instances)
    .limit(1)
    .scalar_subquery()
)
_NEXT_GANG = (
    select(tasks.c.instances)
    .where(tasks.c.job_seq == bindparam("b_job"), tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances >= bindparam("b_low"), tasks.c.instances <= bindparam("b_high"))
    .order_by(tasks.c.instances)
    .limit(1)
)
_READY_GANG = (
    select(tasks.c.seq, tasks.c.job_seq, tasks.c.required_slots, tasks.c.instances)
    .where(tasks.c.job_seq == bindparam("b_job"), tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances == bindparam("b_instances"))
    .order_by(tasks.c.required_slots, tasks.c.seq)
    .limit(bindparam("b_limit"))
)
# The most instances a gang may ask for (numberOfInstances is bounded at add by Azure's limit).
_ANY_GANG = 2**31 - 1
_ACTIVE_JOBS = (
    select(jobs.c.seq, jobs.c.max_parallel_tasks, jobs.c.priority, _SMALLEST_FITTING.label("smallest"),
           _SMALLEST_GANG.label("smallest_gang"),
           jobs.c.manager_seq, jobs.c.manager_exclusive, jobs.c.manager_dedicated_only, jobs.c.prep_wait)
    .where(jobs.c.account == bindparam("b_account"), jobs.c.pool_key == bindparam("b_pool"),
           jobs.c.state == JobState.ACTIVE)
)
# The nodes running an exclusive job manager (runExclusive): they take no other task. A
# primary-key seek per job of the pool that has one and is not completed (a disabling job's
# manager may still run), from ix_jobs_pool_state.
_EXCLUSIVE_NODES = (
    select(tasks.c.node_id)
    .join(jobs, jobs.c.manager_seq == tasks.c.seq)
    .where(jobs.c.account == bindparam("b_account"), jobs.c.pool_key == bindparam("b_pool"),
           jobs.c.state.in_((JobState.ACTIVE, JobState.DISABLING, JobState.DISABLED, JobState.TERMINATING)),
           jobs.c.manager_exclusive.is_(True), tasks.c.state == TaskState.RUNNING)
)
_READY_OF_SIZE = (
    select(tasks.c.seq, tasks.c.job_seq, tasks.c.required_slots)
    .where(tasks.c.job_seq == bindparam("b_job"), tasks.c.state == TaskState.ACTIVE, tasks.c.unsatisfied == 0,
           tasks.c.instances == 0, tasks.c.required_slots == bindparam("b_slots"))
    .order_by(tasks.c.seq)
    .limit(bindparam("b_limit"))
)


@dataclass(frozen=True)
class _Placed:
    nodes: frozenset[str]
    count: int


_NOTHING = _Placed(frozenset(), 0)


def schedule(ctx: Context) -> set[str]:
    """One pass over every pool; returns the ids of nodes that got work. Each pool's placements
    are committed PLACEMENTS_PER_TRANSACTION at a time, so filling a large pool is a series of
    short transactions rather than one that holds the store's write lock for seconds."""
    woken: set[str] = set()
    with ctx.engine.connect() as conn:
        pool_seqs = conn.execute(select(pools.c.seq).where(
            pools.c.account == ctx.account, pools.c.state == PoolState.ACTIVE)).scalars().all()
    for pool_seq in pool_seqs:
        while True:
            with ctx.engine.begin() as conn:
                pool = _active_pool(conn, pool_seq)
                placed = _NOTHING if pool is None else _schedule_pool(ctx, conn, pool, PLACEMENTS_PER_TRANSACTION)
            woken |= placed.nodes
            if placed.count < PLACEMENTS_PER_TRANSACTION:
                break
    return woken


def schedule_pool(ctx: Context, conn: Connection, pool_seq: int) -> set[str]:
    """A pass over one pool inside the caller's transaction: an agent's report that freed
    slots gets its next tasks in the same answer, saving a round trip per task."""
    pool = _active_pool(conn, pool_seq)
    return set() if pool is None else set(_schedule_pool(ctx, conn, pool).nodes)


def _active_pool(conn: Connection, pool_seq: int) -> Any:
    return conn.execute(select(pools.c.seq, pools.c.key, pools.c.id, pools.c.fill_type, pools.c.slots_per_node)
                        .where(pools.c.seq == pool_seq, pools.c.state == PoolState.ACTIVE)).first()


def _snapshot(conn: Connection, ctx: Context, pool: Any, budget: int | None) -> PoolSnapshot | None:
    # Jobs first, bounded by a whole node's slots: a pass with nothing that could run (a pool
    # filling up as thousands of nodes say hello, each waking the scheduler) reads no node.
    job_rows = [j for j in conn.execute(_ACTIVE_JOBS, {
        "b_account": ctx.account, "b_pool": pool.key, "b_largest": pool.slots_per_node,
        "b_gangs": _ANY_GANG if pool.slots_per_node == 1 else 0}).all()
        if j.smallest is not None or j.smallest_gang is not None]
    if not job_rows:
        return None
    node_rows = conn.execute(_FREE_NODES, {"b_pool": pool.seq}).all()
    if not node_rows:
        return None
    exclusive = set(conn.execute(_EXCLUSIVE_NODES, {"b_account": ctx.account, "b_pool": pool.key}).scalars())
    node_views = tuple(NodeView(n.id, n.slots, int(n.used), bool(n.is_dedicated), n.id in exclusive)
                       for n in node_rows)
    largest_free = max(n.free_slots for n in node_views)
    with_room = sum(1 for n in node_views if n.free_slots > 0)
    job_rows = [j for j in job_rows if (j.smallest is not None and j.smallest <= largest_free)
                or (j.smallest_gang is not None and j.smallest_gang <= with_room)]
    if not job_rows:
        return None
    limited = [j.seq for j in job_rows if j.max_parallel_tasks > 0]
    running_per_job: dict[int, int] = {}
    for chunk in in_chunks(limited):
        # The counters kept with every state change (job_task_counts), not a count of the rows.
        running_per_job.update(conn.execute(select(job_task_counts.c.job_seq, job_task_counts.c.running)
                                            .where(job_task_counts.c.job_seq.in_(chunk))).all())
    # Jobs barred from nodes where their preparation task failed (waitForSuccess).
    barred = job_prep_nodes.barred_nodes(conn, [j.seq for j in job_rows if j.prep_wait])
    job_views = tuple(JobView(j.seq, None if j.max_parallel_tasks <= 0 else
                              j.max_parallel_tasks - int(running_per_job.get(j.seq, 0)),
                              barred.get(j.seq, frozenset())) for j in job_rows)
    ordered = sorted(job_rows, key=lambda j: (-j.priority, j.seq))
    by_seq = {view.job_seq: view for view in job_views}
    # A job with only gangs waiting has no ordinary size: one above every node reads none.
    smallest_of = {j.seq: j.smallest if j.smallest is not None else largest_free + 1 for j in job_rows}
    smallest_gang_of = {j.seq: j.smallest_gang for j in job_rows}
    # The job managers' placement rules, carried on their task views.
    managers = {(j.seq, j.manager_seq): (bool(j.manager_exclusive), bool(j.manager_dedicated_only))
                for j in job_rows if j.manager_seq is not None}

    def sizes_of(job_seq: int, low: int, high: int) -> Iterator[int]:
        known = smallest_of[job_seq]
        if low <= known:
            # The smallest size in [1, largest free] is the first one in [low, high] too.
            if known > high:
                return
            yield known
            low = known + 1
        while low <= high:
            size = conn.execute(_NEXT_SIZE, {"b_job": job_seq, "b_low": low, "b_high": high}).scalar()
            if size is None:
                return
            yield size
            low = size + 1

    def ready_of(job_seq: int, size: int, limit: int) -> list[TaskView]:
        rows = conn.execute(_READY_OF_SIZE, {"b_job": job_seq, "b_slots": size, "b_limit": limit}).all()
        return [TaskView(t.seq, t.job_seq, t.required_slots, *managers.get((t.job_seq, t.seq), (False, False))) for t in rows]

    def gang_sizes_of(job_seq: int, most: int) -> Iterator[int]:
        low = smallest_gang_of[job_seq]
        while low is not None and low <= most:
            yield low
            low = conn.execute(_NEXT_GANG, {"b_job": job_seq, "b_low": low + 1, "b_high": most}).scalar()

    def gang_ready_of(job_seq: int, instances: int, limit: int) -> list[TaskView]:
        rows = conn.execute(_READY_GANG, {"b_job": job_seq, "b_instances": instances, "b_limit": limit}).all()
        return [TaskView(t.seq, t.job_seq, t.required_slots, instances=t.instances) for t in rows]

    task_views = gather(node_views, [by_seq[j.seq] for j in ordered], sizes_of, ready_of, budget,
                        gang_sizes_of, gang_ready_of)
    if not task_views:
        return None
    return PoolSnapshot(pool.fill_type, node_views, task_views, job_views)


def _schedule_pool(ctx: Context, conn: Connection, pool: Any, budget: int | None = None) -> _Placed:
    snapshot = _snapshot(conn, ctx, pool, budget)
    if snapshot is None:
        return _NOTHING
    placements = plan(snapshot)[:budget]
    if not placements:
        return _NOTHING
    now = clock.now()
    now_iso = clock.iso(now)
    rows: dict[int, Any] = {}
    for chunk in in_chunks([p.task_seq for p in placements]):
        rows.update((r.seq, r) for r in conn.execute(
            select(tasks.c.seq, tasks.c.id, tasks.c.state, tasks.c.state_transition_time, tasks.c.execution_info,
                   tasks.c.attempt, tasks.c.job_seq, jobs.c.id.label("job_id"), jobs.c.prep_wait)
            .join(jobs, jobs.c.seq == tasks.c.job_seq)
            .where(tasks.c.seq.in_(chunk))))
    per_node: dict[str, int] = {}
    starts = []
    preparing: list[tuple[int, str]] = []
    gangs: list[tuple[Any, int, str, str]] = []
    for placement in placements:
        row = rows[placement.task_seq]
        info = dict(row.execution_info)
        info["startTime"] = now_iso
        for name in ("endTime", "exitCode", "result", "failureInfo"):
            info.pop(name, None)
        root = task_folder(row.job_id, row.id)
        node_url = f"{ctx.base_url}/pools/{pool.id}/nodes/{placement.node_id}"
        starts.append({
            "b_seq": placement.task_seq, "b_previous_time": row.state_transition_time, "b_now": now,
            "b_node": placement.node_id, "b_attempt": row.attempt + 1, "b_info": info, "b_etag": clock.new_etag(),
            "b_node_info": {"affinityId": f"TVM:{placement.node_id}", "nodeUrl": node_url, "poolId": pool.id,
                            "nodeId": placement.node_id, "taskRootDirectory": root,
                            "taskRootDirectoryUrl": f"{node_url}/files/{root}"},
        })
        per_node[placement.node_id] = per_node.get(placement.node_id, 0) + 1
        if row.prep_wait is not None:
            preparing.append((row.job_seq, placement.node_id))
        if placement.subtask_nodes:
            gangs.append((placement, row.attempt + 1, pool.id, root))
            for node_id in placement.subtask_nodes:
                per_node[node_id] = per_node.get(node_id, 0) + 1
    conn.execute(_START, starts)
    subtasks.place(conn, ctx.base_url, gangs, now)
    job_prep_nodes.order_preparations(conn, pool.id, preparing)
    conn.execute(_COUNT_RUN, [{"b_node": node_id, "b_count": count} for node_id, count in per_node.items()])
    for node_chunk in in_chunks(list(per_node)):
        conn.execute(update(nodes).where(nodes.c.id.in_(node_chunk), nodes.c.state == NodeState.IDLE).values(
            state=NodeState.RUNNING, state_transition_time=now))
    telemetry.PLACEMENTS.inc(len(placements))
    return _Placed(frozenset(per_node), len(placements))
