"""Property: the bucketed plan equals the straightforward one, and planning from the per-size ready
queues places exactly what planning from the whole backlog would, on random pools and backlogs."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, gather, plan
from shoal.scheduler.backlog import capacity
from tests.scheduler.reference import Backlog, reference_plan


@st.composite
def pools(draw):
    slots = draw(st.integers(1, 8))
    nodes = []
    for index in range(draw(st.integers(0, 12))):
        total = draw(st.integers(1, slots))
        nodes.append(NodeView(f"n{index}", total, draw(st.integers(0, total))))
    jobs = [JobView(seq, draw(st.none() | st.integers(0, 4))) for seq in range(1, draw(st.integers(1, 5)) + 1)]
    # Shuffled job order stands for priority order; task seqs grow with insertion across jobs.
    jobs = draw(st.permutations(jobs))
    tasks = [TaskView(seq, draw(st.sampled_from([j.job_seq for j in jobs])), draw(st.integers(1, slots + 1)))
             for seq in range(draw(st.integers(0, 40)))]
    return draw(st.sampled_from(["spread", "pack"])), nodes, list(jobs), tasks


@st.composite
def pools_with_managers(draw):
    """Random pools with spot nodes and nodes running an exclusive task, and tasks flagged
    exclusive or dedicated-only (a job manager's rules; the planner does not care which task)."""
    fill, nodes, jobs, tasks = draw(pools())
    nodes = [replace(node, dedicated=draw(st.booleans()), runs_exclusive=draw(st.integers(0, 5)) == 0)
             for node in nodes]
    tasks = [replace(task, exclusive=draw(st.integers(0, 3)) == 0, dedicated_only=draw(st.integers(0, 3)) == 0)
             for task in tasks]
    return fill, nodes, jobs, tasks


any_pools = st.one_of(pools(), pools_with_managers())


@settings(max_examples=400, deadline=None)
@given(any_pools)
def test_bucketed_plan_equals_the_reference(pool):
    fill, nodes, jobs, tasks = pool
    snapshot = PoolSnapshot(fill, tuple(nodes), Backlog(tasks).in_plan_order(jobs), tuple(jobs))
    assert plan(snapshot) == reference_plan(snapshot)


@settings(max_examples=400, deadline=None)
@given(any_pools)
def test_ready_queues_place_what_the_whole_backlog_would(pool):
    fill, nodes, jobs, tasks = pool
    backlog = Backlog(tasks)
    whole = reference_plan(PoolSnapshot(fill, tuple(nodes), backlog.in_plan_order(jobs), tuple(jobs)))
    offered = gather(nodes, jobs, backlog.sizes_of, backlog.ready_of)
    assert plan(PoolSnapshot(fill, tuple(nodes), offered, tuple(jobs))) == whole
    # Bounded by what could run: unlimited jobs offer at most cap(r) tasks of each size r in all,
    # a capped job at most its allowance per size, and nothing bigger than the largest free node.
    cap = capacity(nodes)
    allowance = {job.job_seq: job.parallel_allowance for job in jobs}
    largest = max((node.free_slots for node in nodes), default=0)
    # (A job manager's exclusive or dedicated-only task is read on top: it may fit nowhere.)
    unlimited = Counter(t.required_slots for t in offered if allowance[t.job_seq] is None and not t.particular)
    assert all(count <= cap(size) for size, count in unlimited.items())
    per_job_size = Counter((t.job_seq, t.required_slots) for t in offered
                           if allowance[t.job_seq] is not None and not t.particular)
    assert all(count <= (allowance[job] or 0) for (job, _), count in per_job_size.items())
    assert all(t.required_slots <= largest for t in offered)


@settings(max_examples=400, deadline=None)
@given(pools(), st.integers(1, 6))
def test_a_budgeted_read_gets_the_first_placements_right(pool, budget):
    fill, nodes, jobs, tasks = pool
    backlog = Backlog(tasks)
    whole = reference_plan(PoolSnapshot(fill, tuple(nodes), backlog.in_plan_order(jobs), tuple(jobs)))
    offered = gather(nodes, jobs, backlog.sizes_of, backlog.ready_of, budget=budget)
    assert plan(PoolSnapshot(fill, tuple(nodes), offered, tuple(jobs)))[:budget] == whole[:budget]
    assert all(count <= budget for count in Counter(
        (t.job_seq, t.required_slots) for t in offered).values())
