"""The control plane's side of the agent protocol (docs/agent-protocol.md).

Every call authenticates the node by its token, counts as a heartbeat, and is answered from
the store: what the node should run is whatever the store says runs there and the agent does
not yet hold; what it should kill is whatever it holds that the store no longer runs there.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from shoal import clock
from shoal.errors import BatchError, Conflict, Unauthenticated
from shoal.service import jobs as job_service
from shoal.service import scheduling, transitions
from shoal.service.context import Context
from shoal.store.schema import jobs, nodes, pools, tasks

Attempt = tuple[str, str, int]


class NodeGone(BatchError):
    status = 410
    code = "NodeGone"


@dataclass
class SyncAnswer:
    ack: list[Attempt] = field(default_factory=list)
    run: list[dict[str, Any]] = field(default_factory=list)
    kill: list[list[Any]] = field(default_factory=list)
    run_start_task: bool = False
    leave: bool = False
    restart: str | None = None  # "reboot" | "reimage"

    def has_news(self) -> bool:
        return bool(self.ack or self.run or self.kill or self.run_start_task or self.leave or self.restart)

    def to_json(self) -> dict[str, Any]:
        return {"ack": [list(a) for a in self.ack], "run": self.run, "kill": self.kill,
                "deleteTaskDirs": [], "runStartTask": self.run_start_task, "leave": self.leave,
                "restart": self.restart}


def _node_by_token(conn: Connection, node_id: str, token: str) -> Any:
    row = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
    if row is None:
        raise NodeGone("The node is no longer part of a pool.")
    if row.token != token:
        raise Unauthenticated("The node token is not valid.")
    if row.state == "preempted":
        # The VM is gone with its data: the agent stops everything and deletes its root.
        raise NodeGone("The node was preempted.")
    return row


def register(ctx: Context, join_token: str, body: dict[str, Any]) -> dict[str, str]:
    """An agent started by hand (`shoal agent --join URL --pool P --join-token T`) takes one of
    the pool's node records that no provider has brought up yet."""
    pool_id = body.get("poolId")
    with ctx.engine.begin() as conn:
        pool = conn.execute(select(pools).where(pools.c.account == ctx.account,
                                                pools.c.key == str(pool_id or "").lower())).first()
        if pool is None or not hmac.compare_digest(pool.join_token, join_token):
            raise Unauthenticated("The pool join token is not valid for this pool.")
        if pool.state != "active":
            raise Conflict("The pool is being deleted.", code="PoolBeingDeleted")
        free = conn.execute(select(nodes).where(
            nodes.c.pool_seq == pool.seq, nodes.c.state == "creating", nodes.c.incarnation.is_(None),
            nodes.c.agent_pid.is_(None)).order_by(nodes.c.is_dedicated.desc(), nodes.c.allocation_time)
            .limit(1)).first()
        if free is None:
            raise Conflict("The pool has no node waiting for an agent: raise its target first.",
                           code="NoNodeToJoin")
        # Claimed: `starting` until its hello, so no second agent takes it.
        conn.execute(update(nodes).where(nodes.c.id == free.id).values(
            state="starting", state_transition_time=clock.now(), last_heartbeat=clock.now(),
            etag=clock.new_etag()))
    return {"nodeId": free.id, "token": free.token}


def goodbye(ctx: Context, node_id: str, token: str) -> None:
    """The agent of a leaving node has stopped and deleted its folders."""
    with ctx.engine.begin() as conn:
        row = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if row is None:
            return
        if row.token != token:
            raise Unauthenticated("The node token is not valid.")
        if row.state == "leavingpool":
            conn.execute(nodes.delete().where(nodes.c.id == node_id))
    ctx.signals.wake_provider()


def hello(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """A (re)started agent: it holds no tasks, so whatever ran on this node is requeued."""
    now = clock.now()
    with ctx.engine.begin() as conn:
        node = _node_by_token(conn, node_id, token)
        pool = conn.execute(select(pools).where(pools.c.seq == node.pool_seq)).one()
        start_task = pool.spec.get("startTask")
        if node.incarnation and node.incarnation != body.get("incarnation"):
            transitions.requeue(conn, transitions.running_on(conn, [node_id]), user_requested=False)
        leaving = node.state == "leavingpool"
        idle = "offline" if node.scheduling_state == "disabled" else "idle"
        new_state = node.state if leaving else ("starting" if start_task else idle)
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            state=new_state, state_transition_time=now, last_boot_time=now, last_heartbeat=now,
            incarnation=body.get("incarnation"), agent_pid=body.get("pid") or node.agent_pid,
            file_server_url=body.get("fileServerUrl"), ip_address=body.get("ipAddress") or "127.0.0.1",
            run_start_task=bool(start_task) and not leaving, start_task_info=None, pending_action=None,
            etag=clock.new_etag()))
    ctx.signals.wake_scheduler()
    return {"node": {
        "poolId": pool.id, "isDedicated": bool(node.is_dedicated), "accountName": ctx.account,
        "accountUrl": ctx.base_url, "taskSlotsPerNode": pool.slots_per_node, "startTask": start_task}}


def sync(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> SyncAnswer:
    answer = SyncAnswer()
    touched_jobs: set[int] = set()
    woken: set[str] = set()
    with ctx.engine.begin() as conn:
        node = _node_by_token(conn, node_id, token)
        now = clock.now()
        values: dict[str, Any] = {"last_heartbeat": now}
        if node.state == "unusable":
            values.update(state=_state_on_return(conn, node), state_transition_time=now)
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(**values))
        if isinstance(body.get("metrics"), dict):
            ctx.node_metrics[node_id] = body["metrics"]
        ready = False
        if body.get("startTask") is not None:
            answer.run_start_task = False
            ready = _record_start_task(conn, node, body["startTask"])
        elif node.run_start_task:
            answer.run_start_task = True
        reports = body.get("reports") or []
        if reports:
            answer.ack, touched_jobs = _apply_reports(conn, node_id, reports)
            if touched_jobs:
                job_service.finish_all_complete_jobs(ctx, conn, list(touched_jobs))
                transitions.refresh_node_busy(conn, [node_id])
        if touched_jobs or ready:
            # Slots were freed or a node became ready: schedule its pool now, so this answer
            # already carries the next tasks.
            woken = scheduling.schedule_pool(ctx, conn, node.pool_seq)
        _deliveries(conn, node, body, answer)
    # The pool of this node was scheduled inline above; other pools are not touched by this
    # sync, so the scheduler loop need not run for them.
    for other in woken - {node_id}:
        ctx.signals.wake_node(other)
    return answer


def deliveries(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> SyncAnswer:
    """The read-only second half of a sync, for the end of a long poll."""
    answer = SyncAnswer()
    with ctx.engine.connect() as conn:
        node = _node_by_token(conn, node_id, token)
        if node.run_start_task and body.get("startTask") is None:
            answer.run_start_task = True
        _deliveries(conn, node, body, answer)
    return answer


def _state_on_return(conn: Connection, node: Any) -> str:
    """A node that went silent and calls again resumes where its start task left it."""
    spec = conn.execute(select(pools.c.spec).where(pools.c.seq == node.pool_seq)).scalar_one()
    wait = (spec.get("startTask") or {}).get("waitForSuccess", True)
    info = node.start_task_info or {}
    if node.run_start_task:
        return "starting"
    if wait and info.get("state") == "running":
        return "waitingforstarttask"
    if wait and info.get("result") == "failure":
        return "starttaskfailed"
    busy = conn.execute(select(tasks.c.seq).where(tasks.c.node_id == node.id, tasks.c.state == "running")
                        .limit(1)).first()
    return "running" if busy else "idle"


def _record_start_task(conn: Connection, node: Any, report: dict[str, Any]) -> bool:
    """Record the start task's state; True when that made the node ready for tasks."""
    now = clock.now()
    info = {k: report[k] for k in ("state", "startTime", "endTime", "exitCode", "retryCount", "lastRetryTime")
            if report.get(k) is not None}
    info.setdefault("retryCount", 0)
    if report.get("failure"):
        info["failureInfo"] = report["failure"]
    values: dict[str, Any] = {"start_task_info": info}
    if report.get("state") == "completed":
        values["run_start_task"] = False
        info["result"] = "success" if report.get("exitCode") == 0 and not report.get("failure") else "failure"
    pool = conn.execute(select(pools.c.spec).where(pools.c.seq == node.pool_seq)).scalar_one()
    wait = (pool.get("startTask") or {}).get("waitForSuccess", True)
    if node.state in ("starting", "waitingforstarttask", "starttaskfailed"):
        ready = "offline" if node.scheduling_state == "disabled" else "idle"
        if report.get("state") == "running":
            new_state = "waitingforstarttask" if wait else ready
        elif info.get("result") == "success" or not wait:
            new_state = ready
        else:
            new_state = "starttaskfailed"
        if new_state != node.state:
            values.update(state=new_state, state_transition_time=now)
    conn.execute(update(nodes).where(nodes.c.id == node.id).values(etag=clock.new_etag(), **values))
    return values.get("state") == "idle"


def _apply_reports(conn: Connection, node_id: str, reports: list[dict[str, Any]]) -> tuple[list[Attempt], set[int]]:
    acked: list[Attempt] = []
    touched_jobs: set[int] = set()
    keys = {(r["jobId"].lower(), r["taskId"].lower()) for r in reports}
    job_keys = {k[0] for k in keys}
    rows = conn.execute(select(tasks, jobs.c.key.label("job_key")).join(jobs, jobs.c.seq == tasks.c.job_seq)
                        .where(jobs.c.key.in_(job_keys), tasks.c.node_id == node_id,
                               tasks.c.state == "running")).all()
    current = {(r.job_key, r.key): r for r in rows}
    reported = []
    for report in reports:
        attempt: Attempt = (report["jobId"], report["taskId"], int(report["attempt"]))
        acked.append(attempt)
        key = (report["jobId"].lower(), report["taskId"].lower())
        row = current.get(key)
        # A report for an attempt that is no longer the running one (requeued, terminated,
        # already reported) is acknowledged and dropped: nothing completes twice.
        if row is None or row.attempt != attempt[2]:
            continue
        del current[key]
        reported.append((row, report))
        touched_jobs.add(row.job_seq)
    transitions.complete_reports(conn, reported)
    return acked, touched_jobs


_RUNNING_KEYS = (
    select(tasks.c.seq, jobs.c.key, tasks.c.key, tasks.c.attempt)
    .join(jobs, jobs.c.seq == tasks.c.job_seq)
    .where(tasks.c.node_id == bindparam("b_node"), tasks.c.state == "running")
)


def _deliveries(conn: Connection, node: Any, body: dict[str, Any], answer: SyncAnswer) -> None:
    if node.state == "leavingpool":
        running = transitions.running_on(conn, [node.id])
        if not running:
            # The record goes when the agent says goodbye (or its provider sees it gone, or it
            # falls silent): a node has left only once it has stopped.
            answer.leave = True
            return
    known = {(k[0].lower(), k[1].lower(), int(k[2])): k for k in body.get("known") or []}
    acked = {(a[0].lower(), a[1].lower(), a[2]) for a in answer.ack}
    if node.state in ("rebooting", "reimaging") and body.get("incarnation") == node.incarnation:
        # This incarnation must go; the next hello comes from a fresh one.
        answer.restart = "reboot" if node.state == "rebooting" else "reimage"
        return
    # Keys first; whole rows (specs and all) only for the few attempts the agent lacks.
    held = conn.execute(_RUNNING_KEYS, {"b_node": node.id}).all()
    running_keys = set()
    missing = []
    for seq, job_key, task_key, attempt in held:
        key = (job_key, task_key, attempt)
        running_keys.add(key)
        if key not in known and key not in acked:
            missing.append(seq)
    if missing:
        rows = conn.execute(select(tasks, jobs.c.id.label("job_id"), jobs.c.spec.label("job_spec"))
                            .join(jobs, jobs.c.seq == tasks.c.job_seq).where(tasks.c.seq.in_(missing))
                            .order_by(tasks.c.seq)).all()
        answer.run.extend(_assignment(row) for row in rows)
    for key, original in known.items():
        if key not in running_keys and key not in acked:
            answer.kill.append([original[0], original[1], int(original[2]), "stale"])


def _assignment(row: Any) -> dict[str, Any]:
    spec = row.spec
    env: dict[str, str] = {}
    for item in row.job_spec.get("commonEnvironmentSettings") or []:
        env[item["name"]] = item.get("value") or ""
    for item in spec.get("environmentSettings") or []:
        env[item["name"]] = item.get("value") or ""
    wall = (spec.get("constraints") or {}).get("maxWallClockTime")
    wall_s = None
    if wall:
        seconds = clock.parse_duration(wall).total_seconds()
        wall_s = seconds if seconds < 10 * 365 * 86400 else None
    return {"jobId": row.job_id, "taskId": row.id, "attempt": row.attempt, "commandLine": spec["commandLine"],
            "environment": env, "requiredSlots": row.required_slots, "maxWallClockTimeS": wall_s,
            "userIdentity": spec.get("userIdentity")}
