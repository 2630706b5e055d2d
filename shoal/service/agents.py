"""The control plane's side of the agent protocol (docs/agent-protocol.md).

Every call authenticates the node by its token, counts as a heartbeat, and is answered from
the store: what the node should run is whatever the store says runs there and the agent does
not yet hold; what it should kill is whatever it holds that the store no longer runs there.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, bindparam, select, update

from shoal import clock
from shoal.errors import BadRequest, BatchError, Conflict, InvalidProperty, Unauthenticated
from shoal.model.catalog import find_vm_size
from shoal.model.states import NodeState, PoolState, SchedulingState, StartTaskState, TaskState
from shoal.service import applications as application_service
from shoal.service import certificates as certificate_service
from shoal.service import (
    job_prep,
    job_prep_nodes,
    node_copies,
    node_users,
    scheduling,
    subtasks,
    task_files,
    task_outputs,
    transitions,
    usage,
)
from shoal.service import jobs as job_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, nodes, pools, tasks

Attempt = tuple[str, str, int]

# How far an agent's clock may disagree with ours before its times count as made up: a report's
# start may precede its assignment, and any end may pass our now, by at most this much.
# Within it, times are clamped to the assignment and to now.
REPORT_CLOCK_SKEW_S = 60.0


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
    # Folder deletions (shoal.service.folder_orders), added by the caller as it answers.
    delete_task_dirs: list[list[str]] = field(default_factory=list)
    delete_job_dirs: list[str] = field(default_factory=list)
    # Job preparation and release runs to start, and ones to stop ([kind, jobId, generation]).
    run_job_tasks: list[dict[str, Any]] = field(default_factory=list)
    kill_job_tasks: list[list[Any]] = field(default_factory=list)
    # Multi-instance attempts: the coordinations this sync recorded, and the primaries here whose
    # every instance has coordinated, which may now run the task's command line.
    coordinated_ack: list[list[Any]] = field(default_factory=list)
    all_coordinated: list[list[Any]] = field(default_factory=list)

    def has_news(self) -> bool:
        return bool(self.ack or self.run or self.kill or self.run_start_task or self.leave or self.restart
                    or self.delete_task_dirs or self.delete_job_dirs or self.run_job_tasks or self.kill_job_tasks
                    or self.coordinated_ack or self.all_coordinated)

    def to_json(self) -> dict[str, Any]:
        return {"ack": [list(a) for a in self.ack], "run": self.run, "kill": self.kill,
                "coordinatedAck": self.coordinated_ack, "allCoordinated": self.all_coordinated,
                "runJobTasks": self.run_job_tasks, "killJobTasks": self.kill_job_tasks,
                "deleteTaskDirs": self.delete_task_dirs, "deleteJobDirs": self.delete_job_dirs,
                "runStartTask": self.run_start_task, "leave": self.leave, "restart": self.restart}


def token_matches(expected: str, presented: str) -> bool:
    """Constant time, so the answer's timing says nothing about how much of a token was right."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))


def _checked(row: Any, token: str) -> Any:
    if row is None:
        raise NodeGone("The node is no longer part of a pool.")
    if not token_matches(row.token, token):
        raise Unauthenticated("The node token is not valid.")
    if row.state == NodeState.PREEMPTED:
        # The VM is gone with its data: the agent stops everything and deletes its root.
        raise NodeGone("The node was preempted.")
    return row


# What answering a sync needs of the node's record (the whole row carries JSON columns that cost
# more to decode than the rest of a quiet sync).
_SYNC_NODE = (
    select(nodes.c.id, nodes.c.token, nodes.c.state, nodes.c.incarnation, nodes.c.run_start_task, nodes.c.pool_seq)
    .where(nodes.c.id == bindparam("b_id"))
)


def _sync_node(conn: Connection, node_id: str, token: str) -> Any:
    return _checked(conn.execute(_SYNC_NODE, {"b_id": node_id}).first(), token)


# What recording a sync with news needs of the node's record: the slim columns, and what the
# start task and a node's return from `unusable` are judged by.
_RECORD_COLUMNS = (*_SYNC_NODE.selected_columns, nodes.c.last_boot_time, nodes.c.start_task_info,
                   nodes.c.scheduling_state, nodes.c.errors)


def _sync_nodes(conn: Connection, node_ids: list[str], columns: Any = _SYNC_NODE.selected_columns) -> dict[str, Any]:
    """The slim records (`_SYNC_NODE`, or `columns`) of many nodes, by id; a gone node is absent."""
    found: dict[str, Any] = {}
    for chunk in in_chunks(node_ids):
        found.update((row.id, row) for row in conn.execute(select(*columns).where(nodes.c.id.in_(chunk))))
    return found


def authenticate(ctx: Context, node_id: str, token: str) -> str | None:
    """Check a node's token before anything of its request is read (its body included); returns
    the incarnation of the agent that said hello last, for `from_current_agent`."""
    with ctx.engine.connect() as conn:
        row = _checked(conn.execute(select(nodes.c.token, nodes.c.state, nodes.c.incarnation)
                                    .where(nodes.c.id == node_id)).first(), token)
    return row.incarnation


def from_current_agent(incarnation: str | None, body: dict[str, Any]) -> bool:
    """Whether a sync body comes from the agent process whose hello the node took last (only its
    calls count as the node's heartbeat). A node that has not said hello yet (a fresh record)
    has no incarnation to match."""
    if not incarnation:
        return True
    presented = body.get("incarnation")
    return isinstance(presented, str) and token_matches(incarnation, presented)


def _refuse_address(name: str, value: Any, reason: str) -> InvalidProperty:
    return InvalidProperty(name, str(value)[:256], reason)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def admit_addresses(body: dict[str, Any], peer_host: str | None, *, joined_by_hand: bool) -> dict[str, Any]:
    """The `fileServerUrl` and `ipAddress` the control plane records for a hello, or 400.

    The control plane sends the node token to the file server URL with every file request, so
    the URL must point at the node itself, never at whatever a token holder names (SSRF): a
    node a local provider started serves on loopback; a node that joined by hand serves on the
    address its hello came from (an agent bound to a wildcard address is recorded at that
    address). Host names are refused: what they resolve to can change after the check."""
    admitted = dict(body)
    peer = _ip(peer_host) if peer_host else None
    if joined_by_hand and peer is None:
        raise BadRequest("The agent's network address is not known.", code="InvalidRequest")
    url = body.get("fileServerUrl")
    if url is not None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _refuse_address("fileServerUrl", url, "The value is not a URL.") from exc
        malformed = (parts.scheme not in ("http", "https") or parts.username is not None
                     or parts.password is not None or parts.path not in ("", "/") or bool(parts.query)
                     or bool(parts.fragment) or port is None)
        if malformed:
            raise _refuse_address("fileServerUrl", url, "The value must be scheme://address:port and nothing else.")
        host = _ip(parts.hostname or "")
        if host is None:
            raise _refuse_address("fileServerUrl", url, "The host must be an IP address.")
        if joined_by_hand:
            assert peer is not None
            if host.is_unspecified:
                host = peer
            if host != peer:
                raise _refuse_address("fileServerUrl", url,
                                      "The host must be the address the agent connects from.")
        elif not host.is_loopback:
            raise _refuse_address("fileServerUrl", url, "A local node's file server must be on loopback.")
        shown = f"[{host}]" if host.version == 6 else str(host)
        admitted["fileServerUrl"] = f"{parts.scheme}://{shown}:{port}"
    if joined_by_hand:
        # Whatever the agent believes its address is, the one it connects from is the one we know.
        admitted["ipAddress"] = str(peer)
    else:
        claimed = body.get("ipAddress")
        address = _ip(claimed) if claimed is not None else ipaddress.ip_address("127.0.0.1")
        if address is None or not address.is_loopback:
            raise _refuse_address("ipAddress", claimed, "A local node's address must be on loopback.")
        admitted["ipAddress"] = str(address)
    return admitted


def register(ctx: Context, join_token: str, body: dict[str, Any]) -> dict[str, str]:
    """An agent started by hand (`shoal agent --join URL --pool P --join-token T`) takes one of
    the pool's node records that no provider has brought up yet."""
    pool_id = body.get("poolId")
    with ctx.engine.begin() as conn:
        pool = conn.execute(select(pools).where(pools.c.account == ctx.account,
                                                pools.c.key == str(pool_id or "").lower())).first()
        if pool is None or not token_matches(pool.join_token, join_token):
            raise Unauthenticated("The pool join token is not valid for this pool.")
        if pool.state != PoolState.ACTIVE:
            raise Conflict("The pool is being deleted.", code="PoolBeingDeleted")
        free = conn.execute(select(nodes).where(
            nodes.c.pool_seq == pool.seq, nodes.c.state == NodeState.CREATING, nodes.c.incarnation.is_(None),
            nodes.c.agent_pid.is_(None)).order_by(nodes.c.is_dedicated.desc(), nodes.c.allocation_time)
            .limit(1)).first()
        if free is None:
            raise Conflict("The pool has no node waiting for an agent: raise its target first.",
                           code="NoNodeToJoin")
        # Claimed: `starting` until its hello, so no second agent takes it.
        conn.execute(update(nodes).where(nodes.c.id == free.id).values(
            state=NodeState.STARTING, state_transition_time=clock.now(), last_heartbeat=clock.now(),
            etag=clock.new_etag()))
    return {"nodeId": free.id, "token": free.token}


def goodbye(ctx: Context, node_id: str, token: str, body: dict[str, Any] | None = None) -> None:
    """The agent of a leaving node has stopped and deleted its folders; the last of its log
    comes with it (`agentLog`)."""
    with ctx.engine.begin() as conn:
        row = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if row is None:
            return
        if not token_matches(row.token, token):
            raise Unauthenticated("The node token is not valid.")
        _keep_agent_log(conn, ctx, row, (body or {}).get("agentLog"))
        if row.state == NodeState.LEAVING_POOL:
            conn.execute(nodes.delete().where(nodes.c.id == node_id))
            usage.close_spans(conn, [node_id])
            node_copies.gone(conn, [node_id])
    ctx.signals.wake_provider()


def hello(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """A (re)started agent: it holds no tasks, so whatever ran on this node is requeued."""
    now = clock.now()
    with ctx.engine.begin() as conn:
        node = _checked(conn.execute(select(nodes).where(nodes.c.id == node_id)).first(), token)
        pool = conn.execute(select(pools).where(pools.c.seq == node.pool_seq)).one()
        start_task = pool.spec.get("startTask")
        if start_task and start_task.get("resourceFiles"):
            start_task = {**start_task, "resourceFiles": task_files.for_node(start_task["resourceFiles"])}
        if node.incarnation and node.incarnation != body.get("incarnation"):
            transitions.requeue(conn, transitions.running_on(conn, [node_id]), user_requested=False)
            job_prep_nodes.node_restarted(conn, node_id, {NodeState.REBOOTING: "reboot",
                                                          NodeState.REIMAGING: "reimage"}.get(node.state, "restart"))
        leaving = node.state == NodeState.LEAVING_POOL
        idle = NodeState.OFFLINE if node.scheduling_state == SchedulingState.DISABLED else NodeState.IDLE
        # The pool's packages as they stand at this boot: later changes reach the node at its next
        # boot (semantics §5.4). It stays `starting` until the agent says they are installed.
        packages = application_service.for_node(conn, pool.account, pool.spec.get("applicationPackageReferences"))
        new_state = node.state if leaving else (NodeState.STARTING if start_task or packages else idle)
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            state=new_state, state_transition_time=now, last_boot_time=now, last_heartbeat=now,
            incarnation=body.get("incarnation"), agent_pid=body.get("pid") or node.agent_pid,
            file_server_url=body.get("fileServerUrl"), ip_address=body.get("ipAddress") or "127.0.0.1",
            run_start_task=bool(start_task) and not leaving, start_task_info=None, pending_action=None,
            certificate_references=pool.spec.get("certificateReferences") or None, etag=clock.new_etag()))
        # A node installs its pool's certificates when it boots, before the start task: later
        # changes to the pool's references reach it at its next boot (semantics §5.6).
        node_certificates = certificate_service.for_node(conn, pool.account, pool.spec.get("certificateReferences"),
                                                         ctx.sealer)
        # The agent says whether it can run tasks as their own users (it cannot without root);
        # the node's `errors` say so to every client. Our words, not the agent's: only its user
        # name is quoted, bounded.
        isolation = body.get("isolation")
        errors = [e for e in node.errors or [] if isinstance(e, dict)
                  and e.get("code") not in ("IsolationUnavailable", PACKAGE_ERROR)]
        if isinstance(isolation, dict) and isolation.get("userIsolation") is False:
            agent_user = "".join(c for c in str(isolation.get("agentUser") or "?")[:64] if c.isprintable())
            errors.append({"code": "IsolationUnavailable", "message": (
                f"The node's agent does not run as root, so it cannot create users: every task runs as "
                f"{agent_user!r}, unisolated from other tasks and from the agent, and a task naming a "
                f"userName fails."), "errorDetails": [{"name": "agentUser", "value": agent_user}]})
        errors = [e for e in errors if e.get("code") != "SizeNotEnforced"]
        limits = isolation.get("sizeLimits") if isinstance(isolation, dict) else None
        if isinstance(limits, dict) and limits.get("enforced") is False:
            reason = "".join(c for c in str(limits.get("reason") or "")[:300] if c.isprintable())
            errors.append({"code": "SizeNotEnforced", "message": (
                f"The node's tasks are not confined to the vCPUs and memory of {pool.vm_size}: they may use "
                f"all of the host's. {reason}").strip(), "errorDetails": [{"name": "reason", "value": reason}]})
        if errors != (node.errors or []):
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(errors=errors or None))
        node_users.record_ssh_port(conn, node_id, body.get("sshPort"))
        login_users = node_users.for_agent(conn, node_id)
    ctx.signals.wake_scheduler()
    # Pool user accounts become real users on the node; the password travels so the agent can
    # set it (never logged), the SSH key only where inter-node communication wants it installed.
    inter_node = bool(pool.spec.get("enableInterNodeCommunication"))
    user_accounts = []
    for account in pool.spec.get("userAccounts") or []:
        if not isinstance(account, dict):
            continue
        linux = account.get("linuxUserConfiguration")
        linux = linux if isinstance(linux, dict) else {}
        user_accounts.append({
            "name": account.get("name"), "password": account.get("password"),
            "elevationLevel": account.get("elevationLevel") or "nonadmin",
            "linuxUserConfiguration": {"uid": linux.get("uid"), "gid": linux.get("gid"),
                                       "sshPrivateKey": linux.get("sshPrivateKey") if inter_node else None}})
    return {"node": {
        "poolId": pool.id, "isDedicated": bool(node.is_dedicated), "accountName": ctx.account,
        "accountUrl": ctx.base_url, "taskSlotsPerNode": pool.slots_per_node, "startTask": start_task,
        "userAccounts": user_accounts, "loginUsers": login_users, "vmSize": _resources(pool.vm_size),
        "certificates": node_certificates, "applicationPackages": packages}}


def _resources(vm_size: str) -> dict[str, Any] | None:
    """What a node of the pool's size may use; its agent confines its processes to it."""
    size = find_vm_size(vm_size)
    return {"name": size.name, "vCPUs": size.vcpus, "memoryMiB": size.memory_mib} if size else None


def sync(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> SyncAnswer:
    with ctx.engine.begin() as conn:
        after = _Aftermath()
        record = _sync_nodes(conn, [node_id], _RECORD_COLUMNS).get(node_id)
        answer, schedule = _record_sync(conn, ctx, record, token, body, after)
        try:
            freed = after.settle(ctx, conn)
        except _EntryFailed as failure:
            raise failure.error from None
        # Slots were freed or a node became ready: schedule its pool now, so this answer
        # already carries the next tasks.
        woken = set()
        for pool_seq in freed | ({schedule} if schedule is not None else set()):
            woken |= scheduling.schedule_pool(ctx, conn, pool_seq)
        if answer is not None:
            _deliveries(conn, _sync_node(conn, node_id, token), body, answer)
    # The pool of this node was scheduled inline above; other pools are not touched by this
    # sync, so the scheduler loop need not run for them.
    for other in woken - {node_id}:
        ctx.signals.wake_node(other)
    return answer if answer is not None else _stale_answer(body)


@dataclass(frozen=True)
class SyncEntry:
    """One node's sync inside a batch (`sync_batch`)."""

    node_id: str
    token: str
    body: dict[str, Any]


def sync_batch(ctx: Context, entries: list[SyncEntry]) -> list[SyncAnswer | BatchError]:
    """The syncs of many nodes in one transaction: every report recorded, each pool they touch
    scheduled once (not once per node), then each node's deliveries read. One entry's error
    (a gone node, a bad token, made-up times) is that entry's answer: the transaction is run
    again without it, so nothing of the failed entry is kept and the others lose nothing."""
    failed: dict[int, BatchError] = {}
    while True:
        try:
            answers = _sync_batch_once(ctx, entries, failed)
            break
        except _EntryFailed as failure:
            failed[failure.index] = failure.error
    return [failed[i] if i in failed else answers[i] for i in range(len(entries))]


class _EntryFailed(Exception):
    def __init__(self, index: int, error: BatchError) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


def _sync_batch_once(ctx: Context, entries: list[SyncEntry], failed: dict[int, BatchError]) -> dict[int, SyncAnswer]:
    answers: dict[int, SyncAnswer] = {}
    woken: set[str] = set()
    with ctx.engine.begin() as conn:
        pending: dict[int, SyncAnswer] = {}
        pools_to_schedule: set[int] = set()
        after = _Aftermath()
        before = _sync_nodes(conn, [entry.node_id for entry in entries], _RECORD_COLUMNS)
        for index, entry in enumerate(entries):
            if index in failed:
                continue
            try:
                answer, schedule = _record_sync(conn, ctx, before.get(entry.node_id), entry.token, entry.body,
                                                after, index)
            except BatchError as error:
                raise _EntryFailed(index, error) from None
            if answer is None:
                answers[index] = _stale_answer(entry.body)
                continue
            pending[index] = answer
            if schedule is not None:
                pools_to_schedule.add(schedule)
        pools_to_schedule |= after.settle(ctx, conn)
        for pool_seq in sorted(pools_to_schedule):
            woken |= scheduling.schedule_pool(ctx, conn, pool_seq)
        node_ids = [entries[index].node_id for index in pending]
        records = _sync_nodes(conn, node_ids)
        reads = _DeliveryReads(conn, node_ids)
        for index, answer in pending.items():
            entry = entries[index]
            _deliveries(conn, _checked(records.get(entry.node_id), entry.token), entry.body, answer, reads)
            answers[index] = answer
    for other in woken - {entry.node_id for entry in entries}:
        ctx.signals.wake_node(other)
    return answers


def _stale_answer(body: dict[str, Any]) -> SyncAnswer:
    """For a process the node has moved on from (whose attempts that hello requeued), or a
    caller with a stolen token that never said hello: it changes nothing and is given nothing;
    its reports are acknowledged so an old process stops resending them."""
    return SyncAnswer(ack=[(r["jobId"], r["taskId"], r["attempt"]) for r in body.get("reports") or []])


@dataclass
class _NodeReports:
    index: int  # the entry's place in its batch (0 for a single sync)
    node_id: str
    pool_seq: int
    reports: list[dict[str, Any]]


@dataclass
class _Aftermath:
    """What the syncs of one transaction leave to do once, after all of them: a batch of 1,000
    nodes reads their running attempts in one statement a chunk and ends the reported ones in one
    executemany, writes their heartbeats in one statement, checks each job it finished tasks of
    once, and settles each node's idle/running state in one pass, not once per node."""

    beaten: list[str] = field(default_factory=list)
    reports: list[_NodeReports] = field(default_factory=list)

    def settle(self, ctx: Context, conn: Connection) -> set[int]:
        """Carry out what was gathered; the pools whose slots the reports freed. A report with
        times no honest agent sends raises `_EntryFailed` naming its entry."""
        now = clock.now()
        for chunk in in_chunks(self.beaten):
            conn.execute(update(nodes).where(nodes.c.id.in_(chunk)).values(last_heartbeat=now))
        touched_jobs, freed_pools, reported_nodes = _apply_reports(conn, ctx, self.reports, now)
        if touched_jobs:
            job_service.finish_all_complete_jobs(ctx, conn, sorted(touched_jobs))
        transitions.refresh_node_busy(conn, reported_nodes)
        return freed_pools


def _record_sync(conn: Connection, ctx: Context, record: Any, token: str, body: dict[str, Any],
                 after: _Aftermath, index: int = 0) -> tuple[SyncAnswer | None, int | None]:
    """The writes of one node's sync (`record`: its `_RECORD_COLUMNS`, None when it is gone), but
    for what `after` gathers (its reports among them): (its answer so far, or None when the call
    is not from the node's current agent; the pool to schedule, when the node got ready)."""
    node = _checked(record, token)
    node_id = node.id
    if not _current_incarnation(node, body):
        return None, None
    answer = SyncAnswer()
    now = clock.now()
    if node.state == NodeState.UNUSABLE:
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            last_heartbeat=now, state=_state_on_return(conn, node), state_transition_time=now))
    else:
        after.beaten.append(node_id)
    if isinstance(body.get("metrics"), dict):
        ctx.node_metrics[node_id] = body["metrics"]
    _keep_agent_log(conn, ctx, node, body.get("agentLog"))
    if body.get("runningOutputs"):
        task_outputs.keep_running(conn, ctx.account, node_id, body["runningOutputs"], now)
    ready = False
    if body.get("applicationPackages") is not None:
        ready = _record_packages(conn, node, body["applicationPackages"])
    if body.get("startTask") is not None:
        answer.run_start_task = False
        ready = _record_start_task(conn, ctx, node, body["startTask"])
    elif node.run_start_task:
        answer.run_start_task = True
    if body.get("jobTasks"):
        for position, report in enumerate(body["jobTasks"]):
            _checked_times(report, None, now, f"jobTasks[{position}]")
        released, moved = job_prep_nodes.record_reports(conn, ctx.base_url, ctx.account, node_id, body["jobTasks"])
        job_service.finish_released_jobs(ctx, conn, sorted(released))
        if moved:
            ctx.signals.wake_scheduler()
    if body.get("coordinated"):
        for woken in subtasks.coordinated(conn, node_id, body["coordinated"], now):
            ctx.signals.wake_node(woken)
        answer.coordinated_ack = [list(item) for item in body["coordinated"]]
    reports = body.get("reports") or []
    if reports:
        # Every report is acknowledged, whether or not it still ends anything (see _apply_reports).
        answer.ack = [(r["jobId"], r["taskId"], r["attempt"]) for r in reports]
        after.reports.append(_NodeReports(index, node_id, node.pool_seq, reports))
    return answer, node.pool_seq if ready else None


PACKAGE_ERROR = "ApplicationPackageError"
"""The node error of a pool package that could not be installed (the code Batch gives the task
failure of the same cause, semantics §3.1; Azure's node error code is not documented)."""


def _record_packages(conn: Connection, node: Any, report: dict[str, Any]) -> bool:
    """The pool's packages are installed (the node is ready, unless its start task is still to
    run) or failed (the node is `unusable` until it reboots, as Batch makes it); True when that
    made the node ready for tasks."""
    if node.state != NodeState.STARTING:
        return False
    now = clock.now()
    if report.get("state") == "failed":
        message = "".join(c for c in str((report.get("failure") or {}).get("message") or "")[:2000]
                          if c.isprintable())
        errors = [e for e in node.errors or [] if isinstance(e, dict) and e.get("code") != PACKAGE_ERROR]
        errors.append({"code": PACKAGE_ERROR, "message": f"The pool's application packages could not be installed: "
                                                         f"{message}", "errorDetails": []})
        conn.execute(update(nodes).where(nodes.c.id == node.id).values(
            state=NodeState.UNUSABLE, state_transition_time=now, run_start_task=False, errors=errors,
            etag=clock.new_etag()))
        return False
    if node.run_start_task:
        return False
    ready = NodeState.OFFLINE if node.scheduling_state == SchedulingState.DISABLED else NodeState.IDLE
    conn.execute(update(nodes).where(nodes.c.id == node.id).values(
        state=ready, state_transition_time=now, etag=clock.new_etag()))
    return ready == NodeState.IDLE


def sync_has_news(body: dict[str, Any]) -> bool:
    """Whether a sync body carries something to record (task reports, start-task news, pool
    package news, copies of output or of the agent's log)."""
    return (bool(body.get("reports")) or body.get("startTask") is not None or bool(body.get("jobTasks"))
            or bool(body.get("coordinated"))
            or body.get("applicationPackages") is not None
            or bool(body.get("runningOutputs")) or body.get("agentLog") is not None)


def _pool_id(conn: Connection, pool_seq: int) -> str:
    return str(conn.execute(select(pools.c.id).where(pools.c.seq == pool_seq)).scalar_one())


def _keep_agent_log(conn: Connection, ctx: Context, node: Any, copy: tuple[bytes, int] | None) -> None:
    if copy is not None:
        node_copies.keep(conn, ctx.account, _pool_id(conn, node.pool_seq), node.id, {node_copies.AGENT_LOG: copy})


def sync_without_writes(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> SyncAnswer | None:
    """A sync with nothing to record, answered by reads alone (the heartbeat lives in memory,
    shoal.service.liveness); None when the node's record must change after all (it was
    unusable and is back), so the caller runs `sync` on the writer."""
    if sync_has_news(body):
        return None
    with ctx.engine.connect() as conn:
        return _quiet_sync(conn, ctx, _sync_node(conn, node_id, token), body)


def _quiet_sync(conn: Connection, ctx: Context, node: Any, body: dict[str, Any],
                reads: _DeliveryReads | None = None) -> SyncAnswer | None:
    if not _current_incarnation(node, body):
        return SyncAnswer()
    if node.state == NodeState.UNUSABLE:
        return None
    if isinstance(body.get("metrics"), dict):
        ctx.node_metrics[node.id] = body["metrics"]
    answer = SyncAnswer(run_start_task=bool(node.run_start_task))
    _deliveries(conn, node, body, answer, reads)
    return answer


def sync_batch_without_writes(ctx: Context, entries: list[SyncEntry]) -> list[SyncAnswer | BatchError | None]:
    """`sync_without_writes` for each of many quiet syncs, on one connection, with the reads
    they share made once (the nodes' records, their running attempts, each job's environment);
    an entry's error (a gone node, a bad token) is its answer."""
    answers: list[SyncAnswer | BatchError | None] = []
    with ctx.engine.connect() as conn:
        records = _sync_nodes(conn, [entry.node_id for entry in entries])
        reads = _DeliveryReads(conn, list(records))
        for entry in entries:
            try:
                node = _checked(records.get(entry.node_id), entry.token)
                answers.append(_quiet_sync(conn, ctx, node, entry.body, reads))
            except BatchError as error:
                answers.append(error)
    return answers


def _current_incarnation(node: Any, body: dict[str, Any]) -> bool:
    """Whether a sync comes from the agent process whose hello the node last took."""
    return from_current_agent(node.incarnation, body)


def deliveries(ctx: Context, node_id: str, token: str, body: dict[str, Any]) -> SyncAnswer:
    """The read-only second half of a sync, for the end of a long poll."""
    answer = SyncAnswer()
    with ctx.engine.connect() as conn:
        node = _sync_node(conn, node_id, token)
        if not _current_incarnation(node, body):
            return answer
        if node.run_start_task and body.get("startTask") is None:
            answer.run_start_task = True
        _deliveries(conn, node, body, answer)
    return answer


def _state_on_return(conn: Connection, node: Any) -> str:
    """A node that went silent and calls again resumes where its start task left it."""
    spec = conn.execute(select(pools.c.spec).where(pools.c.seq == node.pool_seq)).scalar_one()
    wait = (spec.get("startTask") or {}).get("waitForSuccess", True)
    info = node.start_task_info or {}
    if any(isinstance(e, dict) and e.get("code") == PACKAGE_ERROR for e in node.errors or []):
        return NodeState.UNUSABLE  # until it reboots: the packages failed at this boot
    if node.run_start_task:
        return NodeState.STARTING
    if wait and info.get("state") == StartTaskState.RUNNING:
        return NodeState.WAITING_FOR_START_TASK
    if wait and info.get("result") == "failure":
        return NodeState.START_TASK_FAILED
    busy = conn.execute(select(tasks.c.seq).where(tasks.c.node_id == node.id, tasks.c.state == TaskState.RUNNING)
                        .limit(1)).first()
    return NodeState.RUNNING if busy else NodeState.IDLE


def _checked_times(report: dict[str, Any], not_before: datetime | None, now: datetime, label: str) -> None:
    """Refuse times no honest agent reports (a start before the work was handed out, an end in
    the future, an end before the start); clamp the few seconds clocks may disagree by."""
    start = clock.parse_iso(report.get("startTime"))
    end = clock.parse_iso(report.get("endTime"))
    if start is not None and not_before is not None:
        if clock.seconds_between(not_before, start) > REPORT_CLOCK_SKEW_S:
            raise InvalidProperty(f"{label}.startTime", report["startTime"],
                                  "The start precedes the time the work was assigned.")
        start = max(start, not_before)
        report["startTime"] = clock.iso(start)
    if end is not None:
        if clock.seconds_between(end, now) > REPORT_CLOCK_SKEW_S:
            raise InvalidProperty(f"{label}.endTime", report["endTime"], "The end is in the future.")
        end = min(end, now)
        if start is not None and end < start:
            raise InvalidProperty(f"{label}.endTime", report["endTime"], "The end precedes the start.")
        report["endTime"] = clock.iso(end)


def _record_start_task(conn: Connection, ctx: Context, node: Any, report: dict[str, Any]) -> bool:
    """Record the start task's state, and the copy of its output that comes with its end; True
    when that made the node ready for tasks."""
    now = clock.now()
    _checked_times(report, clock.as_utc(node.last_boot_time), now, "startTask")
    info = {k: report[k] for k in ("state", "startTime", "endTime", "exitCode", "retryCount", "lastRetryTime")
            if report.get(k) is not None}
    info.setdefault("retryCount", 0)
    if report.get("failure"):
        info["failureInfo"] = report["failure"]
    values: dict[str, Any] = {"start_task_info": info}
    if report.get("state") == StartTaskState.COMPLETED:
        values["run_start_task"] = False
        info["result"] = "success" if report.get("exitCode") == 0 and not report.get("failure") else "failure"
    errors = _start_task_errors(node.errors, info, report.get("stderrTail"))
    if errors != (node.errors or []):
        values["errors"] = errors or None
    pool_id, pool = conn.execute(select(pools.c.id, pools.c.spec).where(pools.c.seq == node.pool_seq)).one()
    if report.get("output"):
        node_copies.keep(conn, ctx.account, pool_id, node.id, node_copies.start_task_copies(report["output"]), now)
    wait = (pool.get("startTask") or {}).get("waitForSuccess", True)
    if node.state in (NodeState.STARTING, NodeState.WAITING_FOR_START_TASK, NodeState.START_TASK_FAILED):
        ready = NodeState.OFFLINE if node.scheduling_state == SchedulingState.DISABLED else NodeState.IDLE
        if report.get("state") == StartTaskState.RUNNING:
            new_state = NodeState.WAITING_FOR_START_TASK if wait else ready
        elif info.get("result") == "success" or not wait:
            new_state = ready
        else:
            new_state = NodeState.START_TASK_FAILED
        if new_state != node.state:
            values.update(state=new_state, state_transition_time=now)
    conn.execute(update(nodes).where(nodes.c.id == node.id).values(etag=clock.new_etag(), **values))
    return values.get("state") == NodeState.IDLE


def _start_task_errors(errors: Any, info: dict[str, Any], stderr_tail: Any) -> list[dict[str, Any]]:
    """The node's errors with `StartTaskFailed` as its start task now stands: said while it has
    failed (exit code, failure and the last lines of its stderr, which the user can act on),
    gone once it runs again or succeeds."""
    kept = [e for e in errors or [] if isinstance(e, dict) and e.get("code") != "StartTaskFailed"]
    if info.get("result") != "failure":
        return kept
    failure = info.get("failureInfo") or {}
    exit_code = info.get("exitCode")
    tail = "".join(c for c in stderr_tail if c.isprintable() or c == "\n") if isinstance(stderr_tail, str) else ""
    said = f"exit code {exit_code}" if exit_code is not None else str(failure.get("code") or "no exit code")
    message = f"The start task failed ({said}): {failure.get('message') or 'see startTaskInfo'}."
    if tail:
        message += f" The last lines of its stderr:\n{tail}"
    details = [{"name": "exitCode", "value": str(exit_code)}] if exit_code is not None else []
    if failure.get("code"):
        details.append({"name": "failureCode", "value": str(failure["code"])})
    return [*kept, {"code": "StartTaskFailed", "message": message, "errorDetails": details}]


_RUNNING_OF_MANY = (
    select(tasks, jobs.c.key.label("job_key")).join(jobs, jobs.c.seq == tasks.c.job_seq)
    .where(tasks.c.node_id.in_(bindparam("b_nodes", expanding=True)), tasks.c.state == TaskState.RUNNING,
           jobs.c.account == bindparam("b_account"))
)


def _apply_reports(conn: Connection, ctx: Context, gathered: list[_NodeReports],
                   now: datetime) -> tuple[set[int], set[int], list[str]]:
    """End the attempts the reports of many nodes finished: (the jobs touched, the pools whose
    slots were freed, the nodes that ended something). The running attempts of all the nodes are
    read one statement a chunk, and all of them are ended in one executemany."""
    touched_jobs: set[int] = set()
    freed_pools: set[int] = set()
    reported_nodes: list[str] = []
    if not gathered:
        return touched_jobs, freed_pools, reported_nodes
    current: dict[tuple[str, str, str], Any] = {}
    for chunk in in_chunks([g.node_id for g in gathered]):
        for running in conn.execute(_RUNNING_OF_MANY, {"b_nodes": list(chunk), "b_account": ctx.account}):
            current[(running.node_id, running.job_key, running.key)] = running
    reported = []
    ended_by_subtasks: set[int] = set()
    for node in gathered:
        ended = False
        for position, report in enumerate(node.reports):
            key = (node.node_id, report["jobId"].lower(), report["taskId"].lower())
            row = current.get(key)
            # Only the attempt this node runs now can be ended by this node. Anything else (an
            # attempt requeued, terminated or already reported, or one the node never held) is
            # acknowledged and dropped: it changes nothing, nothing completes twice, and an
            # honest agent with a stale report is never wedged by a refusal.
            if row is None or row.attempt != report["attempt"]:
                gang = _subtask_ended(conn, ctx, node.node_id, report, now, ended_by_subtasks)
                if gang is not None:
                    reported.append(gang)
                    touched_jobs.add(gang[0].job_seq)
                    ended = True
                continue
            try:
                _checked_times(report, clock.as_utc(row.state_transition_time), now, f"reports[{position}]")
            except BatchError as error:
                raise _EntryFailed(node.index, error) from None
            del current[key]
            reported.append((row, report))
            touched_jobs.add(row.job_seq)
            ended = True
        if ended:
            freed_pools.add(node.pool_seq)
            reported_nodes.append(node.node_id)
    task_outputs.keep(conn, reported, {row.seq: row.node_id for row, _report in reported}, now)
    instance_nodes: set[str] = set()
    job_actions = transitions.complete_reports(conn, reported, instance_nodes)
    reporting = {node.node_id for node in gathered}  # their answers carry what changed for them
    for woken in job_service.apply_task_failure_actions(ctx, conn, job_actions) | instance_nodes:
        if woken not in reporting:
            ctx.signals.wake_node(woken)
    return touched_jobs, freed_pools, reported_nodes


def _subtask_ended(conn: Connection, ctx: Context, node_id: str, report: dict[str, Any], now: datetime,
                   ended: set[int]) -> tuple[Any, dict[str, Any]] | None:
    """A subtask's end (its coordination command failed) ends its task's attempt as a failure,
    retried as the task's retry count says (semantics §3.5): (the task's running row, the report
    that ends it), or None when the report ends nothing."""
    task_seq = subtasks.subtask_report(conn, node_id, report, now)
    if task_seq is None or task_seq in ended:
        return None
    ended.add(task_seq)
    row = conn.execute(select(tasks, jobs.c.key.label("job_key")).join(jobs, jobs.c.seq == tasks.c.job_seq)
                       .where(tasks.c.seq == task_seq, tasks.c.state == TaskState.RUNNING)).first()
    if row is None:
        return None
    exit_code = report.get("exitCode")
    ending: dict[str, Any] = {"endTime": clock.iso(now)}
    if isinstance(exit_code, int) and exit_code != 0:
        ending["exitCode"] = exit_code
    else:
        ending["failure"] = report.get("failure") or dict(subtasks.SUBTASK_FAILED)
    return row, ending


_RUNNING_KEYS = (
    select(tasks.c.seq, jobs.c.key.label("job_key"), tasks.c.key.label("task_key"), tasks.c.attempt,
           tasks.c.instances, tasks.c.id.label("task_id"), jobs.c.id.label("job_id"))
    .join(jobs, jobs.c.seq == tasks.c.job_seq)
    .where(tasks.c.node_id == bindparam("b_node"), tasks.c.state == TaskState.RUNNING)
)
_RUNNING_KEYS_OF_MANY = (
    select(tasks.c.node_id, tasks.c.seq, jobs.c.key.label("job_key"), tasks.c.key.label("task_key"),
           tasks.c.attempt, tasks.c.instances, tasks.c.id.label("task_id"), jobs.c.id.label("job_id"))
    .join(jobs, jobs.c.seq == tasks.c.job_seq)
    .where(tasks.c.node_id.in_(bindparam("b_nodes", expanding=True)), tasks.c.state == TaskState.RUNNING)
)


class _DeliveryReads:
    """What the deliveries of many nodes in one call read: the running attempts of all of them
    in one statement a chunk (not one each), and each job's id and environment once (not once
    per assignment: a job's spec is the largest JSON most assignments carry)."""

    def __init__(self, conn: Connection, node_ids: list[str] | None = None) -> None:
        self.conn = conn
        self._running: dict[str, list[Any]] | None = None
        self._job_tasks: dict[str, list[Any]] | None = None
        if node_ids is not None:
            self._job_tasks = job_prep_nodes.pending_on(conn, node_ids)
            self._running = {}
            for chunk in in_chunks(node_ids):
                for row in conn.execute(_RUNNING_KEYS_OF_MANY, {"b_nodes": list(chunk)}):
                    self._running.setdefault(row.node_id, []).append(row)
        self._jobs: dict[int, tuple[str, dict[str, str], dict[str, Any] | None, str]] = {}
        self._subtasks: dict[str, list[Any]] | None = (
            subtasks.running_on(conn, node_ids) if node_ids is not None else None)

    def subtasks_on(self, node_id: str) -> list[Any]:
        """The subtasks (multi-instance instances above 0) the node runs."""
        if self._subtasks is not None:
            return self._subtasks.get(node_id, [])
        return subtasks.running_on(self.conn, [node_id]).get(node_id, [])

    def job_tasks(self, node_id: str) -> list[Any] | None:
        """The node's pending job preparation/release runs, when read with other nodes'."""
        return None if self._job_tasks is None else self._job_tasks.get(node_id, [])

    def running_keys(self, node_id: str) -> list[Any]:
        if self._running is not None:
            return self._running.get(node_id, [])
        return list(self.conn.execute(_RUNNING_KEYS, {"b_node": node_id}).all())

    def assignments(self, node_id: str, seqs: list[int],
                    instance_of: dict[int, int] | None = None) -> list[dict[str, Any]]:
        """The assignments of these tasks on the node: the primary of a multi-instance task, or
        (`instance_of`: task seq → instance) the subtasks it runs."""
        # What an assignment carries, and no more: the other JSON columns cost more to decode.
        rows = self.conn.execute(select(tasks.c.seq, tasks.c.job_seq, tasks.c.id, tasks.c.attempt,
                                        tasks.c.required_slots, tasks.c.spec, tasks.c.instances)
                                 .where(tasks.c.seq.in_(seqs)).order_by(tasks.c.seq)).all()
        unknown = {row.job_seq for row in rows} - self._jobs.keys()
        if unknown:
            for job in self.conn.execute(select(jobs.c.seq, jobs.c.id, jobs.c.spec, jobs.c.prep_wait, jobs.c.account)
                                         .where(jobs.c.seq.in_(unknown))):
                env = {item["name"]: item.get("value") or ""
                       for item in job.spec.get("commonEnvironmentSettings") or []}
                prep = None
                if job.prep_wait is not None:
                    prep = {"taskId": job.spec[job_prep.PREP]["id"], "waitForSuccess": bool(job.prep_wait)}
                self._jobs[job.seq] = (job.id, env, prep, job.account)
        # A job's tasks wait on a node whose preparation has not succeeded yet (waitForSuccess).
        waiting = {row.job_seq for row in rows if (self._jobs[row.job_seq][2] or {}).get("waitForSuccess")}
        prepared = job_prep_nodes.prepared(self.conn, node_id, sorted(waiting)) if waiting else set()
        out = []
        for row in rows:
            job_id, env, prep, account = self._jobs[row.job_seq]
            assignment = _assignment(self.conn, account, row, job_id, env)
            if row.instances:
                instance = (instance_of or {}).get(row.seq, 0)
                assignment["multiInstance"] = subtasks.instance_block(self.conn, row.seq, instance, row.spec)
                if instance > 0:
                    # A subtask runs the coordination command alone; the task's own resource
                    # and output files are the primary's (semantics §3.5).
                    assignment["resourceFiles"], assignment["outputFiles"] = [], []
            if prep is not None:
                assignment["jobPreparation"] = {"taskId": prep["taskId"],
                                                "await": prep["waitForSuccess"] and row.job_seq not in prepared}
            out.append(assignment)
        return out


def _deliveries(conn: Connection, node: Any, body: dict[str, Any], answer: SyncAnswer,
                reads: _DeliveryReads | None = None) -> None:
    if node.state == NodeState.LEAVING_POOL:
        running = transitions.running_on(conn, [node.id])
        if not running:
            # The record goes when the agent says goodbye (or its provider sees it gone, or it
            # falls silent): a node has left only once it has stopped.
            answer.leave = True
            return
    known = {(k[0].lower(), k[1].lower(), k[2]): k for k in body.get("known") or []}
    acked = {(a[0].lower(), a[1].lower(), a[2]) for a in answer.ack}
    if node.state in (NodeState.REBOOTING, NodeState.REIMAGING) and body.get("incarnation") == node.incarnation:
        # This incarnation must go; the next hello comes from a fresh one.
        answer.restart = "reboot" if node.state == NodeState.REBOOTING else "reimage"
        return
    if not _current_incarnation(node, body):
        return
    # Keys first; whole rows (specs and all) only for the few attempts the agent lacks.
    reads = reads if reads is not None else _DeliveryReads(conn)
    running_keys = set()
    missing = []
    primaries = {}
    for row in reads.running_keys(node.id):
        key = (row.job_key, row.task_key, row.attempt)
        running_keys.add(key)
        if key not in known and key not in acked:
            missing.append(row.seq)
        elif row.instances:
            primaries[row.seq] = row
    if primaries:
        answer.all_coordinated = [[primaries[seq].job_id, primaries[seq].task_id, primaries[seq].attempt]
                                  for seq in subtasks.all_coordinated(conn, list(primaries))]
    if missing:
        answer.run.extend(reads.assignments(node.id, missing))
    instance_of: dict[int, int] = {}
    for row in reads.subtasks_on(node.id):
        key = (row.job_key, row.task_key, row.attempt)
        running_keys.add(key)
        if key not in known and key not in acked:
            instance_of[row.task_seq] = row.instance
    if instance_of:
        answer.run.extend(reads.assignments(node.id, sorted(instance_of), instance_of))
    for key, original in known.items():
        if key not in running_keys and key not in acked:
            answer.kill.append([original[0], original[1], original[2], "stale"])
    answer.run_job_tasks, answer.kill_job_tasks = job_prep_nodes.deliveries(
        conn, node.id, body.get("knownJobTasks") or [], reads.job_tasks(node.id))


def _assignment(conn: Connection, account: str, row: Any, job_id: str, job_env: dict[str, str]) -> dict[str, Any]:
    spec = row.spec
    env = dict(job_env)
    for item in spec.get("environmentSettings") or []:
        env[item["name"]] = item.get("value") or ""
    wall = (spec.get("constraints") or {}).get("maxWallClockTime")
    wall_s = None
    if wall:
        seconds = clock.parse_duration(wall).total_seconds()
        wall_s = seconds if seconds < 10 * 365 * 86400 else None
    return {"jobId": job_id, "taskId": row.id, "attempt": row.attempt, "commandLine": spec["commandLine"],
            "environment": env, "requiredSlots": row.required_slots, "maxWallClockTimeS": wall_s,
            "userIdentity": spec.get("userIdentity"),
            "resourceFiles": task_files.for_node(spec.get("resourceFiles")), "outputFiles": spec.get("outputFiles") or [],
            "applicationPackages": application_service.for_node(conn, account, spec.get("applicationPackageReferences")),
            # The API puts the token itself in the environment as it sends this (api/agent.py).
            "jobToken": task_service.wants_job_token(spec)}
