"""Straightforward reference placement and backlog, to check the fast ones against.

`reference_plan` looks at every free node for every task (the scheduler before buckets), which is
obviously right and quadratic; it keeps the job manager's rules (an exclusive task takes an idle
node whole, a dedicated-only one a dedicated node) the same plain way. `Backlog` holds every ready task in memory and answers the
scheduler's two backlog questions by scanning, as the store's index seeks do.
"""

from __future__ import annotations

from shoal.scheduler import JobView, Placement, PoolSnapshot, TaskView


def reference_plan(snapshot: PoolSnapshot) -> list[Placement]:
    free = {node.node_id: node.free_slots for node in snapshot.nodes if node.free_slots > 0}
    order = {node.node_id: index for index, node in enumerate(snapshot.nodes)}
    idle = {node.node_id for node in snapshot.nodes if node.used_slots == 0}
    dedicated = {node.node_id for node in snapshot.nodes if node.dedicated}
    allowance = {job.job_seq: job.parallel_allowance for job in snapshot.jobs}
    placements: list[Placement] = []
    for task in snapshot.tasks:
        remaining = allowance.get(task.job_seq)
        if remaining is not None and remaining <= 0:
            continue
        candidates = [node_id for node_id, slots in free.items() if slots >= task.required_slots
                      and (not task.exclusive or node_id in idle)
                      and (not task.dedicated_only or node_id in dedicated)]
        if not candidates:
            continue
        if snapshot.fill_type == "pack":
            chosen = min(candidates, key=lambda n: (free[n], order[n]))
        else:
            chosen = max(candidates, key=lambda n: (free[n], -order[n]))
        placements.append(Placement(task.task_seq, chosen))
        free[chosen] = 0 if task.exclusive else free[chosen] - task.required_slots
        idle.discard(chosen)
        if free[chosen] == 0:
            del free[chosen]
        if remaining is not None:
            allowance[task.job_seq] = remaining - 1
    return placements


class Backlog:
    """Every ready task, per job in insertion order; counts what the scheduler reads."""

    def __init__(self, tasks: list[TaskView]) -> None:
        self.tasks = sorted(tasks, key=lambda t: t.task_seq)
        self.read = 0
        self.probes = 0

    def in_plan_order(self, jobs: list[JobView]) -> tuple[TaskView, ...]:
        rank = {job.job_seq: index for index, job in enumerate(jobs)}
        return tuple(sorted((t for t in self.tasks if t.job_seq in rank),
                            key=lambda t: (rank[t.job_seq], t.task_seq)))

    def sizes_of(self, job_seq: int, low: int, high: int) -> list[int]:
        self.probes += 1
        return sorted({t.required_slots for t in self.tasks if t.job_seq == job_seq and low <= t.required_slots <= high})

    def ready_of(self, job_seq: int, size: int, limit: int) -> list[TaskView]:
        self.probes += 1
        found = [t for t in self.tasks if t.job_seq == job_seq and t.required_slots == size][:limit]
        self.read += len(found)
        return found
