"""Placement: a pool snapshot in, a list of (task → node) placements out.

Rules (semantics §3):
- tasks are taken in the snapshot's order (job priority, then age); a task that does not fit
  anywhere now does not block smaller tasks behind it (backfill);
- a node never gets more slots than it has;
- `spread` gives each task to the node with the most free slots; `pack` to the node with the
  fewest free slots that still fits it, so one node fills before the next gets work; among
  equals, the node listed first in the snapshot wins;
- a job never runs more than its maxParallelTasks at once.

Cost: O(log n) per task for n nodes. Free nodes sit in buckets by free-slot count (a node has at
most taskSlotsPerNode ≤ 256 slots), each bucket a heap of snapshot positions so the first-listed
node of a bucket is at its top; a bit mask of non-empty buckets finds the fullest or the
tightest fitting bucket without walking them. A task bigger than every free node costs O(1).
"""

from __future__ import annotations

import heapq

from shoal.scheduler.snapshot import NodeView, Placement, PoolSnapshot


class FreeNodes:
    """Nodes with free slots, bucketed by how many, ordered within a bucket by snapshot order."""

    def __init__(self, nodes: tuple[NodeView, ...]) -> None:
        self._ids = [node.node_id for node in nodes]
        self._free = [node.free_slots for node in nodes]
        top = max(self._free, default=0)
        self._buckets: list[list[int]] = [[] for _ in range(max(top, 0) + 1)]
        # Bit f is set while bucket f holds a node.
        self._mask = 0
        for position, free in enumerate(self._free):
            if free > 0:
                # Positions arrive in increasing order, so each bucket list is already a heap.
                self._buckets[free].append(position)
                self._mask |= 1 << free
        # How many nodes the searches looked at (one per placement: the search itself walks no
        # nodes), so tests can check the cost from the structure instead of a clock.
        self.examined = 0

    def __bool__(self) -> bool:
        return self._mask != 0

    def largest(self) -> int:
        """The most free slots any node has (0 when none is free)."""
        return max(self._mask.bit_length() - 1, 0)

    def take(self, slots: int, pack: bool) -> str | None:
        """Give `slots` slots to the node the fill type picks, or None if no node has them."""
        if slots < 1:
            slots = 1
        fitting = self._mask >> slots << slots  # buckets that can hold the task
        if not fitting:
            return None
        bucket = (fitting & -fitting).bit_length() - 1 if pack else fitting.bit_length() - 1
        heap = self._buckets[bucket]
        position = heapq.heappop(heap)
        self.examined += 1
        if not heap:
            self._mask &= ~(1 << bucket)
        left = bucket - slots
        self._free[position] = left
        if left > 0:
            heapq.heappush(self._buckets[left], position)
            self._mask |= 1 << left
        return self._ids[position]


def plan(snapshot: PoolSnapshot) -> list[Placement]:
    return place(snapshot, FreeNodes(snapshot.nodes))


def place(snapshot: PoolSnapshot, free: FreeNodes) -> list[Placement]:
    """The plan, drawing on `free` (built from the snapshot's nodes); it is left as it ends."""
    allowance = {job.job_seq: job.parallel_allowance for job in snapshot.jobs}
    pack = snapshot.fill_type == "pack"
    placements: list[Placement] = []
    for task in snapshot.tasks:
        if not free:
            break
        remaining = allowance.get(task.job_seq)
        if remaining is not None and remaining <= 0:
            continue
        chosen = free.take(task.required_slots, pack)
        if chosen is None:
            continue
        placements.append(Placement(task.task_seq, chosen))
        if remaining is not None:
            allowance[task.job_seq] = remaining - 1
    return placements
