"""What a user can do to one compute node: disable or enable scheduling, reboot, reimage
(semantics §2.2, §2.3).

Reboot and reimage are carried out by the node's own agent: the control plane marks the node
`rebooting`/`reimaging` and answers its next sync with `restart`; the agent stops everything
(a reimage also wipes the node root), says hello again as a new incarnation and reruns the
start task. With `taskcompletion`/`retaineddata` the restart waits until running tasks end.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from shoal import clock
from shoal.errors import Conflict
from shoal.model.states import NodeState, SchedulingState
from shoal.service import node_users, request_body, transitions
from shoal.service import nodes as node_service
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import nodes

REBOOT_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
DISABLE_OPTIONS = ("requeue", "terminate", "taskcompletion")
RESTARTS = {"reboot": NodeState.REBOOTING, "reimage": NodeState.REIMAGING}


def disable_scheduling(ctx: Context, pool_id: str, node_id: str, body: Any) -> None:
    body = v.require_object(body or {})
    request_body.check(body, "node.disablescheduling")
    option = v.choice(body, "nodeDisableSchedulingOption", DISABLE_OPTIONS, default="requeue")
    assert option is not None
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if row.scheduling_state == SchedulingState.DISABLED:
            raise Conflict("The node's scheduling is already disabled.", code="NodeAlreadyInTargetSchedulingState")
        transitions.stop_running(conn, transitions.running_on(conn, [row.id]), option)
        conn.execute(update(nodes).where(nodes.c.id == row.id).values(scheduling_state=SchedulingState.DISABLED,
                                                                       etag=clock.new_etag()))
        transitions.refresh_node_busy(conn, [row.id])
    ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()


def enable_scheduling(ctx: Context, pool_id: str, node_id: str) -> None:
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if row.scheduling_state == "enabled":
            raise Conflict("The node's scheduling is already enabled.", code="NodeAlreadyInTargetSchedulingState")
        values: dict[str, Any] = {"scheduling_state": "enabled", "etag": clock.new_etag()}
        if row.state == NodeState.OFFLINE:
            values.update(state=NodeState.IDLE, state_transition_time=clock.now())
        conn.execute(update(nodes).where(nodes.c.id == row.id).values(**values))
    ctx.signals.wake_scheduler()


def restart(ctx: Context, pool_id: str, node_id: str, body: Any, kind: str) -> None:
    """Reboot or reimage (`kind`), with the node's running tasks handled by the option."""
    body = v.require_object(body or {})
    request_body.check(body, f"node.{kind}")
    name = "nodeRebootOption" if kind == "reboot" else "nodeReimageOption"
    option = v.choice(body, name, REBOOT_OPTIONS, default="requeue")
    assert option is not None
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if row.state not in (NodeState.IDLE, NodeState.RUNNING, NodeState.OFFLINE, NodeState.START_TASK_FAILED,
                             NodeState.UNUSABLE):
            raise Conflict(f"The node is {row.state}; it can be {kind}ed only when idle or running.",
                           code="NodeNotReady")
        transitions.stop_running(conn, transitions.running_on(conn, [row.id]), option)
        conn.execute(update(nodes).where(nodes.c.id == row.id).values(pending_action=kind, etag=clock.new_etag()))
        begin_pending(conn)
    ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()


def begin_pending(conn: Connection) -> list[str]:
    """Nodes with a reboot/reimage waiting and no task left running go `rebooting`/`reimaging`."""
    waiting = conn.execute(select(nodes.c.id, nodes.c.pending_action).where(
        nodes.c.pending_action.is_not(None), nodes.c.state.not_in((NodeState.REBOOTING, NodeState.REIMAGING)))).all()
    busy = {r.node_id for r in transitions.running_on(conn, [w.id for w in waiting])}
    started = []
    for node_id, action in waiting:
        if node_id in busy:
            continue
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            state=RESTARTS[action], state_transition_time=clock.now(), etag=clock.new_etag()))
        if action == "reimage":
            node_users.forget_all(conn, node_id)
        started.append(node_id)
    return started


def start_pending(ctx: Context) -> None:
    """Lifecycle pass: start the restarts whose tasks have now finished."""
    with ctx.engine.begin() as conn:
        started = begin_pending(conn)
    for node_id in started:
        ctx.signals.wake_node(node_id)
