"""Bringing a pool's node records to its targets; ending resizes; finishing pool deletion.

This decides *which* nodes a pool should have. Providers only turn node records into running
agents and report what they lose (ARCHITECTURE.md: providers only provision).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select, update

from shoal import clock
from shoal.service import ids, preemption, removal, transitions
from shoal.service.context import Context
from shoal.store.schema import nodes, pools

# Which nodes go first when a pool shrinks: broken and unstarted ones, then the least busy.
_REMOVAL_ORDER = {"preempted": -1, "unusable": 0, "starttaskfailed": 1, "creating": 2, "starting": 3,
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
        # Pools seek their spot target continuously: a steady pool short of spot nodes (scarce
        # capacity, or nodes preempted and gone) takes capacity as soon as there is some.
        for pool in conn.execute(select(pools).where(
                pools.c.account == ctx.account, pools.c.state == "active", pools.c.allocation_state == "steady",
                pools.c.target_low_priority > 0)).all():
            staying = conn.execute(select(func.count()).where(
                nodes.c.pool_seq == pool.seq, nodes.c.is_dedicated.is_(False),
                nodes.c.state != "leavingpool")).scalar_one()
            changed |= _add_nodes(conn, pool, False, pool.target_low_priority - staying, ctx.spot_capacity) > 0
    return changed


def _add_nodes(conn: Any, pool: Any, dedicated: bool, wanted: int, spot_capacity: int | None) -> int:
    """Create up to `wanted` node records; spot ones only as far as the machine's spot capacity
    goes. Returns how many were created."""
    if wanted <= 0:
        return 0
    count = wanted if dedicated else preemption.spot_room(conn, spot_capacity, wanted)
    now = clock.now()
    for _ in range(count):
        conn.execute(insert(nodes).values(
            id=ids.node_id(dedicated), pool_seq=pool.seq, state="creating",
            scheduling_state="enabled", is_dedicated=dedicated, token=ids.token(),
            slots=pool.slots_per_node, allocation_time=now, state_transition_time=now,
            run_start_task=False, total_tasks_run=0, total_tasks_succeeded=0,
            etag=clock.new_etag()))
    return count


def _reconcile_pool(ctx: Context, conn: Any, pool: Any) -> bool:
    now = clock.now()
    pool_nodes = conn.execute(select(nodes).where(nodes.c.pool_seq == pool.seq)).all()
    staying = [n for n in pool_nodes if n.state != "leavingpool"]
    leaving = [n for n in pool_nodes if n.state == "leavingpool"]
    if pool.allocation_state == "stopping":
        _set_steady(conn, pool, errors=pool.resize_errors)
        return True
    changed = False
    short_of_spot = False
    for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low_priority)):
        group = [n for n in staying if bool(n.is_dedicated) == dedicated]
        if len(group) < target:
            added = _add_nodes(conn, pool, dedicated, target - len(group), ctx.spot_capacity)
            changed |= added > 0
            short_of_spot |= len(group) + added < target
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
            _set_steady(conn, pool, errors=[{
                "code": "AllocationFailed",
                "message": "Spot capacity is short: the pool keeps seeking its low-priority target."}]
                if short_of_spot else None)
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
