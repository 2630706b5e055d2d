"""Taking nodes out of a pool with a node deallocation option (Batch semantics §2.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, update

from shoal import clock
from shoal.model.states import NodeState, SchedulingState
from shoal.service import transitions, usage
from shoal.service.context import Context
from shoal.store.schema import nodes


def mark_leaving(ctx: Context, conn: Connection, node_rows: Sequence[Any], option: str) -> None:
    """requeue/terminate act on running tasks now; taskcompletion/retaineddata let them finish
    (the node takes no new work and leaves when it is empty)."""
    # A node record no agent ever took (no provider started one, nobody joined by hand) has
    # nothing to wind down: it simply goes.
    unclaimed = [n.id for n in node_rows
                 if n.state == NodeState.CREATING and n.agent_pid is None and n.incarnation is None]
    if unclaimed:
        conn.execute(delete(nodes).where(nodes.c.id.in_(unclaimed)))
        usage.close_spans(conn, unclaimed)
    node_rows = [n for n in node_rows if n.id not in unclaimed]
    if not node_rows:
        return
    ids = [n.id for n in node_rows]
    transitions.stop_running(conn, transitions.running_on(conn, ids), option)
    now = clock.now()
    conn.execute(update(nodes).where(nodes.c.id.in_(ids)).values(
        state=NodeState.LEAVING_POOL, leave_option=option, scheduling_state=SchedulingState.DISABLED,
        state_transition_time=now, etag=clock.new_etag()))
    for node_id in ids:
        ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()
