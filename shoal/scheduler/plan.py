"""Placement: a pool snapshot in, a list of (task → node) placements out.

Rules (semantics §3):
- tasks are taken in the snapshot's order (job priority, then age); a task that does not fit
  anywhere now does not block smaller tasks behind it (backfill);
- a node never gets more slots than it has;
- `spread` gives each task to the node with the most free slots; `pack` to the node with the
  fewest free slots that still fits it, so one node fills before the next gets work;
- a job never runs more than its maxParallelTasks at once.
"""

from __future__ import annotations

from shoal.scheduler.snapshot import Placement, PoolSnapshot


def plan(snapshot: PoolSnapshot) -> list[Placement]:
    free = {node.node_id: node.free_slots for node in snapshot.nodes if node.free_slots > 0}
    # Node order breaks ties deterministically: the order the snapshot lists them.
    order = {node.node_id: index for index, node in enumerate(snapshot.nodes)}
    allowance = {job.job_seq: job.parallel_allowance for job in snapshot.jobs}
    pack = snapshot.fill_type == "pack"
    placements: list[Placement] = []
    for task in snapshot.tasks:
        if not free:
            break
        remaining = allowance.get(task.job_seq)
        if remaining is not None and remaining <= 0:
            continue
        candidates = [node_id for node_id, slots in free.items() if slots >= task.required_slots]
        if not candidates:
            continue
        if pack:
            chosen = min(candidates, key=lambda n: (free[n], order[n]))
        else:
            chosen = max(candidates, key=lambda n: (free[n], -order[n]))
        placements.append(Placement(task.task_seq, chosen))
        free[chosen] -= task.required_slots
        if free[chosen] == 0:
            del free[chosen]
        if remaining is not None:
            allowance[task.job_seq] = remaining - 1
    return placements
