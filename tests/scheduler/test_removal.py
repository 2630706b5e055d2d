"""Which nodes a shrinking pool loses first: one ranking, for the service and the simulator."""

from __future__ import annotations

from shoal.autoscale import simulate
from shoal.scheduler import removal_rank
from shoal.scheduler.removal import REMOVAL_ORDER


def test_broken_and_unstarted_nodes_go_before_working_ones_and_the_least_busy_first() -> None:
    nodes = [("running", 3), ("idle", 0), ("running", 1), ("starting", 0), ("unusable", 0), ("preempted", 0),
             ("starttaskfailed", 0), ("offline", 0)]
    ranked = sorted(nodes, key=lambda n: removal_rank(*n))
    assert ranked == [("preempted", 0), ("unusable", 0), ("starttaskfailed", 0), ("starting", 0), ("offline", 0),
                      ("idle", 0), ("running", 1), ("running", 3)]
    assert removal_rank("some-new-state", 0) > removal_rank("running", 256)


def test_the_simulator_ranks_its_nodes_as_the_service_ranks_the_batch_states_they_stand_for() -> None:
    def node(state: str, used: int) -> simulate._Node:
        return simulate._Node("n", True, state=state, used_slots=used)

    pairs = [(node(simulate.PREEMPTED, 0), "preempted"), (node(simulate.STARTING, 0), "starting"),
             (node(simulate.READY, 0), "idle"), (node(simulate.READY, 2), "running")]
    for simulated, batch_state in pairs:
        assert batch_state in REMOVAL_ORDER
        assert simulate._removal_rank(simulated) == removal_rank(batch_state, simulated.used_slots)
