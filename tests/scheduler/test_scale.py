"""Placement at 10,000 nodes: right results, and a cost that grows with placements, not nodes × tasks.

The cost is read from the structure (how many nodes the searches looked at), never from a clock;
the wall-clock figures are in bench/placement.py.
"""

from __future__ import annotations

from collections import Counter

from shoal.scheduler import NodeView, PoolSnapshot, TaskView
from shoal.scheduler.plan import FreeNodes, place

NODES = 10_000
SLOTS = 4


def _empty_pool(fill: str, tasks: list[TaskView], used=lambda index: 0) -> PoolSnapshot:
    return PoolSnapshot(fill, tuple(NodeView(f"n{i}", SLOTS, used(i)) for i in range(NODES)), tuple(tasks), ())


def test_spread_fills_ten_thousand_nodes_round_robin_looking_at_one_node_per_task():
    snapshot = _empty_pool("spread", [TaskView(seq, 1, 1) for seq in range(NODES * SLOTS)])
    free = FreeNodes(snapshot.nodes)
    placements = place(snapshot, free)
    assert len(placements) == NODES * SLOTS
    # Every round gives each node one task, in listing order.
    assert [p.node_id for p in placements] == [f"n{i % NODES}" for i in range(NODES * SLOTS)]
    # The quadratic scheduler looked at every free node for every task (~8·10⁸ here).
    assert free.examined == len(placements)
    assert not free


def test_pack_fills_ten_thousand_nodes_one_after_another():
    snapshot = _empty_pool("pack", [TaskView(seq, 1, 1) for seq in range(NODES * SLOTS)])
    free = FreeNodes(snapshot.nodes)
    placements = place(snapshot, free)
    assert [p.node_id for p in placements] == [f"n{i // SLOTS}" for i in range(NODES * SLOTS)]
    assert free.examined == len(placements)


def test_mixed_sizes_on_a_busy_pool_never_overfill_and_leave_no_fitting_task_behind():
    used = lambda index: index % (SLOTS + 1)  # noqa: E731 - 0..4 slots busy, some nodes full
    sizes = [1 + seq % SLOTS for seq in range(NODES * SLOTS)]
    snapshot = _empty_pool("spread", [TaskView(seq, 1, size) for seq, size in enumerate(sizes)], used)
    free = FreeNodes(snapshot.nodes)
    placements = place(snapshot, free)
    taken = Counter()
    for p in placements:
        taken[p.node_id] += sizes[p.task_seq]
    for node in snapshot.nodes:
        assert node.used_slots + taken[node.node_id] <= node.total_slots
    # A task left out must have had no node big enough when its turn came, and free slots only
    # shrink, so none is left now either.
    placed = {p.task_seq for p in placements}
    smallest_left_out = min(size for seq, size in enumerate(sizes) if seq not in placed)
    assert free.largest() < smallest_left_out
    assert free.examined == len(placements)

