"""Which ready tasks a pass needs to see: enough to place exactly what reading the whole backlog
would place, bounded by the free slots rather than by the backlog's size.

The backlog is read as per-job, per-`requiredSlots` queues (an index range each). Three facts
bound what is read:

- a pass places at most `cap(r) = Σ floor(free(node) / r)` tasks needing r slots, and the ones
  it places from a (job, r) queue are a prefix of that queue no longer than the job's parallel
  allowance (once an r-task finds no node, no later r-task will);
- so after `cap(r)` r-tasks that cannot be skipped for their job's allowance have been offered,
  no later task of r or more slots can be placed: either they all ran, leaving every node with
  fewer than r free, or one found no node with r free;
- sizes bigger than every free node are never read at all, so a job full of tasks that cannot
  fit costs one index probe, and the smaller tasks behind it still run;
- an exclusive or dedicated-only task (a job manager: one per job) can fail where an ordinary
  task would not, so it does not count against a cap and is read in addition to it;
- so can every task of a job barred from some nodes (its preparation task failed there): such a
  job's tasks are read up to the room but do not use it up for the jobs after it;
- multi-instance tasks (gangs) queue by instance count: a gang of k needs k nodes with room, so
  at most `floor(nodes with room / k)` of a (job, k) queue can be placed, that many are read, and
  counts above the nodes with room are never read. Gangs settle nothing for ordinary sizes (they
  are read on top of the caps), so a job full of waiting gangs costs a seek per instance count.

The scheduler stays pure: the store is reached through the two callables the shell passes in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from shoal.scheduler.snapshot import JobView, NodeView, TaskView

# (job, smallest, largest) → the distinct requiredSlots of the job's ready tasks in that range,
# ascending.
SizesOf = Callable[[int, int, int], Iterable[int]]
# (job, requiredSlots, limit) → up to `limit` of the job's ready tasks of that size, oldest first.
ReadyOf = Callable[[int, int, int], Sequence[TaskView]]
# (job, most) → the distinct instance counts (1..most) of the job's ready multi-instance tasks,
# ascending; (job, instances, limit) → up to `limit` of them of that count, oldest first.
GangSizesOf = Callable[[int, int], Iterable[int]]
GangReadyOf = Callable[[int, int, int], Sequence[TaskView]]


def capacity(nodes: Iterable[NodeView]) -> Callable[[int], int]:
    """cap(r): how many r-slot tasks the free slots could hold at most."""
    histogram = Counter(node.free_slots for node in nodes if node.free_slots > 0)
    return lambda slots: sum(count * (free // slots) for free, count in histogram.items())


def gather(nodes: Iterable[NodeView], jobs: Sequence[JobView], sizes_of: SizesOf,
           ready_of: ReadyOf, budget: int | None = None, gang_sizes_of: GangSizesOf | None = None,
           gang_ready_of: GangReadyOf | None = None) -> tuple[TaskView, ...]:
    """The ready tasks to plan from, in plan order. `jobs` come highest priority first.

    With a `budget`, only the plan's first `budget` placements need to come out right (a pass
    that commits that many and leaves the rest to the next): no size is read past it, since
    `budget` offered tasks of one size that are each placed or fit nowhere settle those placements.
    """
    nodes = tuple(nodes)
    whole = capacity(nodes)
    cap = whole if budget is None else (lambda slots: min(whole(slots), budget))
    largest_free = max((node.free_slots for node in nodes), default=0)
    with_room = sum(1 for node in nodes if node.free_slots > 0)
    gangs = gang_sizes_of is not None and gang_ready_of is not None
    # Sizes from `closed` up can no longer be placed by tasks of the jobs still to come.
    closed = largest_free + 1
    left: dict[int, int] = {}
    offered: list[TaskView] = []
    for job in jobs:
        if closed <= 1 and not gangs:
            break
        allowance = job.parallel_allowance
        if allowance is not None and allowance <= 0:
            continue
        sizes = [size for size in sizes_of(job.job_seq, 1, closed - 1) if 1 <= size < closed] if closed > 1 else []
        # A limited job with tasks of several sizes may spend its allowance on one size and skip
        # the rest, so its tasks do not count against the caps (they are still bounded by it).
        # A job barred from some nodes may place fewer than the room: it settles nothing either.
        counts = (allowance is None or len(sizes) == 1) and not job.barred
        job_tasks: list[TaskView] = []
        # Within a job the sizes interleave in age order, so what closes here only applies to the
        # jobs after this one.
        closes = closed
        for size in sizes:
            room = left[size] if size in left else cap(size)
            limit = room if allowance is None else min(room, allowance)
            # A particular task (a job manager's: one a job) may find no node where an ordinary
            # one would, so it settles nothing: it is read on top of the room, not using it up.
            wanted = limit
            got = ready_of(job.job_seq, size, wanted)
            particular = sum(task.particular for task in got)
            while len(got) == wanted and wanted - particular < limit:
                wanted = limit + particular  # more than before: fewer than `limit` were ordinary
                got = ready_of(job.job_seq, size, wanted)
                particular = sum(task.particular for task in got)
            job_tasks.extend(got)
            if counts:
                left[size] = room - (len(got) - particular)
                if left[size] <= 0:
                    closes = min(closes, size)
        closed = closes
        if gangs and with_room > 0:
            assert gang_sizes_of is not None and gang_ready_of is not None
            for instances in gang_sizes_of(job.job_seq, with_room):
                bounds = [with_room // instances] + [b for b in (allowance, budget) if b is not None]
                limit = min(bounds)
                job_tasks.extend(gang_ready_of(job.job_seq, instances, limit))
        job_tasks.sort(key=lambda task: task.task_seq)
        offered.extend(job_tasks)
    return tuple(offered)
