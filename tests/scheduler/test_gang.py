"""Multi-instance tasks (gangs) in the pure scheduler, from plain data: all of a gang's nodes at
once or none, one instance a node, never blocking the tasks behind it, and a cost bounded by
the nodes it takes rather than the pool or the backlog."""

from __future__ import annotations

import time

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan
from shoal.scheduler.plan import FreeNodes


def _nodes(count: int, used: int = 0, slots: int = 1) -> tuple[NodeView, ...]:
    return tuple(NodeView(f"n{i}", slots, used) for i in range(count))


def _snapshot(nodes: tuple[NodeView, ...], tasks: list[TaskView], fill: str = "spread",
              jobs: tuple[JobView, ...] | None = None) -> PoolSnapshot:
    return PoolSnapshot(fill, nodes, tuple(tasks), jobs or tuple(JobView(j, None) for j in {t.job_seq for t in tasks}))


def test_a_gang_gets_distinct_nodes_one_instance_each():
    placements = plan(_snapshot(_nodes(3), [TaskView(1, 1, 1, instances=3)]))
    assert len(placements) == 1
    nodes = (placements[0].node_id, *placements[0].subtask_nodes)
    assert sorted(nodes) == ["n0", "n1", "n2"]


def test_a_gang_that_cannot_have_all_its_nodes_takes_none_and_ordinary_tasks_still_run():
    # Three free nodes, a gang of four first: it takes nothing, the three single tasks behind it run.
    tasks = [TaskView(1, 1, 1, instances=4), *(TaskView(seq, 1, 1) for seq in (2, 3, 4))]
    placements = plan(_snapshot(_nodes(3), tasks))
    assert [p.task_seq for p in placements] == [2, 3, 4]
    assert all(not p.subtask_nodes for p in placements)


def test_a_refused_gang_leaves_every_node_as_it_was():
    free = FreeNodes(_nodes(3))
    assert free.take_gang(4, 1, pack=False) is None
    assert free.take_gang(3, 1, pack=False) == ["n0", "n1", "n2"]
    assert free.take_gang(1, 1, pack=False) is None


def test_gangs_after_a_refused_one_still_fit_what_is_left():
    tasks = [TaskView(1, 1, 1, instances=2), TaskView(2, 1, 1, instances=5), TaskView(3, 1, 1, instances=3)]
    placements = plan(_snapshot(_nodes(5), tasks))
    assert [p.task_seq for p in placements] == [1, 3]
    used = [p.node_id for p in placements] + [n for p in placements for n in p.subtask_nodes]
    assert len(used) == len(set(used)) == 5


def test_busy_and_barred_nodes_are_not_part_of_a_gang():
    nodes = (NodeView("busy", 1, 1), NodeView("a", 1, 0), NodeView("barred", 1, 0), NodeView("b", 1, 0))
    jobs = (JobView(1, None, frozenset({"barred"})),)
    placements = plan(_snapshot(nodes, [TaskView(1, 1, 1, instances=2)], jobs=jobs))
    assert {placements[0].node_id, *placements[0].subtask_nodes} == {"a", "b"}
    refused = plan(_snapshot(nodes, [TaskView(1, 1, 1, instances=3)], jobs=jobs))
    assert refused == []


def test_a_gang_counts_once_against_its_jobs_parallel_allowance():
    jobs = (JobView(1, 1),)
    tasks = [TaskView(1, 1, 1, instances=2), TaskView(2, 1, 1)]
    placements = plan(_snapshot(_nodes(4), tasks, jobs=jobs))
    assert [p.task_seq for p in placements] == [1]


def test_gather_reads_no_gang_bigger_than_the_nodes_with_room_and_no_more_than_can_fit():
    asked: list[tuple[int, int, int]] = []

    def gang_sizes_of(job: int, most: int) -> list[int]:
        return [k for k in (2, 3, 50) if k <= most]

    def gang_ready_of(job: int, instances: int, limit: int) -> list[TaskView]:
        asked.append((job, instances, limit))
        return [TaskView(1000 * instances + i, job, 1, instances=instances) for i in range(min(limit, 10**6))]

    offered = gather(_nodes(7), [JobView(1, None)], lambda *_: [], lambda *_: [], None, gang_sizes_of, gang_ready_of)
    # 7 nodes with room: at most 3 gangs of 2 and 2 of 3 can run; a gang of 50 is never read.
    assert asked == [(1, 2, 3), (1, 3, 2)]
    assert len(offered) == 5


def test_ten_thousand_nodes_and_many_gangs_stay_fast():
    nodes = _nodes(10_000)
    # 1,000 gangs of 16 (more than fit: 625), then ordinary tasks behind them.
    tasks = [TaskView(seq, 1, 1, instances=16) for seq in range(1000)]
    tasks += [TaskView(10_000 + seq, 1, 1) for seq in range(1000)]
    started = time.perf_counter()
    placements = plan(_snapshot(nodes, tasks))
    elapsed = time.perf_counter() - started
    gangs = [p for p in placements if p.subtask_nodes]
    assert len(gangs) == 625 and len(placements) == 625
    used = [p.node_id for p in gangs] + [n for p in gangs for n in p.subtask_nodes]
    assert len(set(used)) == 10_000
    # Each refused gang costs O(1) once the pool is full; the whole plan is O(nodes log nodes).
    assert elapsed < 2.0, elapsed


def test_a_gang_on_a_full_pool_costs_no_search():
    free = FreeNodes(_nodes(10_000, used=1))
    started = time.perf_counter()
    for _ in range(100_000):
        assert free.take_gang(2, 1, pack=False) is None
    assert time.perf_counter() - started < 1.0
    assert free.examined == 0
