"""Which nodes go first when a pool shrinks: a pure ranking by node state, then by busy slots.

The control plane (`service/allocation.py`) and the what-if simulator (`autoscale/simulate.py`)
both rank surplus nodes with `removal_rank`, so a simulation removes the nodes the server would.
"""

from __future__ import annotations

from shoal.model.states import NodeState

# Broken and unstarted nodes first (they cost a pool nothing to lose), then the least busy.
REMOVAL_ORDER: dict[str, int] = {
    NodeState.PREEMPTED: -1, NodeState.UNUSABLE: 0, NodeState.START_TASK_FAILED: 1, NodeState.CREATING: 2,
    NodeState.STARTING: 3, NodeState.WAITING_FOR_START_TASK: 4, NodeState.OFFLINE: 5, NodeState.IDLE: 6,
    NodeState.RUNNING: 7}
# A state not listed (none today) goes last: removing it first could take a node at work.
UNLISTED_STATE_RANK = 9


def removal_rank(state: str, busy_slots: int) -> tuple[int, int]:
    """Sort key of a node among a pool's surplus: lowest goes first."""
    return (REMOVAL_ORDER.get(state, UNLISTED_STATE_RANK), busy_slots)
