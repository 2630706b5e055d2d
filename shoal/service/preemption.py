"""Spot nodes: preemption, recovery, and the spot capacity a machine can offer.

A preempted node stays in the pool in state `preempted` (it still counts in
currentLowPriorityNodes and $CurrentLowPriorityNodes); its VM and local data are gone, so its
running tasks go back to the queue as a recovery — neither retryCount nor requeueCount moves
(semantics §2.5, §7.6). When capacity returns, the same node id starts again from `creating`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, update

from shoal import clock
from shoal.errors import Conflict
from shoal.model.states import NodeState, PoolState
from shoal.service import nodes as node_service
from shoal.service import transitions, usage
from shoal.service.context import Context
from shoal.store.schema import nodes, pools

PREEMPTIBLE_STATES = (NodeState.CREATING, NodeState.STARTING, NodeState.WAITING_FOR_START_TASK, NodeState.IDLE,
                      NodeState.RUNNING, NodeState.START_TASK_FAILED, NodeState.UNUSABLE, NodeState.OFFLINE)


def preempt(ctx: Context, pool_id: str, node_id: str) -> None:
    """On demand (`shoal node preempt`): evict one spot node now."""
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if row.is_dedicated:
            raise Conflict("Only spot (low-priority) nodes can be preempted.", code="NodeNotPreemptible")
        if row.state not in PREEMPTIBLE_STATES:
            raise Conflict(f"The node is {row.state} and cannot be preempted.", code="NodeNotPreemptible")
        preempt_in(ctx, conn, row.id)


def preempt_in(ctx: Context, conn: Connection, node_id: str) -> None:
    running = transitions.running_on(conn, [node_id])
    transitions.requeue(conn, running, user_requested=False)
    conn.execute(update(nodes).where(nodes.c.id == node_id).values(
        state=NodeState.PREEMPTED, state_transition_time=clock.now(), incarnation=None, file_server_url=None,
        start_task_info=None, etag=clock.new_etag()))
    usage.close_spans(conn, [node_id])
    ctx.node_metrics.pop(node_id, None)
    ctx.signals.wake_provider()
    ctx.signals.wake_scheduler()


def spot_nodes_in_use(conn: Connection) -> int:
    """Spot nodes holding capacity now: every spot node that is neither preempted nor leaving."""
    return int(conn.execute(select(func.count()).where(
        nodes.c.is_dedicated.is_(False),
        nodes.c.state.not_in((NodeState.PREEMPTED, NodeState.LEAVING_POOL)))).scalar_one())


def recover(ctx: Context, recovery: timedelta, capacity: int | None) -> bool:
    """Preempted nodes come back (same id, from `creating`) once `recovery` has passed on the
    scaled timeline and the machine has spot capacity for them."""
    real_wait = timedelta(seconds=ctx.timebase.real_seconds(recovery))
    cutoff = clock.now() - real_wait
    changed = False
    with ctx.engine.begin() as conn:
        # A walk of the partial index ix_nodes_preempted (the state written out, not bound: SQLite
        # uses a partial index only for a WHERE that names its constant); the pool is checked
        # here, so no plan starts from the pools and scans their nodes.
        preempted = conn.execute(select(nodes.c.id, nodes.c.pool_seq).where(
            nodes.c.state == literal_column(f"'{NodeState.PREEMPTED}'"), nodes.c.state_transition_time <= cutoff)
            .order_by(nodes.c.state_transition_time)).all()
        if not preempted:
            return False
        active = set(conn.execute(select(pools.c.seq).where(pools.c.account == ctx.account,
                                                            pools.c.state == PoolState.ACTIVE)).scalars())
        rows = [row.id for row in preempted if row.pool_seq in active]
        if not rows:
            return False
        free = None if capacity is None else capacity - spot_nodes_in_use(conn)
        for node_id in rows:
            if free is not None and free <= 0:
                break
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(
                state=NodeState.CREATING, state_transition_time=clock.now(), agent_pid=None, etag=clock.new_etag()))
            usage.open_spans(conn, [node_id])
            changed = True
            if free is not None:
                free -= 1
    if changed:
        ctx.signals.wake_provider()
    return changed


def spot_room(conn: Connection, capacity: int | None, wanted: int) -> int:
    """How many of `wanted` new spot nodes the machine's capacity allows now."""
    if capacity is None:
        return wanted
    return max(0, min(wanted, capacity - spot_nodes_in_use(conn)))


def live_spot_nodes(ctx: Context) -> list[Any]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(nodes.c.id, pools.c.spec).join(pools, pools.c.seq == nodes.c.pool_seq).where(
            pools.c.account == ctx.account, nodes.c.is_dedicated.is_(False),
            nodes.c.state.in_((NodeState.IDLE, NodeState.RUNNING, NodeState.WAITING_FOR_START_TASK,
                               NodeState.STARTING)))).all())


def preempt_many(ctx: Context, node_ids: list[str]) -> None:
    if not node_ids:
        return
    with ctx.engine.begin() as conn:
        for node_id in node_ids:
            state = conn.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar()
            if state in PREEMPTIBLE_STATES:
                preempt_in(ctx, conn, node_id)
