"""Placement: a pool snapshot in, a list of (task → node) placements out.

Rules (semantics §3):
- tasks are taken in the snapshot's order (job priority, then age); a task that does not fit
  anywhere now does not block smaller tasks behind it (backfill);
- a node never gets more slots than it has;
- `spread` gives each task to the node with the most free slots; `pack` to the node with the
  fewest free slots that still fits it, so one node fills before the next gets work; among
  equals, the node listed first in the snapshot wins;
- a job never runs more than its maxParallelTasks at once, nor a task on a node its job is
  barred from (its job preparation task failed there);
- an exclusive task (a job manager's runExclusive) goes only to a node with nothing running and
  takes it whole: nothing else joins it in the pass, and a node that runs one is not free
  (`NodeView.runs_exclusive`); a dedicated-only task (allowLowPriorityNode=false) goes only to a
  dedicated node.

Cost: O(log n) per task for n nodes. Free nodes sit in buckets by free-slot count (a node has at
most taskSlotsPerNode ≤ 256 slots), each bucket a heap of snapshot positions so the first-listed
node of a bucket is at its top; a bit mask of non-empty buckets finds the fullest or the
tightest fitting bucket without walking them. A task bigger than every free node costs O(1).
An exclusive or dedicated-only task draws on buckets of only the nodes it may take, built
once a pass when first needed (O(n), as the snapshot is); entries left behind in other buckets
by a node's change are dropped when they come up, so the rules keep O(log n) amortised.
A gang of k instances costs O(k log n) when placed and O(1) when fewer than k nodes have room
(a count of the nodes with a free slot answers that).
"""

from __future__ import annotations

import heapq

from shoal.scheduler.snapshot import NodeView, Placement, PoolSnapshot


class _Buckets:
    """Heaps of node positions by free-slot count and a bit mask of the non-empty ones. An entry
    is stale once its node's free count is no longer its bucket; a node's free count only falls
    during a pass, so each (node, count) is pushed once and a stale entry is simply dropped when
    it comes up."""

    def __init__(self, top: int) -> None:
        self.heaps: list[list[int]] = [[] for _ in range(top + 1)]
        # Bit f is set while heaps[f] holds an entry (possibly stale).
        self.mask = 0

    def push(self, free: int, position: int) -> None:
        heapq.heappush(self.heaps[free], position)
        self.mask |= 1 << free

    def pop(self, slots: int, pack: bool, free: list[int]) -> tuple[int, int] | None:
        """(bucket, position) of the node the fill type picks among those with `slots` free."""
        while True:
            fitting = self.mask >> slots << slots  # buckets that can hold the task
            if not fitting:
                return None
            bucket = (fitting & -fitting).bit_length() - 1 if pack else fitting.bit_length() - 1
            heap = self.heaps[bucket]
            position = heapq.heappop(heap)
            if not heap:
                self.mask &= ~(1 << bucket)
            if free[position] == bucket:
                return bucket, position

    def largest(self, free: list[int]) -> int:
        while self.mask:
            bucket = self.mask.bit_length() - 1
            heap = self.heaps[bucket]
            if free[heap[0]] == bucket:
                return bucket
            heapq.heappop(heap)
            if not heap:
                self.mask &= ~(1 << bucket)
        return 0


class FreeNodes:
    """Nodes with free slots, bucketed by how many, ordered within a bucket by snapshot order.

    Every free node is in `_all`. An exclusive or dedicated-only task draws on a side structure
    of only the nodes it may take (idle ones, dedicated ones, or both), built from the current
    free counts the first time a pass needs it: a pass without such tasks, or a pool of
    dedicated nodes only, costs what it did before these rules."""

    def __init__(self, nodes: tuple[NodeView, ...]) -> None:
        self._ids = [node.node_id for node in nodes]
        self._free = [node.free_slots for node in nodes]
        self._total = [node.total_slots if node.used_slots == 0 else -1 for node in nodes]  # -1: not idle
        self._dedicated = [node.dedicated for node in nodes]
        self._any_spot = not all(self._dedicated)
        self._top = max(max(self._free, default=0), 0)
        self._all = _Buckets(self._top)
        for position, free in enumerate(self._free):
            if free > 0:
                # Positions arrive in increasing order, so each bucket list is already a heap.
                self._all.heaps[free].append(position)
                self._all.mask |= 1 << free
        # (idle only, dedicated only) → side structure; the dedicated-only one is kept up to date.
        self._sides: dict[tuple[bool, bool], _Buckets] = {}
        self._dedicated_side: _Buckets | None = None  # the one a take must keep up to date
        # How many nodes have a free slot: a gang bigger than this is refused without a search.
        self._with_room = sum(1 for free in self._free if free > 0)
        # How many nodes the searches looked at (one per placement: the search itself walks no
        # nodes), so tests can check the cost from the structure instead of a clock.
        self.examined = 0

    def __bool__(self) -> bool:
        # Stale entries may keep a bit set: a pass then tries a task that finds no node.
        return self._all.mask != 0

    def largest(self) -> int:
        """The most free slots any node has (0 when none is free)."""
        return self._all.largest(self._free)

    def _side(self, idle: bool, dedicated: bool) -> _Buckets:
        key = (idle, dedicated)
        if key not in self._sides:
            side = _Buckets(self._top)
            for position, free in enumerate(self._free):
                if free > 0 and (not idle or free == self._total[position]) and (
                        not dedicated or self._dedicated[position]):
                    side.heaps[free].append(position)
                    side.mask |= 1 << free
            self._sides[key] = side
            if key == (False, True):
                self._dedicated_side = side
        return self._sides[key]

    def take(self, slots: int, pack: bool, *, exclusive: bool = False, dedicated_only: bool = False,
             barred: frozenset[str] = frozenset()) -> str | None:
        """Give `slots` slots to the node the fill type picks, or None if no node has them. An
        exclusive task takes an idle node whole; a dedicated-only one only a dedicated node; no
        task takes a node its job is `barred` from."""
        if slots < 1:
            slots = 1
        # On a pool without spot nodes every node is dedicated: the rule asks for nothing more.
        dedicated_only = dedicated_only and self._any_spot
        source = self._side(exclusive, dedicated_only) if exclusive or dedicated_only else self._all
        found = source.pop(slots, pack, self._free)
        # A barred node is set aside and put back: O(barred nodes) for the few jobs that have any.
        skipped = []
        while found is not None and self._ids[found[1]] in barred:
            skipped.append(found)
            found = source.pop(slots, pack, self._free)
        for bucket, position in skipped:
            source.push(bucket, position)
        if found is None:
            return None
        bucket, position = found
        self.examined += 1
        self._settle(position, 0 if exclusive else bucket - slots)
        return self._ids[position]

    def _settle(self, position: int, left: int) -> None:
        """A node that was taken from now has `left` free slots."""
        self._free[position] = left
        if left > 0:
            self._all.push(left, position)
            if self._dedicated_side is not None and self._dedicated[position]:
                self._dedicated_side.push(left, position)
        else:
            self._with_room -= 1

    def take_gang(self, instances: int, slots: int, pack: bool,
                  barred: frozenset[str] = frozenset()) -> list[str] | None:
        """`slots` slots on each of `instances` distinct nodes, all or none: None leaves every node
        as it was. The nodes come in the fill type's order (the first is the primary's)."""
        slots = max(slots, 1)
        if instances < 1 or instances > self._with_room:
            return None
        found: list[tuple[int, int]] = []
        skipped: list[tuple[int, int]] = []
        while len(found) < instances:
            entry = self._all.pop(slots, pack, self._free)
            if entry is None:
                break
            (skipped if self._ids[entry[1]] in barred else found).append(entry)
        for bucket, position in skipped:
            self._all.push(bucket, position)
        if len(found) < instances:
            for bucket, position in found:
                self._all.push(bucket, position)
            return None
        self.examined += len(found)
        for bucket, position in found:
            self._settle(position, bucket - slots)
        return [self._ids[position] for _bucket, position in found]


_NONE: frozenset[str] = frozenset()


def plan(snapshot: PoolSnapshot) -> list[Placement]:
    return place(snapshot, FreeNodes(snapshot.nodes))


def place(snapshot: PoolSnapshot, free: FreeNodes) -> list[Placement]:
    """The plan, drawing on `free` (built from the snapshot's nodes); it is left as it ends."""
    allowance = {job.job_seq: job.parallel_allowance for job in snapshot.jobs}
    barred = {job.job_seq: job.barred for job in snapshot.jobs if job.barred}
    pack = snapshot.fill_type == "pack"
    placements: list[Placement] = []
    for task in snapshot.tasks:
        if not free:
            break
        remaining = allowance.get(task.job_seq)
        if remaining is not None and remaining <= 0:
            continue
        if task.instances > 0:
            gang = free.take_gang(task.instances, task.required_slots, pack, barred.get(task.job_seq, _NONE))
            if gang is None:
                continue
            placements.append(Placement(task.task_seq, gang[0], tuple(gang[1:])))
            if remaining is not None:
                allowance[task.job_seq] = remaining - 1
            continue
        chosen = free.take(task.required_slots, pack, exclusive=task.exclusive, dedicated_only=task.dedicated_only,
                           barred=barred.get(task.job_seq, _NONE))
        if chosen is None:
            continue
        placements.append(Placement(task.task_seq, chosen))
        if remaining is not None:
            allowance[task.job_seq] = remaining - 1
    return placements
