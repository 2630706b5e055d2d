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
from shoal.service import job_prep_nodes, node_users, request_body, transitions, usage
from shoal.service import nodes as node_service
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import nodes

REBOOT_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
DISABLE_OPTIONS = ("requeue", "terminate", "taskcompletion")
RESTARTS = {"reboot": NodeState.REBOOTING, "reimage": NodeState.REIMAGING, "deallocate": NodeState.DEALLOCATING}
# States a reboot, reimage or deallocation may start from.
RESTARTABLE = (NodeState.IDLE, NodeState.RUNNING, NodeState.OFFLINE, NodeState.START_TASK_FAILED,
               NodeState.UNUSABLE)


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


def restart(ctx: Context, pool_id: str, node_id: str, body: Any, kind: str, *,
            reimage_needs_cloud_service: bool = False) -> None:
    """Reboot or reimage (`kind`), with the node's running tasks handled by the option.

    `reimage_needs_cloud_service`: the request's api-version allows a reimage only on a pool of
    `cloudServiceConfiguration`, which no Shoal pool is (see `shoal.api.versions`)."""
    body = v.require_object(body or {})
    request_body.check(body, f"node.{kind}")
    name = {"reboot": "nodeRebootOption", "reimage": "nodeReimageOption", "deallocate": "nodeDeallocateOption"}[kind]
    option = v.choice(body, name, REBOOT_OPTIONS, default="requeue")
    assert option is not None
    if kind == "deallocate" and not ctx.provider_runs_nodes:
        raise Conflict("This server's nodes are agents started by hand: Shoal cannot stop and start their "
                       "machines.", code="OperationNotValidOnNode")
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if kind == "reimage" and reimage_needs_cloud_service:
            raise Conflict("The specified operation is not valid on the node.", code="OperationNotValidOnNode",
                           values={"Reason": "Operation reimage can be invoked only on pools created with "
                                             "cloudServiceConfiguration"})
        if row.state not in RESTARTABLE:
            raise Conflict(f"The node is {row.state}; it can be {kind}d only when idle or running."
                           if kind == "deallocate" else
                           f"The node is {row.state}; it can be {kind}ed only when idle or running.",
                           code="NodeNotReady")
        transitions.stop_running(conn, transitions.running_on(conn, [row.id]), option)
        conn.execute(update(nodes).where(nodes.c.id == row.id).values(pending_action=kind, etag=clock.new_etag()))
        begin_pending(conn)
    ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()
    ctx.signals.wake_provider()


def start(ctx: Context, pool_id: str, node_id: str) -> None:
    """A deallocated node starts again (same id, same disk): from `creating`, as a recovered
    spot node does, its provider starts its agent, which says hello and reruns the start task."""
    with ctx.engine.begin() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
        if row.state != NodeState.DEALLOCATED:
            raise Conflict(f"The node is {row.state}; only a deallocated node can be started.",
                           code="NodeNotDeallocated")
        conn.execute(update(nodes).where(nodes.c.id == row.id).values(
            state=NodeState.CREATING, state_transition_time=clock.now(), agent_pid=None, etag=clock.new_etag()))
        usage.open_spans(conn, [row.id])
        # Its disk was kept, as through a reboot: preparations rerun as after one.
        job_prep_nodes.node_restarted(conn, row.id, "reboot")
    ctx.signals.wake_provider()


def deallocated(ctx: Context, node_id: str) -> None:
    """The provider stopped a deallocating node's agent: the node keeps its disk, and nothing runs."""
    with ctx.engine.begin() as conn:
        done = conn.execute(update(nodes).where(nodes.c.id == node_id, nodes.c.state == NodeState.DEALLOCATING).values(
            state=NodeState.DEALLOCATED, state_transition_time=clock.now(), incarnation=None, agent_pid=None,
            file_server_url=None, ssh_port=None, etag=clock.new_etag()))
        if done.rowcount:
            usage.close_spans(conn, [node_id])
    ctx.node_metrics.pop(node_id, None)


def begin_pending(conn: Connection) -> list[str]:
    """Nodes with a reboot/reimage/deallocation waiting and no task left running go
    `rebooting`/`reimaging`/`deallocating`."""
    waiting = conn.execute(select(nodes.c.id, nodes.c.pending_action).where(
        nodes.c.pending_action.is_not(None), nodes.c.state.not_in((NodeState.REBOOTING, NodeState.REIMAGING)))).all()
    busy = {r.node_id for r in transitions.running_on(conn, [w.id for w in waiting])}
    started = []
    for node_id, action in waiting:
        if node_id in busy:
            continue
        # A reboot or reimage keeps its pending action until the agent's next hello; a
        # deallocation is the provider's from here on.
        done = {"pending_action": None} if action == "deallocate" else {}
        conn.execute(update(nodes).where(nodes.c.id == node_id).values(
            state=RESTARTS[action], state_transition_time=clock.now(), etag=clock.new_etag(), **done))
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
    if started:
        ctx.signals.wake_provider()
