"""Property, on a real SQLite store: a scheduling pass starts exactly the tasks, on exactly the
nodes, that the straightforward plan over the whole backlog picks (priorities, maxParallelTasks,
requiredSlots, busy slots, spread and pack), also when it commits in several transactions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView
from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import scheduling
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.db import open_store
from shoal.store.schema import jobs, nodes, pools, tasks
from tests.scheduler.reference import reference_plan

IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}
_runs = itertools.count()


@st.composite
def scenarios(draw):
    slots = draw(st.integers(1, 6))
    sizes = st.lists(st.integers(1, slots + 1), max_size=10)
    # Per job: priority, maxParallelTasks (-1: none), and the tasks added before each of two passes.
    job_list = [(draw(st.integers(-2, 2)), draw(st.sampled_from([-1, 1, 2, 3])), draw(sizes), draw(sizes))
                for _ in range(draw(st.integers(1, 4)))]
    # How many placements a transaction may commit: small ones make a pass continue over several.
    per_transaction = draw(st.sampled_from([1, 2, 3, scheduling.PLACEMENTS_PER_TRANSACTION]))
    return draw(st.sampled_from(["spread", "pack"])), slots, draw(st.integers(1, 5)), job_list, per_transaction


def _state(ctx: Context, pool_seq: int, fill: str) -> PoolSnapshot:
    """The pool as the plain-data reference sees it: every ready task, read without any index cleverness."""
    with ctx.engine.connect() as conn:
        node_rows = conn.execute(select(nodes.c.id, nodes.c.slots).where(nodes.c.pool_seq == pool_seq)
                                 .order_by(nodes.c.allocation_time, nodes.c.id)).all()
        task_rows = conn.execute(select(tasks.c.seq, tasks.c.job_seq, tasks.c.required_slots, tasks.c.state,
                                        tasks.c.node_id)).all()
        job_rows = conn.execute(select(jobs.c.seq, jobs.c.priority, jobs.c.max_parallel_tasks)).all()
    used = {n.id: sum(t.required_slots for t in task_rows if t.state == "running" and t.node_id == n.id)
            for n in node_rows}
    running = {j.seq: sum(1 for t in task_rows if t.state == "running" and t.job_seq == j.seq) for j in job_rows}
    rank = {j.seq: (-j.priority, j.seq) for j in job_rows}
    ready = sorted((t for t in task_rows if t.state == "active"), key=lambda t: (rank[t.job_seq], t.seq))
    return PoolSnapshot(fill, tuple(NodeView(n.id, n.slots, used[n.id]) for n in node_rows),
                        tuple(TaskView(t.seq, t.job_seq, t.required_slots) for t in ready),
                        tuple(JobView(j.seq, None if j.max_parallel_tasks <= 0 else j.max_parallel_tasks - running[j.seq])
                              for j in job_rows))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_a_pass_on_the_store_places_what_the_whole_backlog_plan_would(tmp_path, scenario):
    fill, slots, node_count, job_list, per_transaction = scenario
    engine = open_store(f"sqlite:///{tmp_path / f'run{next(_runs)}.db'}")
    default = scheduling.PLACEMENTS_PER_TRANSACTION
    scheduling.PLACEMENTS_PER_TRANSACTION = per_transaction
    try:
        ensure_account(engine)
        ctx = Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
        pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D8s_v3", "virtualMachineConfiguration": IMAGE,
                                  "targetDedicatedNodes": 0, "taskSlotsPerNode": slots,
                                  "taskSchedulingPolicy": {"nodeFillType": fill}})
        now = datetime.now(UTC)
        with engine.begin() as conn:
            pool_seq = conn.execute(select(pools.c.seq)).scalar_one()
            conn.execute(insert(nodes), [
                {"id": f"node{index}", "pool_seq": pool_seq, "state": "idle", "scheduling_state": "enabled",
                 "is_dedicated": True, "token": f"token{index}", "slots": slots, "allocation_time": now,
                 "state_transition_time": now, "etag": "0x1", "run_start_task": False, "total_tasks_run": 0,
                 "total_tasks_succeeded": 0} for index in range(node_count)])
        for number, (priority, parallel, _, _) in enumerate(job_list):
            body = {"id": f"j{number}", "priority": priority, "poolInfo": {"poolId": "p"}}
            if parallel > 0:
                body["maxParallelTasks"] = parallel
            job_service.create(ctx, body)
        # The second pass starts from the first's running tasks: busy slots, spent allowances.
        for round_ in (2, 3):
            for number, job in enumerate(job_list):
                for index, size in enumerate(job[round_]):
                    task_service.create(ctx, f"j{number}", {"id": f"r{round_}t{index}", "commandLine": "x",
                                                            "requiredSlots": size})
            before = _state(ctx, pool_seq, fill)
            expected = {(p.task_seq, p.node_id) for p in reference_plan(before)}
            ready = {t.task_seq for t in before.tasks}
            scheduling.schedule(ctx)
            with engine.connect() as conn:
                started = {(row.seq, row.node_id) for row in conn.execute(
                    select(tasks.c.seq, tasks.c.node_id).where(tasks.c.state == "running"))
                    if row.seq in ready}
            assert started == expected
    finally:
        scheduling.PLACEMENTS_PER_TRANSACTION = default
        engine.dispose()
