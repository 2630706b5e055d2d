"""Task state changes shared by every path that ends or returns a running task.

A task's current attempt is `(node_id, attempt)` while it runs. Moving the task out of
`running` is all it takes to stop it: the node's agent lists the attempts it holds on its next
sync, learns this one is stale and kills it (see docs/agent-protocol.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from shoal import clock
from shoal.model.states import NodeState, SchedulingState, TaskState
from shoal.service import dependencies, exit_conditions, ledger, lifetime, subtasks
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, nodes, task_attempts, tasks

FAILURE_EXIT_CODE = {"category": "usererror", "code": "FailureExitCode",
                     "message": "The task exited with an exit code representing a failure"}
DEFAULT_RETENTION = timedelta(days=7)
TERMINATED = {"category": "usererror", "code": "TaskEnded", "message": "The task was terminated."}


# Azure's recentTasks: the tasks whose state changed on a node lately; Shoal shows ten.
RECENT_TASKS = 10

# One prepared statement for every task move: built once, executed with many rows at a time.
# (Building SQLAlchemy statements per row cost more than the database work itself.)
_MOVE = (
    update(tasks)
    .where(tasks.c.seq == bindparam("b_seq"))
    .values(state=bindparam("b_state"), previous_state=bindparam("b_previous_state"),
            previous_state_transition_time=bindparam("b_previous_time", type_=tasks.c.state_transition_time.type),
            state_transition_time=bindparam("b_now", type_=tasks.c.state_transition_time.type),
            node_id=None, execution_info=bindparam("b_info", type_=tasks.c.execution_info.type),
            etag=bindparam("b_etag"), last_modified=bindparam("b_now", type_=tasks.c.last_modified.type),
            retention_deadline=bindparam("b_retention", type_=tasks.c.retention_deadline.type),
            outcome=bindparam("b_outcome"), satisfies_dependents=bindparam("b_satisfies"))
)
_COUNT_SUCCESS = (
    update(nodes)
    .where(nodes.c.id == bindparam("b_node"))
    .values(total_tasks_succeeded=nodes.c.total_tasks_succeeded + bindparam("b_count"))
)


def _move(row: Any, new_state: str, now: datetime, info: dict[str, Any],
          satisfies: bool | None = None) -> dict[str, Any]:
    retention_deadline = None
    if new_state == TaskState.COMPLETED and row.node_info:
        # The task's folder stays on its node for retentionTime, then goes (semantics §2.5).
        retention_deadline = now + retention(row.spec)
    return {"b_seq": row.seq, "b_ran_on": row.node_id if row.state == TaskState.RUNNING else None,
            "b_job_seq": row.job_seq, "b_slots": row.required_slots,
            "b_state": new_state, "b_previous_state": row.state,
            "b_previous_time": row.state_transition_time, "b_now": now, "b_info": info,
            "b_etag": clock.new_etag(), "b_retention": retention_deadline,
            "b_outcome": info.get("result") if new_state == TaskState.COMPLETED else None,
            "b_satisfies": satisfies if new_state == TaskState.COMPLETED else None,
            "b_created": getattr(row, "creation_time", None),
            "b_gang": bool(getattr(row, "instances", 0)) and row.state == TaskState.RUNNING}


def _apply(conn: Connection, moves: list[dict[str, Any]]) -> set[str]:
    """Carry out the moves; returns the nodes of multi-instance attempts that ended with them
    (their subtasks complete too), which the caller wakes like the tasks' own nodes."""
    if not moves:
        return set()
    # An attempt that leaves a node is kept: the node's recentTasks, the task's history.
    left = [m for m in moves if m["b_ran_on"]]
    names = _names(conn, [m["b_seq"] for m in left])
    ended = [{"node_id": m["b_ran_on"], "task_seq": m["b_seq"], "end_state": m["b_state"],
              "end_time": _attempt_end(m["b_info"], m["b_now"]), "job_id": names[m["b_seq"]][0],
              "task_id": names[m["b_seq"]][1], "execution_info": m["b_info"]} for m in left]
    conn.execute(_MOVE, [{k: value for k, value in m.items() if k not in _NOT_MOVED} for m in moves])
    if ended:
        conn.execute(insert(task_attempts), ended)
        _forget_old_orphans(conn, sorted({e["node_id"] for e in ended}))
        # The attempt ran from its placement (its change to running) to its end.
        ledger.record(conn, [ledger.EndedAttempt(m["b_ran_on"], m["b_job_seq"], m["b_slots"] or 1,
                                                 clock.as_utc(m["b_previous_time"]), e["end_time"])
                             for m, e in zip(left, ended, strict=True)])
    lifetime.count_moves(conn, moves, [(m, e["end_time"]) for m, e in zip(left, ended, strict=True)],
                         moves[0]["b_now"])
    gangs = {m["b_seq"]: m["b_info"] for m in moves if m["b_gang"]}
    if not gangs:
        return set()
    touched = subtasks.end_attempts(conn, gangs, moves[0]["b_now"], gangs)
    refresh_node_busy(conn, touched)
    return touched


def _names(conn: Connection, task_seqs: list[int]) -> dict[int, tuple[str, str]]:
    """(job id, task id) of each task, kept with its attempts should the task be deleted."""
    out: dict[int, tuple[str, str]] = {}
    for chunk in in_chunks(sorted(set(task_seqs)), 500):
        for row in conn.execute(select(tasks.c.seq, tasks.c.id, jobs.c.id.label("job_id"))
                                .join(jobs, jobs.c.seq == tasks.c.job_seq).where(tasks.c.seq.in_(chunk))):
            out[row.seq] = (row.job_id, row.id)
    return out


def _forget_old_orphans(conn: Connection, node_ids: list[str]) -> None:
    """Attempts of deleted tasks beyond a node's newest RECENT_TASKS can no longer be shown: one
    bounded walk of ix_task_attempts_node per node that just ended an attempt."""
    for node_id in node_ids:
        newest = (select(task_attempts.c.seq).where(task_attempts.c.node_id == node_id)
                  .order_by(task_attempts.c.end_time.desc(), task_attempts.c.seq.desc())
                  .limit(RECENT_TASKS).scalar_subquery())
        conn.execute(delete(task_attempts).where(task_attempts.c.node_id == node_id,
                                                 task_attempts.c.task_seq.is_(None),
                                                 task_attempts.c.seq.not_in(newest)))


def forget_attempts(conn: Connection, node_ids: list[str]) -> None:
    """A node that is gone shows no recent tasks: its attempts go with it (those of a task still
    there, whose deletion would otherwise only unlink them, too)."""
    for chunk in in_chunks(node_ids, 500):
        conn.execute(delete(task_attempts).where(task_attempts.c.node_id.in_(chunk)))


# What a move carries for the attempts record and the ledger, not for the task's row.
_NOT_MOVED = ("b_ran_on", "b_job_seq", "b_slots", "b_created", "b_gang")


def _attempt_end(info: dict[str, Any], now: datetime) -> datetime:
    """When an attempt ended on its node: its report's time (one sync may report several, in
    any order), else now (a requeue, whose info may still hold an earlier attempt's end)."""
    end, start = clock.parse_iso(info.get("endTime")), clock.parse_iso(info.get("startTime"))
    return end if end is not None and (start is None or end >= start) else now


def retention(spec: dict[str, Any]) -> timedelta:
    text = (spec.get("constraints") or {}).get("retentionTime")
    return clock.parse_duration(text) if text else DEFAULT_RETENTION


def requeue(conn: Connection, rows: Iterable[Any], *, user_requested: bool) -> set[str]:
    """Put running tasks back to active. Recovery requeues (node lost, preempted) change neither
    retryCount nor requeueCount; user-requested ones (resize, disable, reboot) count a requeue."""
    now = clock.now()
    touched: set[str] = set()
    moves = []
    for row in rows:
        info = dict(row.execution_info)
        if user_requested:
            info["requeueCount"] = info.get("requeueCount", 0) + 1
            info["lastRequeueTime"] = clock.iso(now)
        moves.append(_move(row, TaskState.ACTIVE, now, info))
        if row.node_id:
            touched.add(row.node_id)
    touched |= _apply(conn, moves)
    return touched


def complete_reports(conn: Connection, reported: list[tuple[Any, dict[str, Any]]],
                     woken: set[str] | None = None) -> dict[int, str]:
    """End current attempts with what their agents reported: success, a retry, or a failure.
    Completed tasks release the tasks depending on them as their exit options say; returns the
    job actions their failures ask for ({job seq: disable | terminate}), which the caller
    carries out where the job's onTaskFailure is performexitoptionsjobaction."""
    now = clock.now()
    moves = []
    succeeded: dict[str, int] = {}
    completions: list[dependencies.Completion] = []
    job_actions: dict[int, str] = {}
    for row, report in reported:
        new_state, info = _outcome(conn, row, report, now)
        satisfies = None
        if new_state == TaskState.COMPLETED:
            options = exit_conditions.resolve(
                row.spec.get("exitConditions"), info.get("exitCode"),
                exit_conditions.kind_of(report.get("exitCode"), report.get("failure")))
            satisfies = options.dependency_action == "satisfy"
            completions.append(dependencies.Completion(row.job_seq, row.key, row.id_number, satisfies))
            if info.get("result") == "failure" and options.job_action != "none":
                # Terminating outranks disabling when two failures of one job ask for both.
                if job_actions.get(row.job_seq) != "terminate":
                    job_actions[row.job_seq] = options.job_action
        moves.append(_move(row, new_state, now, info, satisfies))
        if row.node_id and info.get("result") == "success":
            succeeded[row.node_id] = succeeded.get(row.node_id, 0) + 1
    gang_nodes = _apply(conn, moves)
    if woken is not None:
        woken |= gang_nodes
    dependencies.release(conn, completions)
    if succeeded:
        conn.execute(_COUNT_SUCCESS, [{"b_node": node, "b_count": count} for node, count in succeeded.items()])
    return job_actions


def _outcome(conn: Connection, row: Any, report: dict[str, Any], now: datetime) -> tuple[str, dict[str, Any]]:
    info = dict(row.execution_info)
    exit_code, failure = report.get("exitCode"), report.get("failure")
    if report.get("startTime"):
        info["startTime"] = report["startTime"]
    info["endTime"] = report.get("endTime") or clock.iso(now)
    if exit_code is not None:
        info["exitCode"] = exit_code
    else:
        info.pop("exitCode", None)
    if failure is None and exit_code == 0:
        info["result"] = "success"
        info.pop("failureInfo", None)
        return TaskState.COMPLETED, info
    if failure is None:
        max_retries = effective_max_retries(conn, row)
        if max_retries == -1 or info.get("retryCount", 0) < max_retries:
            info["retryCount"] = info.get("retryCount", 0) + 1
            info["lastRetryTime"] = clock.iso(now)
            return TaskState.ACTIVE, info
        info["result"] = "failure"
        info["failureInfo"] = dict(FAILURE_EXIT_CODE)
        return TaskState.COMPLETED, info
    # Pre-processing errors and timeouts are final: Batch does not retry them.
    info["result"] = "failure"
    info["failureInfo"] = failure
    return TaskState.COMPLETED, info


def terminate(conn: Connection, rows: Iterable[Any], failure: dict[str, Any] | None = None) -> set[str]:
    """End tasks (active or running) as completed with failureInfo, never to run again. A
    terminated task satisfies its dependents only if its `default` exit options say so (it has
    no exit code); no job action follows a termination."""
    now = clock.now()
    touched: set[str] = set()
    moves = []
    completions: list[dependencies.Completion] = []
    for row in rows:
        info = dict(row.execution_info)
        info["endTime"] = clock.iso(now)
        if row.state == TaskState.RUNNING:
            info["result"] = "failure"
            info["failureInfo"] = dict(failure or TERMINATED)
        satisfies = exit_conditions.resolve(row.spec.get("exitConditions"), None).dependency_action == "satisfy"
        completions.append(dependencies.Completion(row.job_seq, row.key, row.id_number, satisfies))
        moves.append(_move(row, TaskState.COMPLETED, now, info, satisfies))
        if row.node_id:
            touched.add(row.node_id)
    touched |= _apply(conn, moves)
    dependencies.release(conn, completions)
    return touched


def stop_running(conn: Connection, rows: Iterable[Any], option: str) -> set[str]:
    """Apply a deallocation/disable option to running tasks: `requeue` puts them back (counting
    a requeue), `terminate` ends them; anything else (taskcompletion, retaineddata, wait) lets
    them run. Returns the nodes whose tasks moved."""
    if option == "requeue":
        return requeue(conn, rows, user_requested=True)
    if option == "terminate":
        return terminate(conn, rows)
    return set()


def effective_max_retries(conn: Connection, row: Any) -> int:
    own = (row.spec.get("constraints") or {}).get("maxTaskRetryCount")
    if own is not None:
        return int(own)
    job_spec = conn.execute(select(jobs.c.spec).where(jobs.c.seq == row.job_seq)).scalar_one()
    return int((job_spec.get("constraints") or {}).get("maxTaskRetryCount") or 0)


def refresh_node_busy(conn: Connection, node_ids: Iterable[str]) -> None:
    """Keep `idle` ↔ `running` in step with the tasks a node runs. A node's `used_slots` is kept
    by triggers in the transaction of every task change (migration 0008), so this reads no task."""
    ids = sorted({n for n in node_ids if n})
    now = clock.now()
    for chunk in in_chunks(ids):
        conn.execute(update(nodes).where(nodes.c.id.in_(chunk), nodes.c.state == NodeState.IDLE,
                                         nodes.c.used_slots > 0).values(
            state=NodeState.RUNNING, state_transition_time=now))
        conn.execute(update(nodes).where(nodes.c.id.in_(chunk), nodes.c.state == NodeState.RUNNING,
                                         nodes.c.used_slots == 0).values(
            state=NodeState.IDLE, state_transition_time=now))
        # With scheduling disabled, a node with nothing left to run is offline.
        conn.execute(update(nodes).where(nodes.c.id.in_(chunk), nodes.c.state == NodeState.IDLE,
                                         nodes.c.used_slots == 0,
                                         nodes.c.scheduling_state == SchedulingState.DISABLED).values(
            state=NodeState.OFFLINE, state_transition_time=now))


def running_on(conn: Connection, node_ids: list[str]) -> list[Any]:
    """The running tasks these nodes hold: their own, and the multi-instance tasks one of whose
    subtasks runs there (a lost or stopped subtask node stops the whole task, as on Batch)."""
    if not node_ids:
        return []
    rows = list(conn.execute(select(tasks).where(tasks.c.node_id.in_(node_ids),
                                                 tasks.c.state == TaskState.RUNNING)).all())
    gangs = subtasks.tasks_with_instances_on(conn, node_ids) - {row.seq for row in rows}
    for chunk in in_chunks(sorted(gangs)):
        rows.extend(conn.execute(select(tasks).where(tasks.c.seq.in_(chunk), tasks.c.state == TaskState.RUNNING)))
    return rows


def running_slots(conn: Connection, node_ids: list[str]) -> dict[str, int]:
    if not node_ids:
        return {}
    rows = conn.execute(select(tasks.c.node_id, func.sum(tasks.c.required_slots), func.count())
                        .where(and_(tasks.c.node_id.in_(node_ids), tasks.c.state == TaskState.RUNNING))
                        .group_by(tasks.c.node_id)).all()
    return {node_id: int(slots) for node_id, slots, _count in rows}
