"""Bringing a pool's node records to its targets; ending resizes; finishing pool deletion.

This decides *which* nodes a pool should have. Providers only turn node records into running
agents and report what they lose (ARCHITECTURE.md: providers only provision).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update

from shoal import clock
from shoal.service import ids, removal, transitions
from shoal.service.context import Context
from shoal.store.schema import nodes, pools

LIVE_STATES = ("starting", "waitingforstarttask", "idle", "running", "starttaskfailed", "unusable",
               "offline")
# Which nodes go first when a pool shrinks: broken and unstarted ones, then the least busy.
_REMOVAL_ORDER = {"unusable": 0, "starttaskfailed": 1, "creating": 2, "starting": 3,
                  "waitingforstarttask": 4, "offline": 5, "idle": 6, "running": 7}


def reconcile(ctx: Context) -> bool:
    """One pass over pools that are resizing, stopping or deleting. Returns True if it changed
    anything (the caller wakes the provider and the scheduler)."""
    changed = False
    with ctx.engine.begin() as conn:
        rows = conn.execute(select(pools).where(
            pools.c.account == ctx.account,
            pools.c.allocation_state.in_(("resizing", "stopping")))).all()
        for pool in rows:
            changed |= _reconcile_pool(ctx, conn, pool)
    return changed


def _reconcile_pool(ctx: Context, conn: Any, pool: Any) -> bool:
    now = clock.now()
    pool_nodes = conn.execute(select(nodes).where(nodes.c.pool_seq == pool.seq)).all()
    staying = [n for n in pool_nodes if n.state != "leavingpool"]
    leaving = [n for n in pool_nodes if n.state == "leavingpool"]
    if pool.allocation_state == "stopping":
        _set_steady(conn, pool, errors=pool.resize_errors)
        return True
    changed = False
    for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low_priority)):
        group = [n for n in staying if bool(n.is_dedicated) == dedicated]
        if len(group) < target:
            for _ in range(target - len(group)):
                conn.execute(insert(nodes).values(
                    id=ids.node_id(dedicated), pool_seq=pool.seq, state="creating",
                    scheduling_state="enabled", is_dedicated=dedicated, token=ids.token(),
                    slots=pool.slots_per_node, allocation_time=now, state_transition_time=now,
                    run_start_task=False, total_tasks_run=0, total_tasks_succeeded=0,
                    etag=clock.new_etag()))
            changed = True
        elif len(group) > target:
            surplus = _pick_surplus(conn, group, len(group) - target)
            removal.mark_leaving(ctx, conn, surplus, pool.deallocation_option or "requeue")
            leaving.extend(surplus)
            changed = True
    # Nodes count towards the pool once allocated (as in Batch, `creating` nodes are current), so a
    # grow is done in the pass that adds them; only nodes still leaving keep the pool resizing. A
    # deleting pool has targets of zero, so no leaving nodes there means no nodes at all.
    if not leaving:
        if pool.state == "deleting":
            conn.execute(delete(nodes).where(nodes.c.pool_seq == pool.seq))
            conn.execute(delete(pools).where(pools.c.seq == pool.seq))
        else:
            _set_steady(conn, pool, errors=None)
        return True
    deadline = clock.as_utc(pool.resize_deadline)
    if deadline is not None and now > deadline and pool.state != "deleting":
        _set_steady(conn, pool, errors=[{"code": "AllocationTimedout",
                                         "message": "Desired number of nodes could not be allocated "
                                                    "within the resize timeout."}])
        return True
    return changed


def _pick_surplus(conn: Any, group: list[Any], count: int) -> list[Any]:
    busy = transitions.running_slots(conn, [n.id for n in group])
    ranked = sorted(group, key=lambda n: (_REMOVAL_ORDER.get(n.state, 9), busy.get(n.id, 0)))
    return ranked[:count]


def _set_steady(conn: Any, pool: Any, *, errors: list[dict[str, str]] | None) -> None:
    now = clock.now()
    conn.execute(update(pools).where(pools.c.seq == pool.seq).values(
        allocation_state="steady", allocation_state_transition_time=now, resize_errors=errors,
        resize_deadline=None, etag=clock.new_etag(), last_modified=now))
