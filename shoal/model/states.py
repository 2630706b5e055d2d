"""The state names of the Batch model, as stored and as sent on the wire (Batch spells them in
lower case). One definition each, so a typo is a NameError, not a state nothing ever reaches;
being `StrEnum`s they compare equal to the strings the store and the clients hold."""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    IDLE = "idle"
    RUNNING = "running"
    OFFLINE = "offline"
    REBOOTING = "rebooting"
    REIMAGING = "reimaging"
    LEAVING_POOL = "leavingpool"
    PREEMPTED = "preempted"
    UNUSABLE = "unusable"
    # api-version 2025-06-01: a node stopped with its disk kept (ComputeNode_Deallocate / _Start).
    DEALLOCATING = "deallocating"
    DEALLOCATED = "deallocated"


# A node whose agent calls: the ones a silent agent makes `unusable`.
LIVE_NODE_STATES = (NodeState.STARTING, NodeState.WAITING_FOR_START_TASK, NodeState.IDLE, NodeState.RUNNING,
                    NodeState.START_TASK_FAILED, NodeState.OFFLINE, NodeState.REBOOTING, NodeState.REIMAGING)
# A node a provider acts on whatever its agent does: to bring up, take down, stop or forget.
PROVISIONING_NODE_STATES = (NodeState.CREATING, NodeState.PREEMPTED, NodeState.LEAVING_POOL,
                            NodeState.DEALLOCATING, NodeState.DEALLOCATED)
# A node the scheduler may give tasks to (with a free slot, scheduling enabled, no restart waiting).
SCHEDULABLE_NODE_STATES = (NodeState.IDLE, NodeState.RUNNING)


class TaskState(StrEnum):
    ACTIVE = "active"
    RUNNING = "running"
    COMPLETED = "completed"


class JobState(StrEnum):
    ACTIVE = "active"
    DISABLING = "disabling"
    DISABLED = "disabled"
    ENABLING = "enabling"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


class PoolState(StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"


class AllocationState(StrEnum):
    STEADY = "steady"
    RESIZING = "resizing"
    STOPPING = "stopping"


class SchedulingState(StrEnum):
    """A node's: whether the scheduler may give it tasks."""

    ENABLED = "enabled"
    DISABLED = "disabled"


class StartTaskState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
