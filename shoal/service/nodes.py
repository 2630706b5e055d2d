"""Compute nodes: what the API shows of them, and what providers and health checks change."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, union_all, update

from shoal import clock
from shoal.errors import NotFound
from shoal.model.states import LIVE_NODE_STATES, PROVISIONING_NODE_STATES, NodeState, TaskState
from shoal.service import node_copies, transitions, usage
from shoal.service import pools as pool_service
from shoal.service.context import Context
from shoal.service.liveness import Liveness
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, nodes, pools, task_attempts, tasks

RECENT_TASKS = transitions.RECENT_TASKS
# Nodes per statement (one bounded walk each, joined by UNION ALL; SQLite allows 500).
RECENT_CHUNK = 100


def node_not_found(node_id: str) -> NotFound:
    return NotFound("The specified node does not exist.", code="NodeNotFound")


class NodeRecord(NamedTuple):
    """A node as the API shows it (shoal/api/render.py): its pool's row, its own, and the tasks
    running on it."""

    pool: Any
    row: Any
    running: list[Any]
    # Tasks whose attempts ended on the node lately, newest first (none of them running there).
    recent: Sequence[Any] = ()


def _running_by_node(conn: Any, node_ids: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {n: [] for n in node_ids}
    if not node_ids:
        return out
    rows = conn.execute(select(tasks.c.node_id, tasks.c.id, tasks.c.state, tasks.c.required_slots,
                               tasks.c.execution_info, jobs.c.id.label("job_id"))
                        .join(jobs, jobs.c.seq == tasks.c.job_seq)
                        .where(tasks.c.node_id.in_(node_ids), tasks.c.state == TaskState.RUNNING)).all()
    for row in rows:
        out[row.node_id].append(row)
    return out


def _recent_by_node(conn: Any, node_ids: list[str], running: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Per node, the tasks of its last RECENT_TASKS ended attempts (each task once, newest
    first, none running there now): one bounded walk of ``ix_task_attempts_node`` per node."""
    out: dict[str, list[Any]] = {n: [] for n in node_ids}
    for chunk in in_chunks(node_ids, RECENT_CHUNK):
        walks = [select(task_attempts.c.node_id, task_attempts.c.end_time, task_attempts.c.seq.label("attempt_seq"),
                        task_attempts.c.task_seq, task_attempts.c.task_id, task_attempts.c.job_id,
                        task_attempts.c.end_state, task_attempts.c.execution_info)
                 .where(task_attempts.c.node_id == node_id)
                 .order_by(task_attempts.c.end_time.desc(), task_attempts.c.seq.desc())
                 .limit(RECENT_TASKS).subquery() for node_id in chunk]
        attempts = union_all(*[select(walk) for walk in walks]).subquery()
        # A deleted task's attempt shows what it ended with (its task and job are gone).
        rows = conn.execute(
            select(attempts.c.node_id, attempts.c.attempt_seq,
                   func.coalesce(tasks.c.seq, -attempts.c.attempt_seq).label("seq"),
                   func.coalesce(tasks.c.id, attempts.c.task_id).label("id"),
                   func.coalesce(tasks.c.state, attempts.c.end_state).label("state"),
                   func.coalesce(tasks.c.required_slots, 1).label("required_slots"),
                   func.coalesce(tasks.c.execution_info, attempts.c.execution_info).label("execution_info"),
                   func.coalesce(jobs.c.id, attempts.c.job_id).label("job_id"))
            .outerjoin(tasks, tasks.c.seq == attempts.c.task_seq).outerjoin(jobs, jobs.c.seq == tasks.c.job_seq)
            .order_by(attempts.c.node_id, attempts.c.end_time.desc(), attempts.c.attempt_seq.desc())).all()
        for row in rows:
            shown = out[row.node_id]
            if len(running[row.node_id]) + len(shown) >= RECENT_TASKS or any(t.seq == row.seq for t in shown) \
                    or any(t.id == row.id and t.job_id == row.job_id for t in running[row.node_id]):
                continue
            shown.append(row)
    return out


def _records(conn: Any, pool: Any, rows: list[Any]) -> list[NodeRecord]:
    ids = [r.id for r in rows]
    running = _running_by_node(conn, ids)
    recent = _recent_by_node(conn, ids, running)
    return [NodeRecord(pool, r, running[r.id], recent[r.id]) for r in rows]


def list_for_pool(ctx: Context, pool_id: str) -> list[NodeRecord]:
    with ctx.engine.connect() as conn:
        pool = pool_service.load(conn, ctx, pool_id)
        rows = conn.execute(select(nodes).where(nodes.c.pool_seq == pool.seq)
                            .order_by(nodes.c.allocation_time, nodes.c.id)).all()
        return _records(conn, pool, list(rows))


def load(conn: Any, ctx: Context, pool_id: str, node_id: str) -> tuple[Any, Any]:
    pool = pool_service.load(conn, ctx, pool_id)
    row = conn.execute(select(nodes).where(nodes.c.pool_seq == pool.seq, nodes.c.id == node_id)).first()
    if row is None:
        raise node_not_found(node_id)
    return pool, row


def get(ctx: Context, pool_id: str, node_id: str) -> NodeRecord:
    with ctx.engine.connect() as conn:
        pool, row = load(conn, ctx, pool_id, node_id)
        return _records(conn, pool, [row])[0]


@dataclass(frozen=True)
class ProvisioningRecord:
    """What a provider needs to know about one node record."""

    node_id: str
    pool_id: str
    token: str
    state: str
    is_dedicated: bool
    agent_pid: int | None
    last_heartbeat: Any


def provisioning_view(ctx: Context, suspects: Collection[str] | None = None) -> list[ProvisioningRecord]:
    """Every node record of the account (``suspects`` None: a provider's full pass), or only
    those a provider must act on whatever their agents do (PROVISIONING_NODE_STATES, an index
    walk) and the ``suspects`` it names (nodes whose agents it saw end): a pass that costs what
    changed, not the size of the pools."""
    columns = select(nodes.c.id, pools.c.id.label("pool_id"), nodes.c.token, nodes.c.state,
                     nodes.c.is_dedicated, nodes.c.agent_pid, nodes.c.last_heartbeat) \
        .join(pools, pools.c.seq == nodes.c.pool_seq).where(pools.c.account == ctx.account)
    with ctx.engine.connect() as conn:
        if suspects is None:
            rows = conn.execute(columns).all()
        else:
            rows = list(conn.execute(columns.where(nodes.c.state.in_(PROVISIONING_NODE_STATES))))
            named = sorted(set(suspects) - {r.id for r in rows})
            for chunk in in_chunks(named):
                rows.extend(conn.execute(columns.where(nodes.c.id.in_(chunk))).all())
    return [ProvisioningRecord(r.id, r.pool_id, r.token, r.state, bool(r.is_dedicated), r.agent_pid,
                               clock.as_utc(r.last_heartbeat)) for r in rows]


def agent_spawned(ctx: Context, node_id: str, pid: int) -> None:
    with ctx.engine.begin() as conn:
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(agent_pid=pid))


def agent_lost(ctx: Context, node_id: str) -> None:
    """The provider found the node's agent gone: its running tasks are requeued (a recovery,
    not a retry) and the node is unusable until a fresh agent on the same node id says hello."""
    with ctx.engine.begin() as conn:
        row = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if row is None:
            return
        if row.state == NodeState.LEAVING_POOL:
            forget_in(conn, node_id)
            return
        if row.state == NodeState.PREEMPTED:
            return  # its capacity is gone; preemption.recover brings it back
        running = transitions.running_on(conn, [node_id])
        transitions.requeue(conn, running, user_requested=False)
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            state=NodeState.UNUSABLE, state_transition_time=clock.now(), agent_pid=None, incarnation=None,
            etag=clock.new_etag()))
    ctx.signals.wake_scheduler()
    ctx.signals.wake_provider()


def forget(ctx: Context, node_id: str) -> None:
    with ctx.engine.begin() as conn:
        forget_in(conn, node_id)
    ctx.signals.wake_provider()


def forget_in(conn: Any, node_id: str) -> None:
    running = transitions.running_on(conn, [node_id])
    transitions.requeue(conn, running, user_requested=False)
    conn.execute(delete(nodes).where(nodes.c.id == node_id))
    usage.close_spans(conn, [node_id])
    node_copies.gone(conn, [node_id])
    transitions.forget_attempts(conn, [node_id])


# Node states whose agent is expected to call: silence in any of them makes the node unusable.


def mark_silent_nodes_unusable(ctx: Context, timeout_s: float, liveness: Liveness) -> bool:
    """A node whose agent stopped calling becomes `unusable`; its tasks are requeued elsewhere.

    Silence is judged from the in-memory timers of ``liveness``, and only while the event loop
    that refreshes them is on time: a held-up loop cannot tell a silent agent from an unread
    one. The store is read, and a transaction begun, only for what the timers already show
    silent (plus, every RESYNC_S, the ids of the live nodes, so one that never called is
    tracked too). A node judged here leaves the board until it calls again."""
    board = liveness
    if not board.loop_on_time():
        return False
    if board.resync_due():
        with ctx.engine.connect() as conn:
            board.track(conn.execute(select(nodes.c.id).where(
                nodes.c.state.in_((*LIVE_NODE_STATES, NodeState.LEAVING_POOL)))).scalars())
    quiet = board.silent(timeout_s)
    if not quiet:
        return False
    declared = _declare_silent(ctx, quiet)
    board.forget_all(quiet)
    return declared


def _declare_silent(ctx: Context, quiet: list[str]) -> bool:
    with ctx.engine.begin() as conn:
        # Read again inside the transaction: a node may have changed state since (this runs on
        # the one writer, so nothing else writes meanwhile; the re-read costs only the few).
        rows = conn.execute(select(nodes.c.id, nodes.c.state).where(nodes.c.id.in_(quiet))).all()
        # A leaving node that fell silent has left, whatever became of its goodbye.
        gone = [row.id for row in rows if row.state == NodeState.LEAVING_POOL]
        for node_id in gone:
            forget_in(conn, node_id)
        silent = [row.id for row in rows if row.state in LIVE_NODE_STATES]
        if not silent:
            return bool(gone)
        transitions.requeue(conn, transitions.running_on(conn, silent), user_requested=False)
        conn.execute(update(nodes).where(nodes.c.id.in_(silent)).values(
            state=NodeState.UNUSABLE, state_transition_time=clock.now(), etag=clock.new_etag()))
    ctx.signals.wake_scheduler()
    return True


class NodeStates(NamedTuple):
    """A pool's nodes for its heat map: ids and states in the order the node list shows them."""

    ids: list[str]
    states: list[str]
    scheduling_disabled: list[bool]


def states_of_pool(ctx: Context, pool_id: str) -> NodeStates:
    """Every node of a pool with its state: one query over the pool's index, three columns per
    node, so a 10,000-node heat map costs one walk and no per-node work."""
    with ctx.engine.connect() as conn:
        pool = pool_service.load(conn, ctx, pool_id)
        rows = conn.execute(select(nodes.c.id, nodes.c.state, nodes.c.scheduling_state)
                            .where(nodes.c.pool_seq == pool.seq)
                            .order_by(nodes.c.allocation_time, nodes.c.id)).all()
    return NodeStates([r.id for r in rows], [r.state for r in rows], [r.scheduling_state == "disabled" for r in rows])
