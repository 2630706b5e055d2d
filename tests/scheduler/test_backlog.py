"""Backfill from per-size ready queues: what fits runs, whatever waits ahead of it, and a pass reads
no more of the backlog than the free slots could take."""

from __future__ import annotations

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan
from shoal.scheduler.backlog import capacity
from tests.scheduler.reference import Backlog, reference_plan


def _pass(fill: str, nodes: list[NodeView], jobs: list[JobView], backlog: Backlog):
    offered = gather(nodes, jobs, backlog.sizes_of, backlog.ready_of)
    return plan(PoolSnapshot(fill, tuple(nodes), offered, tuple(jobs))), offered


def test_one_slot_task_runs_behind_eight_four_slot_tasks_that_cannot_fit():
    # The case from the issue: one 4-slot node with one slot free, the one-slot task queued last
    # (a lookahead of 4 ready tasks per free slot never reached it).
    backlog = Backlog([TaskView(seq, 1, 4) for seq in range(8)] + [TaskView(8, 1, 1)])
    placements, _ = _pass("spread", [NodeView("a", 4, 3)], [JobView(1, None)], backlog)
    assert [(p.task_seq, p.node_id) for p in placements] == [(8, "a")]


def test_high_priority_job_of_non_fitting_tasks_does_not_starve_lower_jobs():
    nodes = [NodeView(f"n{i}", 4, 1) for i in range(100)]  # 3 free everywhere: no 4-slot task fits
    high = [TaskView(seq, 1, 4) for seq in range(100_000)]
    low = [TaskView(100_000 + seq, 2, 1) for seq in range(10_000)]
    backlog = Backlog(high + low)
    placements, offered = _pass("spread", nodes, [JobView(1, None), JobView(2, None)], backlog)
    assert len(placements) == 300
    assert sorted(p.task_seq for p in placements) == [t.task_seq for t in low[:300]]
    # Nothing of the 100,000 that cannot fit is read, and no more of the rest than can run.
    assert backlog.read == len(offered) == 300


def test_priority_order_holds_among_the_tasks_that_fit():
    nodes = [NodeView("a", 4, 1)]
    high = [TaskView(1, 1, 4), TaskView(2, 1, 1), TaskView(3, 1, 4), TaskView(4, 1, 1)]
    low = [TaskView(10, 2, 1), TaskView(11, 2, 1)]
    placements, _ = _pass("spread", nodes, [JobView(1, None), JobView(2, None)], Backlog(high + low))
    assert [p.task_seq for p in placements] == [2, 4, 10]


def test_a_capped_job_takes_its_allowance_and_leaves_the_rest_to_lower_jobs():
    nodes = [NodeView("a", 8, 0)]
    capped = [TaskView(seq, 1, 1) for seq in range(1_000)]
    other = [TaskView(1_000 + seq, 2, 1) for seq in range(1_000)]
    backlog = Backlog(capped + other)
    placements, _ = _pass("pack", nodes, [JobView(1, 2), JobView(2, None)], backlog)
    assert sorted(p.task_seq for p in placements) == [0, 1, *range(1_000, 1_006)]
    assert backlog.read <= 2 + 8


def test_a_capped_job_of_mixed_sizes_leaves_no_slot_idle_that_the_whole_backlog_would_fill():
    # Job 1 may run one more task and has a 1-slot and a 2-slot one: the 1-slot task takes its
    # allowance, so its 2-slot task is skipped and must not use up the lower job's 2-slot share.
    nodes = [NodeView("a", 4, 1), NodeView("b", 4, 1)]
    jobs = [JobView(1, 1), JobView(2, None)]
    backlog = Backlog([TaskView(0, 1, 1), TaskView(1, 1, 2)] + [TaskView(100 + seq, 2, 2) for seq in range(5)])
    placements, _ = _pass("spread", nodes, jobs, backlog)
    full = reference_plan(PoolSnapshot("spread", tuple(nodes), backlog.in_plan_order(jobs), tuple(jobs)))
    assert placements == full
    assert [(p.task_seq, p.node_id) for p in placements] == [(0, "a"), (100, "b"), (101, "a")]


def test_a_full_pool_reads_nothing():
    backlog = Backlog([TaskView(seq, 1, 1) for seq in range(50)])
    placements, offered = _pass("spread", [NodeView("a", 2, 2)], [JobView(1, None)], backlog)
    assert placements == [] and offered == () and backlog.probes == 0


def test_jobs_after_the_pool_is_spoken_for_are_not_probed():
    nodes = [NodeView("a", 4, 0)]
    jobs = [JobView(seq, None) for seq in range(1, 1_001)]
    backlog = Backlog([TaskView(seq * 10 + i, seq, 1) for seq in range(1, 1_001) for i in range(2)])
    placements, _ = _pass("spread", nodes, jobs, backlog)
    assert [p.task_seq for p in placements] == [10, 11, 20, 21]
    assert backlog.probes <= 2 * 2


def test_capacity_counts_whole_tasks_per_node():
    cap = capacity([NodeView("a", 5, 0), NodeView("b", 4, 1), NodeView("c", 2, 2)])
    assert [cap(size) for size in (1, 2, 3, 4, 5, 6)] == [8, 3, 2, 1, 1, 0]
