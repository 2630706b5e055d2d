"""Multi-instance tasks on the nodes: each attempt's instances (subtasks), their placement,
what an instance's node is told, and how an instance's end moves the task (semantics §3.5).

Instance 0 is the primary: it is the task row's node, so its slot is the task's own and its end
is the task's ordinary report. Instances 1..n-1 are the subtasks: each holds one slot on its node
while it runs (triggers of migration 0027). A subtask's process ends only when its coordination
command fails (on success it holds its node until the primary ends), so any subtask report ends
the attempt as a failure, retried as the task's constraints say; when the task leaves `running`
by any path, its running subtasks complete with it and their nodes are woken to kill them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from shoal import clock
from shoal.model.states import TaskState
from shoal.service import task_files
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, nodes, subtasks, tasks

# The port AZ_BATCH_MASTER_NODE names on the primary's node. Azure reserves one for Batch there;
# Shoal reserves none (nothing listens on it), so an MPI launcher should not rely on it.
MASTER_PORT = 6000
# Failure of a task whose subtask ended: its coordination command failed (or was killed).
SUBTASK_FAILED = {"category": "usererror", "code": "SubtaskFailed",
                  "message": "A subtask of the multi-instance task failed: its coordination command exited "
                             "with a non-zero code or could not run."}


def place(conn: Connection, base_url: str, gangs: list[tuple[Any, int, str, str]], now: datetime) -> None:
    """Record the instances of gangs just placed: (placement, attempt, pool id, task root)."""
    if not gangs:
        return
    for chunk in in_chunks([placement.task_seq for placement, *_rest in gangs]):
        conn.execute(delete(subtasks).where(subtasks.c.task_seq.in_(chunk)))
    rows = []
    for placement, attempt, pool_id, root in gangs:
        for instance, node_id in enumerate((placement.node_id, *placement.subtask_nodes)):
            node_url = f"{base_url}/pools/{pool_id}/nodes/{node_id}"
            rows.append({"task_seq": placement.task_seq, "instance": instance, "attempt": attempt,
                         "node_id": node_id, "state": TaskState.RUNNING, "state_transition_time": now,
                         "start_time": now, "node_info": {
                             "affinityId": f"TVM:{node_id}", "nodeUrl": node_url, "poolId": pool_id,
                             "nodeId": node_id, "taskRootDirectory": root,
                             "taskRootDirectoryUrl": f"{node_url}/files/{root}"}})
    conn.execute(insert(subtasks), rows)


_END_RUNNING = (
    update(subtasks)
    .where(subtasks.c.task_seq == bindparam("b_task"), subtasks.c.state == TaskState.RUNNING)
    .values(state=TaskState.COMPLETED, previous_state=TaskState.RUNNING,
            previous_state_transition_time=subtasks.c.state_transition_time,
            state_transition_time=bindparam("b_now", type_=subtasks.c.state_transition_time.type),
            end_time=bindparam("b_now", type_=subtasks.c.end_time.type))
)


def end_attempts(conn: Connection, task_seqs: Iterable[int], now: datetime,
                 primary: dict[int, dict[str, Any]] | None = None) -> set[str]:
    """The attempts of these multi-instance tasks left `running`: their running instances
    complete now (the primary with the task's `executionInfo`, when given). Returns the nodes
    of all their instances, which must learn it (and refresh their idle/running state)."""
    seqs = sorted(set(task_seqs))
    if not seqs:
        return set()
    for seq, info in (primary or {}).items():
        exit_code = info.get("exitCode")
        conn.execute(update(subtasks).where(subtasks.c.task_seq == seq, subtasks.c.instance == 0,
                                            subtasks.c.state == TaskState.RUNNING).values(
            exit_code=exit_code if isinstance(exit_code, int) else None, failure_info=info.get("failureInfo"),
            result=info.get("result") or ("success" if exit_code == 0 else "failure")))
    conn.execute(_END_RUNNING, [{"b_task": seq, "b_now": now} for seq in seqs])
    touched: set[str] = set()
    for chunk in in_chunks(seqs):
        touched.update(conn.execute(select(subtasks.c.node_id).where(subtasks.c.task_seq.in_(chunk))).scalars())
    return touched


def nodes_of(conn: Connection, task_seq: int) -> set[str]:
    """The nodes of the task's last attempt's instances (each holds a folder of the task)."""
    return set(conn.execute(select(subtasks.c.node_id).where(subtasks.c.task_seq == task_seq)).scalars())


# A node's running subtasks (instances above 0) with their task's keys: index ix_subtasks_node_state.
_RUNNING_ON = (
    select(subtasks.c.node_id, subtasks.c.task_seq, subtasks.c.instance, subtasks.c.attempt,
           tasks.c.key.label("task_key"), tasks.c.id.label("task_id"), jobs.c.key.label("job_key"),
           jobs.c.account)
    .join(tasks, tasks.c.seq == subtasks.c.task_seq)
    .join(jobs, jobs.c.seq == tasks.c.job_seq)
    .where(subtasks.c.node_id.in_(bindparam("b_nodes", expanding=True)), subtasks.c.state == TaskState.RUNNING,
           subtasks.c.instance > 0, tasks.c.state == TaskState.RUNNING)
)


def running_on(conn: Connection, node_ids: list[str]) -> dict[str, list[Any]]:
    """The subtasks these nodes run, by node."""
    out: dict[str, list[Any]] = {}
    for chunk in in_chunks(node_ids):
        for row in conn.execute(_RUNNING_ON, {"b_nodes": list(chunk)}):
            out.setdefault(row.node_id, []).append(row)
    return out


def tasks_with_instances_on(conn: Connection, node_ids: list[str]) -> set[int]:
    """The running tasks one of whose subtasks runs on these nodes."""
    return {row.task_seq for rows in running_on(conn, node_ids).values() for row in rows}


def instance_block(conn: Connection, task_seq: int, instance: int, spec: dict[str, Any]) -> dict[str, Any]:
    """What an instance's node needs beyond the task's assignment: which instance it is, the
    coordination command, the common resource files, and the hosts of all instances in order."""
    rows = conn.execute(select(subtasks.c.instance, nodes.c.ip_address)
                        .join(nodes, nodes.c.id == subtasks.c.node_id, isouter=True)
                        .where(subtasks.c.task_seq == task_seq).order_by(subtasks.c.instance)).all()
    hosts = [row.ip_address or "127.0.0.1" for row in rows]
    settings = spec.get("multiInstanceSettings") or {}
    return {"instance": instance, "numberOfInstances": len(hosts) or 1,
            "coordinationCommandLine": settings.get("coordinationCommandLine") or "",
            "hosts": hosts, "masterPort": MASTER_PORT,
            "commonResourceFiles": task_files.for_node(settings.get("commonResourceFiles"))}


def coordinated(conn: Connection, node_id: str, items: list[list[Any]], now: datetime) -> set[str]:
    """Instances on this node whose coordination command succeeded ([jobId, taskId, attempt]):
    their exit code is the coordination's, 0, while they go on running. Returns the primaries'
    nodes of the tasks every instance of which has now coordinated (to be woken: their primary
    may run the task's command line). Stale items change nothing."""
    woken: set[str] = set()
    for job_id, task_id, attempt in items:
        row = conn.execute(
            select(subtasks.c.task_seq, subtasks.c.instance, tasks.c.node_id)
            .join(tasks, tasks.c.seq == subtasks.c.task_seq).join(jobs, jobs.c.seq == tasks.c.job_seq)
            .where(subtasks.c.node_id == node_id, subtasks.c.state == TaskState.RUNNING,
                   subtasks.c.attempt == attempt, tasks.c.key == str(task_id).lower(),
                   jobs.c.key == str(job_id).lower(), tasks.c.state == TaskState.RUNNING)).first()
        if row is None:
            continue
        changed = conn.execute(update(subtasks).where(
            subtasks.c.task_seq == row.task_seq, subtasks.c.instance == row.instance,
            subtasks.c.exit_code.is_(None)).values(exit_code=0)).rowcount
        if changed and all_coordinated(conn, [row.task_seq]) and row.node_id:
            woken.add(row.node_id)
    return woken


def all_coordinated(conn: Connection, task_seqs: list[int]) -> list[int]:
    """Which of these running multi-instance tasks have every instance coordinated."""
    waiting: set[int] = set()
    for chunk in in_chunks(task_seqs):
        waiting.update(conn.execute(select(subtasks.c.task_seq).where(
            subtasks.c.task_seq.in_(chunk), subtasks.c.exit_code.is_(None))).scalars())
    return [seq for seq in task_seqs if seq not in waiting]


def subtask_report(conn: Connection, node_id: str, report: dict[str, Any], now: datetime) -> Any | None:
    """A report from a node for a subtask it runs: the subtask completes with it and the task's
    running row is returned, for the caller to end its attempt as a failure. None when the node
    runs no such subtask (a stale report: acknowledged and dropped, as any other)."""
    row = conn.execute(
        select(subtasks.c.task_seq, subtasks.c.instance)
        .join(tasks, tasks.c.seq == subtasks.c.task_seq).join(jobs, jobs.c.seq == tasks.c.job_seq)
        .where(subtasks.c.node_id == node_id, subtasks.c.state == TaskState.RUNNING, subtasks.c.instance > 0,
               subtasks.c.attempt == report["attempt"], tasks.c.key == report["taskId"].lower(),
               jobs.c.key == report["jobId"].lower(), tasks.c.state == TaskState.RUNNING)).first()
    if row is None:
        return None
    exit_code = report.get("exitCode")
    conn.execute(update(subtasks).where(subtasks.c.task_seq == row.task_seq, subtasks.c.instance == row.instance)
                 .values(state=TaskState.COMPLETED, previous_state=TaskState.RUNNING,
                         previous_state_transition_time=subtasks.c.state_transition_time,
                         state_transition_time=now, end_time=clock.parse_iso(report.get("endTime")) or now,
                         exit_code=exit_code if isinstance(exit_code, int) else None,
                         failure_info=report.get("failure") or dict(SUBTASK_FAILED), result="failure"))
    return row.task_seq


def list_of(conn: Connection, task_seq: int) -> list[dict[str, Any]]:
    """SubtaskInformation of the task's current (or last) attempt, by instance."""
    out = []
    for row in conn.execute(select(subtasks).where(subtasks.c.task_seq == task_seq).order_by(subtasks.c.instance)):
        item: dict[str, Any] = {"id": row.instance, "nodeInfo": row.node_info, "startTime": clock.iso(row.start_time),
                                "state": row.state, "stateTransitionTime": clock.iso(row.state_transition_time)}
        if row.previous_state:
            item["previousState"] = row.previous_state
            item["previousStateTransitionTime"] = clock.iso(row.previous_state_transition_time)
        if row.end_time is not None:
            item["endTime"] = clock.iso(row.end_time)
        if row.exit_code is not None:
            item["exitCode"] = row.exit_code
        if row.failure_info:
            item["failureInfo"] = row.failure_info
        if row.state == TaskState.COMPLETED:
            # A subtask still running when its primary ended had coordinated: it succeeded.
            failed = row.failure_info or row.exit_code not in (None, 0)
            item["result"] = row.result or ("failure" if failed else "success")
        out.append(item)
    return out
