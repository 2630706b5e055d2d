"""Bringing a pool's node records to its targets; ending resizes; finishing pool deletion.

This decides *which* nodes a pool should have. Providers only turn node records into running
agents and report what they lose (ARCHITECTURE.md: providers only provision).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from shoal import clock
from shoal.model.states import AllocationState, NodeState, PoolState
from shoal.scheduler import removal_rank
from shoal.service import ids, node_copies, preemption, quotas, removal, transitions, usage
from shoal.service.context import Context
from shoal.store.schema import nodes, pool_node_counts, pools

# A deleted pool stays visible as `deleting` at least this long, even with no nodes to remove: on
# Azure an empty pool still answers `deleting` a second after DELETE and is gone within five
# (recorded: test_batch_update_pools and ..._osdiskdiskencryption [sync], 2026). Clients poll for
# that state, and a pool added again with its id meanwhile gets PoolBeingDeleted.
DELETING_POOL_MIN_S = 2.0

# Node records created per pool and pass: a large resize proceeds over several passes, each a
# short transaction, rather than one that holds the store (and the loop running it) for long.
NODES_PER_PASS = 1000


def reconcile(ctx: Context) -> bool:
    """One pass over pools that are resizing, stopping or deleting. Returns True if it changed
    anything (the caller wakes the provider and the scheduler)."""
    changed = False
    with ctx.engine.begin() as conn:
        rows = conn.execute(select(pools).where(
            pools.c.account == ctx.account,
            pools.c.allocation_state.in_((AllocationState.RESIZING, AllocationState.STOPPING)))).all()
        for pool in rows:
            changed |= _reconcile_pool(ctx, conn, pool)
        # Pools seek their spot target continuously: a steady pool short of spot nodes (scarce
        # capacity, or nodes preempted and gone) takes capacity as soon as there is some.
        for pool in conn.execute(select(pools).where(
                pools.c.account == ctx.account, pools.c.state == PoolState.ACTIVE,
                pools.c.allocation_state == AllocationState.STEADY,
                pools.c.target_low_priority > 0)).all():
            spot_staying = _node_counts(conn, pool.seq)[0][False]
            changed |= _add_nodes(ctx, conn, pool, False, pool.target_low_priority - spot_staying).added > 0
    return changed


@dataclass(frozen=True)
class _Growth:
    added: int
    # Why the pool cannot reach its target (a resize error), or None if it can, now or in later passes.
    error: dict[str, str] | None


def _add_nodes(ctx: Context, conn: Any, pool: Any, dedicated: bool, wanted: int) -> _Growth:
    """Create up to `wanted` node records, as far as the account's core quota, the machine's
    capacity (spot: its spot capacity) allow, and at most NODES_PER_PASS in this pass."""
    if wanted <= 0:
        return _Growth(0, None)
    room = quotas.room_for(ctx, conn, pool, dedicated, wanted)
    possible = room.nodes if dedicated else preemption.spot_room(conn, ctx.spot_capacity, room.nodes)
    count = min(possible, NODES_PER_PASS)
    if room.limited_by == "quota":
        error: dict[str, str] | None = quotas.quota_error(dedicated)
    elif room.limited_by == "capacity":
        error = quotas.capacity_error()
    elif possible < wanted:
        error = {"code": "AllocationFailed",
                 "message": "Spot capacity is short: the pool keeps seeking its low-priority target."}
    else:
        error = None
    if count > 0:
        now = clock.now()
        rows = [dict(
            id=ids.node_id(dedicated), pool_seq=pool.seq, state=NodeState.CREATING,
            scheduling_state="enabled", is_dedicated=dedicated, token=ids.token(),
            slots=pool.slots_per_node, allocation_time=now, state_transition_time=now,
            run_start_task=False, total_tasks_run=0, total_tasks_succeeded=0,
            etag=clock.new_etag()) for _ in range(count)]
        conn.execute(insert(nodes), rows)
        usage.open_spans(conn, [row["id"] for row in rows], now)
    return _Growth(count, error)


def _node_counts(conn: Any, pool_seq: int) -> tuple[dict[bool, int], int]:
    """(nodes staying in the pool, dedicated and spot; nodes leaving it), from the counters kept
    with every node state change (pool_node_counts), not from the node records."""
    staying = {True: 0, False: 0}
    leaving = 0
    for row in conn.execute(select(pool_node_counts.c.is_dedicated, pool_node_counts.c.state,
                                   pool_node_counts.c.count.label("n"))
                            .where(pool_node_counts.c.pool_seq == pool_seq)):
        if row.state == NodeState.LEAVING_POOL:
            leaving += int(row.n)
        else:
            staying[bool(row.is_dedicated)] += int(row.n)
    return staying, leaving


def _reconcile_pool(ctx: Context, conn: Any, pool: Any) -> bool:
    now = clock.now()
    staying, leaving = _node_counts(conn, pool.seq)
    if pool.allocation_state == AllocationState.STOPPING:
        _set_steady(conn, pool, errors=pool.resize_errors)
        return True
    changed = False
    errors: list[dict[str, str]] = []
    still_growing = False
    for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low_priority)):
        have = staying[dedicated]
        if have < target:
            growth = _add_nodes(ctx, conn, pool, dedicated, target - have)
            changed |= growth.added > 0
            if growth.error is not None:
                errors.append(growth.error)
            elif have + growth.added < target:
                still_growing = True
        elif have > target:
            # Only a shrink reads node records: it must choose which nodes go.
            group = conn.execute(select(nodes).where(nodes.c.pool_seq == pool.seq,
                                                     nodes.c.is_dedicated.is_(dedicated),
                                                     nodes.c.state != NodeState.LEAVING_POOL)).all()
            surplus = _pick_surplus(conn, group, len(group) - target)
            removal.mark_leaving(ctx, conn, surplus, pool.deallocation_option or "requeue")
            leaving += len(surplus)
            changed = True
    # Nodes count towards the pool once allocated (as in Batch, `creating` nodes are current), so a
    # grow is done in the pass that adds its last nodes; nodes still leaving, or still to be added
    # in later passes, keep the pool resizing. A deleting pool has targets of zero, so no leaving
    # nodes there means no nodes at all.
    if not leaving and not still_growing:
        if pool.state != PoolState.DELETING:
            _set_steady(conn, pool, errors=errors or None)
            return True
        deleted_at = clock.as_utc(pool.state_transition_time)
        if deleted_at is not None and now < deleted_at + timedelta(seconds=DELETING_POOL_MIN_S):
            return changed
        gone = list(conn.execute(select(nodes.c.id).where(nodes.c.pool_seq == pool.seq)).scalars())
        conn.execute(delete(nodes).where(nodes.c.pool_seq == pool.seq))
        usage.close_spans(conn, gone)
        node_copies.gone(conn, gone)
        transitions.forget_attempts(conn, gone)
        conn.execute(delete(pools).where(pools.c.seq == pool.seq))
        return True
    deadline = clock.as_utc(pool.resize_deadline)
    if deadline is not None and now > deadline and pool.state != PoolState.DELETING:
        _set_steady(conn, pool, errors=[*errors, {"code": "AllocationTimedout",
                                                  "message": "Desired number of nodes could not be allocated "
                                                             "within the resize timeout."}])
        return True
    return changed


def _pick_surplus(conn: Any, group: list[Any], count: int) -> list[Any]:
    busy = transitions.running_slots(conn, [n.id for n in group])
    ranked = sorted(group, key=lambda n: removal_rank(n.state, busy.get(n.id, 0)))
    return ranked[:count]


def _set_steady(conn: Any, pool: Any, *, errors: list[dict[str, str]] | None) -> None:
    now = clock.now()
    conn.execute(update(pools).where(pools.c.seq == pool.seq).values(
        allocation_state=AllocationState.STEADY, allocation_state_transition_time=now, resize_errors=errors,
        resize_deadline=None, etag=clock.new_etag(), last_modified=now))
