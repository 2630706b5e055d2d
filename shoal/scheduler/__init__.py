"""Pure placement: a snapshot of free slots and ready tasks in, a plan out."""

from shoal.scheduler.backlog import gather
from shoal.scheduler.plan import plan
from shoal.scheduler.snapshot import JobView, NodeView, Placement, PoolSnapshot, TaskView

__all__ = ["gather", "plan", "JobView", "NodeView", "Placement", "PoolSnapshot", "TaskView"]
