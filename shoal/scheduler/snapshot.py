"""The immutable view the scheduler plans from: plain data, no store, no clock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    node_id: str
    total_slots: int
    used_slots: int
    dedicated: bool = True
    # It runs a task that wants its node to itself (a job manager's runExclusive): it takes no
    # other task, whatever its slots say.
    runs_exclusive: bool = False

    @property
    def free_slots(self) -> int:
        return 0 if self.runs_exclusive else self.total_slots - self.used_slots


@dataclass(frozen=True)
class TaskView:
    task_seq: int
    job_seq: int
    required_slots: int
    # Runs only on a node with nothing running, and nothing else joins it while it runs.
    exclusive: bool = False
    # Runs only on a dedicated node (a job manager's allowLowPriorityNode=false).
    dedicated_only: bool = False
    # A multi-instance task's numberOfInstances (0: an ordinary task): it needs that many distinct
    # nodes at once, `required_slots` on each, or it waits without holding any (semantics §3.5).
    instances: int = 0

    @property
    def particular(self) -> bool:
        """Whether it may find no node where an ordinary task of its size would."""
        return self.exclusive or self.dedicated_only


@dataclass(frozen=True)
class JobView:
    job_seq: int
    # How many more of its tasks may run now (maxParallelTasks minus running); None = no limit.
    parallel_allowance: int | None
    # Nodes that take none of its tasks (its job preparation task failed there, waitForSuccess).
    barred: frozenset[str] = frozenset()


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
    node_id: str  # a multi-instance task's primary (instance 0)
    # The nodes of a multi-instance task's other instances, instance 1 first.
    subtask_nodes: tuple[str, ...] = ()
