"""Pure placement: a snapshot of free slots and ready tasks in, a plan out."""

from shoal.scheduler.backlog import gather
from shoal.scheduler.plan import plan
from shoal.scheduler.removal import removal_rank
from shoal.scheduler.snapshot import JobView, NodeView, Placement, PoolSnapshot, TaskView

__all__ = ["gather", "plan", "removal_rank", "JobView", "NodeView", "Placement", "PoolSnapshot", "TaskView"]
