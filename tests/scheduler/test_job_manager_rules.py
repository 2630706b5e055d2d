"""The job manager's placement rules in the pure scheduler, from plain data (semantics §3.3):
runExclusive (nothing else on its node while it runs) and allowLowPriorityNode=false (dedicated
nodes only)."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan
from shoal.scheduler.plan import FreeNodes, place


def snapshot(fill: str, nodes: list[NodeView], tasks: list[TaskView]) -> PoolSnapshot:
    return PoolSnapshot(fill, tuple(nodes), tuple(tasks), tuple(JobView(j, None) for j in {t.job_seq for t in tasks}))


def placed(snap: PoolSnapshot) -> dict[int, str]:
    return {p.task_seq: p.node_id for p in plan(snap)}


@pytest.mark.parametrize("fill", ["spread", "pack"])
def test_an_exclusive_task_takes_an_idle_node_whole(fill: str) -> None:
    nodes = [NodeView("a", 2, 0), NodeView("b", 2, 0)]
    tasks = [TaskView(1, 1, 1, exclusive=True)] + [TaskView(seq, 1, 1) for seq in range(2, 6)]
    where = placed(snapshot(fill, nodes, tasks))
    assert where[1] == "a"
    # Node a holds the manager alone; b's two slots take two of the others, two wait.
    assert Counter(where.values()) == {"a": 1, "b": 2}


def test_an_exclusive_task_never_joins_a_busy_node() -> None:
    nodes = [NodeView("a", 4, 1), NodeView("b", 4, 3)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1, exclusive=True)])) == {}


def test_an_exclusive_task_skips_busy_nodes_for_an_idle_one_listed_later() -> None:
    nodes = [NodeView("a", 4, 1), NodeView("b", 4, 0)]
    assert placed(snapshot("pack", nodes, [TaskView(1, 1, 1, exclusive=True), TaskView(2, 1, 1)])) == {1: "b", 2: "a"}


def test_a_node_running_an_exclusive_task_takes_nothing_else() -> None:
    nodes = [NodeView("a", 2, 1, runs_exclusive=True), NodeView("b", 2, 2)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1)])) == {}
    assert NodeView("a", 2, 1, runs_exclusive=True).free_slots == 0


def test_an_exclusive_task_still_needs_its_slots() -> None:
    nodes = [NodeView("a", 2, 0)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 3, exclusive=True)])) == {}


def test_a_dedicated_only_task_never_goes_to_a_spot_node() -> None:
    nodes = [NodeView("spot", 4, 0, dedicated=False), NodeView("spot2", 4, 0, dedicated=False)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1, dedicated_only=True), TaskView(2, 1, 1)])) == {2: "spot"}


@pytest.mark.parametrize("fill", ["spread", "pack"])
def test_a_dedicated_only_task_finds_the_dedicated_node_among_spot_ones(fill: str) -> None:
    nodes = [NodeView(f"spot{i}", 4, 0, dedicated=False) for i in range(5)] + [NodeView("ded", 4, 3)]
    assert placed(snapshot(fill, nodes, [TaskView(1, 1, 1, dedicated_only=True)])) == {1: "ded"}


def test_ordinary_tasks_choose_across_dedicated_and_spot_nodes_as_before() -> None:
    # Spread: the most free slots wins, whatever the node's kind; equal: the first listed.
    nodes = [NodeView("ded", 4, 2), NodeView("spot", 4, 0, dedicated=False), NodeView("ded2", 4, 0)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1)])) == {1: "spot"}
    assert placed(snapshot("pack", nodes, [TaskView(1, 1, 1)])) == {1: "ded"}


def test_exclusive_and_dedicated_only_together() -> None:
    nodes = [NodeView("spot", 2, 0, dedicated=False), NodeView("busy", 2, 1), NodeView("ded", 2, 0)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1, exclusive=True, dedicated_only=True)])) == {1: "ded"}


def test_each_placement_looks_at_one_node_with_the_rules_in_play() -> None:
    nodes = tuple(NodeView(f"n{i}", 4, i % 4, dedicated=i % 3 != 0) for i in range(3000))
    tasks = tuple(TaskView(seq, 1, 1, exclusive=seq % 5 == 0, dedicated_only=seq % 7 == 0) for seq in range(4000))
    snap = PoolSnapshot("spread", nodes, tasks, (JobView(1, None),))
    free = FreeNodes(nodes)
    placements = place(snap, free)
    assert free.examined == len(placements) > 0


def test_a_manager_that_finds_no_node_does_not_use_up_the_room_of_ordinary_tasks() -> None:
    # One free slot on a busy node: the exclusive manager (oldest) cannot run there, the ordinary
    # task behind it can; the backlog read must offer both.
    nodes = (NodeView("a", 2, 1),)
    queue = [TaskView(1, 1, 1, exclusive=True), TaskView(2, 1, 1), TaskView(3, 1, 1)]

    def ready_of(job: int, size: int, limit: int) -> list[TaskView]:
        return queue[:limit]

    offered = gather(nodes, [JobView(1, None)], lambda job, low, high: [1], ready_of)
    assert [t.task_seq for t in offered] == [1, 2]
    assert placed(PoolSnapshot("spread", nodes, offered, (JobView(1, None),))) == {2: "a"}



def test_dedicated_only_tasks_on_a_pool_of_dedicated_nodes_are_ordinary() -> None:
    # Found by the property test: the second one must see what the first left on the node.
    nodes = [NodeView("a", 2, 0)]
    assert placed(snapshot("spread", nodes, [TaskView(1, 1, 1, dedicated_only=True),
                                              TaskView(2, 1, 1, dedicated_only=True)])) == {1: "a", 2: "a"}


def test_finding_nodes_that_run_an_exclusive_manager_is_index_work(tmp_path) -> None:
    """The pass's one extra query: the pool's jobs by ix_jobs_pool_state, their manager task by
    primary key; no scan of tasks, however many the jobs have."""
    from shoal.service.scheduling import _EXCLUSIVE_NODES
    from tests.helpers import sqlite_plan, store_context

    for ctx in store_context(f"sqlite:///{tmp_path / 'shoal.db'}"):
        query = _EXCLUSIVE_NODES.params(b_account="a", b_pool="p")
        steps = sqlite_plan(ctx.engine, query)
        assert any("ix_jobs_pool_state" in step for step in steps), steps
        assert any("tasks USING INTEGER PRIMARY KEY" in step for step in steps), steps
        assert not any(step.startswith("SCAN") for step in steps), steps
