"""Placement: a pool snapshot in, a list of (task → node) placements out.

Rules (semantics §3):
- tasks are taken in the snapshot's order (job priority, then age); a task that does not fit
  anywhere now does not block smaller tasks behind it (backfill);
- a node never gets more slots than it has;
- `spread` gives each task to the node with the most free slots; `pack` to the node with the
  fewest free slots that still fits it, so one node fills before the next gets work; among
  equals, the node listed first in the snapshot wins;
- a job never runs more than its maxParallelTasks at once;
- an exclusive task (a job manager's runExclusive) goes only to a node with nothing running and
  takes it whole: nothing else joins it in the pass, and a node that runs one is not free
  (`NodeView.runs_exclusive`); a dedicated-only task (allowLowPriorityNode=false) goes only to a
  dedicated node.

Cost: O(log n) per task for n nodes. Free nodes sit in buckets by free-slot count (a node has at
most taskSlotsPerNode ≤ 256 slots), each bucket a heap of snapshot positions so the first-listed
node of a bucket is at its top; a bit mask of non-empty buckets finds the fullest or the
tightest fitting bucket without walking them. A task bigger than every free node costs O(1).
Idle nodes have buckets of their own and dedicated and spot nodes are kept apart (four sets of
buckets), so the exclusive and dedicated-only rules cost no more.
"""

from __future__ import annotations

import heapq

from shoal.scheduler.snapshot import NodeView, Placement, PoolSnapshot

# A free node is partly used or idle (nothing running: free == total), and idle nodes sit in
# buckets of their own, so an exclusive task finds one as fast as any task finds a node.
_USED, _IDLE = 0, 1


class _Kind:
    """The free nodes of one kind (dedicated or spot): per state, buckets by free-slot count."""

    def __init__(self, top: int) -> None:
        self.buckets: tuple[list[list[int]], list[list[int]]] = (
            [[] for _ in range(top + 1)], [[] for _ in range(top + 1)])
        # Bit f of masks[state] is set while buckets[state][f] holds a node.
        self.masks = [0, 0]

    def add(self, state: int, free: int, position: int) -> None:
        heapq.heappush(self.buckets[state][free], position)
        self.masks[state] |= 1 << free

    def best(self, slots: int, pack: bool, idle_only: bool) -> tuple[int, int, int] | None:
        """(bucket, position, state) of the node the fill type picks among those with `slots` free."""
        mask = self.masks[_IDLE] if idle_only else self.masks[_USED] | self.masks[_IDLE]
        fitting = mask >> slots << slots  # buckets that can hold the task
        if not fitting:
            return None
        bucket = (fitting & -fitting).bit_length() - 1 if pack else fitting.bit_length() - 1
        states = (_IDLE,) if idle_only else (_USED, _IDLE)
        # The bucket's first-listed node, partly used or idle.
        position, state = min((self.buckets[state][bucket][0], state) for state in states
                              if self.buckets[state][bucket])
        return bucket, position, state

    def pop(self, bucket: int, state: int) -> int:
        heap = self.buckets[state][bucket]
        position = heapq.heappop(heap)
        if not heap:
            self.masks[state] &= ~(1 << bucket)
        return position


class FreeNodes:
    """Nodes with free slots, bucketed by how many, ordered within a bucket by snapshot order;
    dedicated and spot nodes apart, so a dedicated-only task looks at dedicated ones alone."""

    def __init__(self, nodes: tuple[NodeView, ...]) -> None:
        self._ids = [node.node_id for node in nodes]
        top = max((node.free_slots for node in nodes), default=0)
        self._kinds = (_Kind(max(top, 0)), _Kind(max(top, 0)))  # dedicated, spot
        for position, node in enumerate(nodes):
            free = node.free_slots
            if free > 0:
                state = _IDLE if node.used_slots == 0 else _USED
                self._kinds[0 if node.dedicated else 1].add(state, free, position)
        # How many nodes the searches looked at (one per placement: the search itself walks no
        # nodes), so tests can check the cost from the structure instead of a clock.
        self.examined = 0

    def __bool__(self) -> bool:
        return any(kind.masks[_USED] | kind.masks[_IDLE] for kind in self._kinds)

    def largest(self) -> int:
        """The most free slots any node has (0 when none is free)."""
        return max(max((kind.masks[_USED] | kind.masks[_IDLE]).bit_length() - 1, 0) for kind in self._kinds)

    def take(self, slots: int, pack: bool, *, exclusive: bool = False, dedicated_only: bool = False) -> str | None:
        """Give `slots` slots to the node the fill type picks, or None if no node has them. An
        exclusive task takes an idle node whole; a dedicated-only one only a dedicated node."""
        if slots < 1:
            slots = 1
        kinds = self._kinds[:1] if dedicated_only else self._kinds
        found = [(kind, best) for kind in kinds if (best := kind.best(slots, pack, exclusive)) is not None]
        if not found:
            return None
        # Spread: the most free slots; pack: the fewest that fit; then the node listed first.
        kind, (bucket, _, state) = min(found, key=lambda pair: (pair[1][0] if pack else -pair[1][0], pair[1][1]))
        position = kind.pop(bucket, state)
        self.examined += 1
        left = 0 if exclusive else bucket - slots
        if left > 0:
            kind.add(_USED, left, position)
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
        chosen = free.take(task.required_slots, pack, exclusive=task.exclusive, dedicated_only=task.dedicated_only)
        if chosen is None:
            continue
        placements.append(Placement(task.task_seq, chosen))
        if remaining is not None:
            allowance[task.job_seq] = remaining - 1
    return placements
