"""Why a task has not started (beyond Azure): `shoal task why JOB TASK` and
`GET /shoal/v1/jobs/{job}/tasks/{task}/why`.

Read from the state the scheduler reads (semantics §3): the task, its job, the job's pool, the
pool's node counters and its free nodes. Every question is an index seek or a counter read; the
one count that could grow with the job (ready tasks queued ahead) stops at QUEUE_COUNT_LIMIT.
Each reason has a code and plain words; the first one is what to fix first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, func, select

from shoal.model.states import JobState, NodeState, PoolState, SchedulingState, TaskState
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.schema import nodes, pool_node_counts, pools, task_dependencies, tasks

QUEUE_COUNT_LIMIT = 10_000
PREREQUISITES_SHOWN = 10


def explain(ctx: Context, job_id: str, task_id: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        job, task = task_service.load(conn, ctx, job_id, task_id)
        reasons = _reasons(conn, job, task)
    return {"jobId": job.id, "taskId": task.id, "state": task.state, "reasons": reasons}


def _reason(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **({"details": details} if details else {})}


def _reasons(conn: Connection, job: Any, task: Any) -> list[dict[str, Any]]:
    if task.state == TaskState.RUNNING:
        node = (task.node_info or {}).get("nodeId")
        return [_reason("Running", f"The task is running on node {node}.", nodeId=node)]
    if task.state == TaskState.COMPLETED:
        result = (task.execution_info or {}).get("result")
        return [_reason("Completed", f"The task has completed ({result}); reactivate it to run it again.")]
    if task.state != TaskState.ACTIVE:
        return [_reason("NotActive", f"The task is {task.state}.")]
    reasons: list[dict[str, Any]] = []
    reasons += _job_reasons(job)
    if task.unsatisfied:
        reasons.append(_dependency_reason(conn, task))
    pool = conn.execute(select(pools).where(pools.c.account == job.account, pools.c.key == job.pool_key)).first()
    if pool is None:
        reasons.append(_reason("PoolNotFound", f"The job's pool {job.pool_key!r} does not exist (yet): tasks wait "
                                               "until a pool of that id is added.", poolId=job.pool_key))
        return reasons
    reasons += _pool_reasons(conn, pool, task)
    if job.max_parallel_tasks > 0:
        running = conn.execute(select(func.count()).select_from(tasks).where(
            tasks.c.job_seq == job.seq, tasks.c.state == TaskState.RUNNING)).scalar_one()
        if running >= job.max_parallel_tasks:
            reasons.append(_reason("JobMaxParallelTasksReached",
                                   f"The job already runs {running} tasks, its maxParallelTasks.",
                                   maxParallelTasks=job.max_parallel_tasks))
    if not reasons:
        reasons.append(_queue_reason(conn, job, task))
    return reasons


def _job_reasons(job: Any) -> list[dict[str, Any]]:
    if job.state in (JobState.DISABLED, JobState.DISABLING):
        return [_reason("JobDisabled", "The job is disabled: enable it and its tasks are scheduled again.")]
    if job.state in (JobState.TERMINATING, JobState.COMPLETED, JobState.DELETING):
        return [_reason("JobEnded", f"The job is {job.state}: its active tasks will never run.")]
    return []


def _dependency_reason(conn: Connection, task: Any) -> dict[str, Any]:
    open_edges = conn.execute(
        select(task_dependencies.c.prerequisite_key, task_dependencies.c.prerequisite_number)
        .where(task_dependencies.c.task_seq == task.seq, task_dependencies.c.satisfied.is_(False))
        .limit(PREREQUISITES_SHOWN)).all()
    names = [edge.prerequisite_key if edge.prerequisite_key is not None else str(edge.prerequisite_number)
             for edge in open_edges]
    more = " and more" if task.unsatisfied > len(names) else ""
    return _reason("WaitingForDependencies",
                   f"The task waits for {task.unsatisfied} prerequisite task(s) to succeed (or to complete as "
                   f"their exit conditions satisfy): {', '.join(names)}{more}.", waitingFor=names)


def _pool_reasons(conn: Connection, pool: Any, task: Any) -> list[dict[str, Any]]:
    if pool.state == PoolState.DELETING:
        return [_reason("PoolDeleting", f"The pool {pool.id} is being deleted.")]
    if task.instances and pool.slots_per_node != 1:
        return [_reason("MultiInstanceNeedsOneSlotNodes",
                        f"A multi-instance task runs only on a pool of one task slot a node; {pool.id} has "
                        f"{pool.slots_per_node}: it can never run on this pool.")]
    if task.required_slots > pool.slots_per_node:
        return [_reason("TaskLargerThanNode",
                        f"The task needs {task.required_slots} slots and the pool's nodes have "
                        f"{pool.slots_per_node}: it can never run on this pool.")]
    counts = {row.state: row.total for row in conn.execute(
        select(pool_node_counts.c.state, func.sum(pool_node_counts.c.count).label("total"))
        .where(pool_node_counts.c.pool_seq == pool.seq).group_by(pool_node_counts.c.state)).all()}
    usable = counts.get(NodeState.IDLE, 0) + counts.get(NodeState.RUNNING, 0)
    if usable:
        return _slot_reasons(conn, pool, task)
    total = sum(counts.values())
    target = pool.target_dedicated + pool.target_low_priority
    if total == 0:
        if target == 0:
            return [_reason("PoolHasNoNodes", f"The pool {pool.id} has no nodes and a target of 0: resize it, or "
                                              "enable autoscale.")]
        return [_reason("PoolResizing", f"The pool {pool.id} has no nodes yet; it is growing towards {target}.")]
    failed = counts.get(NodeState.START_TASK_FAILED, 0)
    if failed == total:
        return [_reason("StartTaskFailedOnEveryNode",
                        f"The start task failed on every node of {pool.id} ({failed}): see each node's "
                        "startTaskInfo and its startup/stderr.txt.")]
    waiting = {state: n for state, n in counts.items() if n}
    return [_reason("NoNodeReady", f"No node of {pool.id} can take tasks now: "
                                   + ", ".join(f"{n} {state}" for state, n in sorted(waiting.items())) + ".",
                    nodes=waiting)]


def _slot_reasons(conn: Connection, pool: Any, task: Any) -> list[dict[str, Any]]:
    schedulable = and_(nodes.c.pool_seq == pool.seq, nodes.c.used_slots < nodes.c.slots,
                       nodes.c.state.in_((NodeState.IDLE, NodeState.RUNNING)),
                       nodes.c.scheduling_state == SchedulingState.ENABLED, nodes.c.pending_action.is_(None))
    if task.instances > 1:
        # A gang needs that many nodes with room at once (bounded: the count stops at the need).
        free = conn.execute(select(func.count()).select_from(select(nodes.c.id).where(
            schedulable, nodes.c.slots - nodes.c.used_slots >= task.required_slots).limit(task.instances)
            .subquery())).scalar_one()
        if free < task.instances:
            return [_reason("NotEnoughFreeNodes", f"The multi-instance task needs {task.instances} nodes of {pool.id} "
                                                  f"with room at once and {free} have it: it takes none until all do.",
                            freeNodes=free)]
        return []
    fits = conn.execute(select(nodes.c.id).where(
        schedulable, nodes.c.slots - nodes.c.used_slots >= task.required_slots).limit(1)).first()
    if fits is None:
        return [_reason("NoFreeSlot", f"Every node of {pool.id} is full for a task of {task.required_slots} "
                                      "slot(s): it starts when running tasks end (or the pool grows).")]
    return []


def _queue_reason(conn: Connection, job: Any, task: Any) -> dict[str, Any]:
    ahead = conn.execute(select(func.count()).select_from(
        select(tasks.c.seq).where(tasks.c.job_seq == job.seq, tasks.c.state == TaskState.ACTIVE,
                                  tasks.c.unsatisfied == 0, tasks.c.seq < task.seq)
        .limit(QUEUE_COUNT_LIMIT).subquery())).scalar_one()
    queued = f"more than {QUEUE_COUNT_LIMIT:,}" if ahead >= QUEUE_COUNT_LIMIT else str(ahead)
    return _reason("Queued", f"Nothing holds the task back: a node has room, and {queued} older ready task(s) "
                             "of its job go first. It starts within a scheduling pass or as slots free up.",
                   readyTasksAhead=ahead)
