"""The immutable view the scheduler plans from: plain data, no store, no clock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    node_id: str
    total_slots: int
    used_slots: int

    @property
    def free_slots(self) -> int:
        return self.total_slots - self.used_slots


@dataclass(frozen=True)
class TaskView:
    task_seq: int
    job_seq: int
    required_slots: int


@dataclass(frozen=True)
class JobView:
    job_seq: int
    # How many more of its tasks may run now (maxParallelTasks minus running); None = no limit.
    parallel_allowance: int | None


@dataclass(frozen=True)
class PoolSnapshot:
    fill_type: str  # "spread" | "pack"
    nodes: tuple[NodeView, ...]
    # Ready tasks across all jobs of the pool, highest job priority first, then job age, then
    # task insertion order.
    tasks: tuple[TaskView, ...]
    jobs: tuple[JobView, ...]


@dataclass(frozen=True)
class Placement:
    task_seq: int
    node_id: str
