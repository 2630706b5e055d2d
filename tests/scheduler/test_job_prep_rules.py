"""A job barred from nodes (its preparation task failed there with waitForSuccess, semantics
§3.4) in the pure scheduler, from plain data: its tasks go elsewhere, other jobs still use the
barred nodes, and reading the backlog stays exact."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan


def placed(nodes: list[NodeView], tasks: list[TaskView], jobs: list[JobView], fill: str = "spread") -> dict[int, str]:
    return {p.task_seq: p.node_id for p in plan(PoolSnapshot(fill, tuple(nodes), tuple(tasks), tuple(jobs)))}


@pytest.mark.parametrize("fill", ["spread", "pack"])
def test_a_barred_job_s_tasks_go_to_other_nodes_only(fill: str) -> None:
    nodes = [NodeView("a", 4, 0), NodeView("b", 2, 0)]
    tasks = [TaskView(seq, 1, 1) for seq in range(1, 6)]
    where = placed(nodes, tasks, [JobView(1, None, frozenset({"a"}))], fill)
    assert Counter(where.values()) == {"b": 2}


def test_another_job_still_uses_the_barred_node() -> None:
    nodes = [NodeView("a", 2, 0), NodeView("b", 1, 0)]
    tasks = [TaskView(1, 1, 1), TaskView(2, 1, 1), TaskView(3, 2, 1), TaskView(4, 2, 1)]
    where = placed(nodes, tasks, [JobView(1, None, frozenset({"a"})), JobView(2, None)])
    assert where == {1: "b", 3: "a", 4: "a"}


def test_a_job_barred_everywhere_places_nothing_and_costs_nothing_more() -> None:
    nodes = [NodeView("a", 1, 0), NodeView("b", 1, 0)]
    assert placed(nodes, [TaskView(1, 1, 1)], [JobView(1, None, frozenset({"a", "b"}))]) == {}


def test_a_barred_job_does_not_close_sizes_for_the_jobs_after_it() -> None:
    """The backlog reads a barred job's tasks up to the room but they settle nothing: the next
    job's tasks are still offered for the nodes the first cannot use."""
    nodes = (NodeView("a", 2, 0), NodeView("b", 2, 0))
    ready = {1: [TaskView(seq, 1, 1) for seq in range(1, 10)], 2: [TaskView(seq, 2, 1) for seq in range(10, 14)]}
    jobs = [JobView(1, None, frozenset({"a"})), JobView(2, None)]
    offered = gather(nodes, jobs, lambda job, low, high: [1] if low <= 1 <= high else [],
                     lambda job, size, limit: ready[job][:limit])
    where = {p.task_seq: p.node_id for p in plan(PoolSnapshot("spread", nodes, offered, tuple(jobs)))}
    assert Counter(where.values()) == {"a": 2, "b": 2}
    assert {seq for seq, node in where.items() if node == "a"} <= {10, 11, 12, 13}
