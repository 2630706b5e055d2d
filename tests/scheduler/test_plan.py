"""The pure scheduler, from plain data."""

from __future__ import annotations

from collections import Counter

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, plan


def snapshot(fill: str, nodes: list[tuple[str, int, int]], tasks: list[tuple[int, int, int]],
             jobs: dict[int, int | None] | None = None) -> PoolSnapshot:
    job_ids = {job for _, job, _ in tasks}
    jobs = jobs or {}
    return PoolSnapshot(
        fill_type=fill,
        nodes=tuple(NodeView(n, total, used) for n, total, used in nodes),
        tasks=tuple(TaskView(seq, job, slots) for seq, job, slots in tasks),
        jobs=tuple(JobView(job, jobs.get(job)) for job in sorted(job_ids)))


def by_node(placements) -> Counter[str]:
    return Counter(p.node_id for p in placements)


def test_spread_balances_across_nodes():
    placements = plan(snapshot("spread", [("a", 4, 0), ("b", 4, 0)], [(i, 1, 1) for i in range(4)]))
    assert by_node(placements) == {"a": 2, "b": 2}


def test_pack_fills_one_node_before_the_next():
    placements = plan(snapshot("pack", [("a", 4, 0), ("b", 4, 0)], [(i, 1, 1) for i in range(4)]))
    assert by_node(placements) == {"a": 4}


def test_pack_prefers_the_fuller_node():
    placements = plan(snapshot("pack", [("a", 4, 0), ("b", 4, 3)], [(1, 1, 1)]))
    assert [p.node_id for p in placements] == ["b"]


def test_never_more_slots_than_a_node_has():
    placements = plan(snapshot("spread", [("a", 4, 1), ("b", 2, 0)], [(i, 1, 1) for i in range(20)]))
    assert by_node(placements) == {"a": 3, "b": 2}


def test_required_slots_respected_and_smaller_tasks_backfill():
    placements = plan(snapshot("spread", [("a", 4, 2)], [(1, 1, 3), (2, 1, 1), (3, 1, 1), (4, 1, 1)]))
    assert [p.task_seq for p in placements] == [2, 3]


def test_tasks_are_taken_in_snapshot_priority_order():
    # The snapshot lists the high-priority job's tasks first; only two slots are free.
    placements = plan(snapshot("spread", [("a", 2, 0)], [(10, 7, 1), (11, 7, 1), (1, 3, 1)]))
    assert [p.task_seq for p in placements] == [10, 11]


def test_max_parallel_tasks_caps_a_job():
    placements = plan(snapshot("spread", [("a", 8, 0)], [(i, 1, 1) for i in range(5)] + [(9, 2, 1)],
                               jobs={1: 2, 2: None}))
    assert sorted(p.task_seq for p in placements) == [0, 1, 9]


def test_no_free_slots_no_placements():
    assert plan(snapshot("spread", [("a", 2, 2)], [(1, 1, 1)])) == []


def test_job_at_its_parallel_limit_gets_nothing():
    assert plan(snapshot("pack", [("a", 2, 0)], [(1, 1, 1)], jobs={1: 0})) == []


def test_spread_ties_go_to_the_node_listed_first_round_after_round():
    placements = plan(snapshot("spread", [("a", 2, 0), ("b", 2, 0), ("c", 2, 0)], [(i, 1, 1) for i in range(6)]))
    assert [p.node_id for p in placements] == ["a", "b", "c", "a", "b", "c"]


def test_spread_prefers_most_free_over_listing_order():
    placements = plan(snapshot("spread", [("a", 4, 2), ("b", 4, 0), ("c", 4, 1)], [(i, 1, 1) for i in range(4)]))
    # Free a=2 b=4 c=3: b; then b and c tie at 3 and b is listed first; then c; then all tie at 2.
    assert [p.node_id for p in placements] == ["b", "b", "c", "a"]


def test_pack_ties_go_to_the_node_listed_first_and_fullest_wins():
    placements = plan(snapshot("pack", [("x", 4, 0), ("y", 4, 2), ("z", 4, 2)], [(i, 1, 1) for i in range(7)]))
    assert [p.node_id for p in placements] == ["y", "y", "z", "z", "x", "x", "x"]


def test_pack_skips_nodes_too_full_for_the_task():
    placements = plan(snapshot("pack", [("a", 4, 3), ("b", 4, 2), ("c", 4, 0)], [(1, 1, 2), (2, 1, 3), (3, 1, 1)]))
    assert [(p.task_seq, p.node_id) for p in placements] == [(1, "b"), (2, "c"), (3, "a")]


def test_a_task_bigger_than_every_node_is_skipped_and_the_rest_still_place():
    placements = plan(snapshot("spread", [("a", 4, 0)], [(1, 1, 5), (2, 1, 4)]))
    assert [(p.task_seq, p.node_id) for p in placements] == [(2, "a")]
