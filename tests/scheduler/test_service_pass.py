"""The scheduling shell on a real SQLite store: its backlog reads are index seeks, and one pass can
place work on 10,000 nodes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, insert, select

from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import scheduling
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.schema import jobs, nodes, pools, tasks
from tests.helpers import store_context

IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


_names = itertools.count()


@pytest.fixture
def ctx(tmp_path) -> Iterator[Context]:
    yield from store_context(f"sqlite:///{tmp_path / 'shoal.db'}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ctx(request: pytest.FixtureRequest, tmp_path) -> Iterator[Context]:
    url = (f"sqlite:///{tmp_path / 'shoal.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres").create_database(f"sched_{next(_names)}"))
    yield from store_context(url)


def _plan_of(ctx: Context, statement) -> str:
    names = statement.compile(ctx.engine).params
    compiled = statement.params({name: 1 for name, value in names.items() if value is None}).compile(
        ctx.engine, compile_kwargs={"render_postcompile": True})
    raw = ctx.engine.raw_connection()
    try:
        rows = raw.cursor().execute("EXPLAIN QUERY PLAN " + compiled.string, [1] * compiled.string.count("?"))
        return " | ".join(row[3] for row in rows)
    finally:
        raw.close()


@pytest.mark.parametrize("name", ["_NEXT_SIZE", "_READY_OF_SIZE", "_ACTIVE_JOBS"])
def test_backlog_reads_are_index_seeks_without_a_sort(ctx, name):
    plan = _plan_of(ctx, getattr(scheduling, name))
    assert "SEARCH tasks USING COVERING INDEX ix_tasks_ready (job_seq=? AND state=? AND unsatisfied=? AND " \
        "instances=? AND required_slots" in plan, plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan


@pytest.mark.parametrize("name", ["_NEXT_GANG", "_READY_GANG"])
def test_multi_instance_reads_are_index_seeks_without_a_sort(ctx, name):
    # A job's multi-instance tasks queue by instance count in the same index, after its ordinary
    # tasks' (instances = 0): neither kind's reads walk past the other's tasks.
    plan = _plan_of(ctx, getattr(scheduling, name))
    assert "SEARCH tasks USING COVERING INDEX ix_tasks_ready (job_seq=? AND state=? AND unsatisfied=? AND " \
        "instances" in plan, plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan


def test_free_nodes_are_a_walk_of_the_partial_index_without_a_probe_per_node(ctx):
    # ix_nodes_free holds only nodes with used_slots < slots (kept by triggers): a pass on a full
    # pool reads the nodes a report freed, not every node with a sum of its tasks.
    plan = _plan_of(ctx, scheduling._FREE_NODES)
    assert "SEARCH nodes USING INDEX ix_nodes_free (pool_seq=?)" in plan, plan
    assert "tasks" not in plan and "SCAN" not in plan and "TEMP B-TREE" not in plan, plan


def _ready_nodes(ctx: Context, pool_id: str, count: int, slots: int) -> None:
    """Node rows as an agent's hello leaves them (idle, enabled); 10,000 agents are out of reach here."""
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        pool_seq = conn.execute(select(pools.c.seq).where(pools.c.id == pool_id)).scalar_one()
        conn.execute(insert(nodes), [
            {"id": f"tvmps_{index:05d}", "pool_seq": pool_seq, "state": "idle", "scheduling_state": "enabled",
             "is_dedicated": True, "token": f"token-{index}", "slots": slots, "allocation_time": now,
             "state_transition_time": now, "etag": "0x1", "run_start_task": False, "total_tasks_run": 0,
             "total_tasks_succeeded": 0} for index in range(count)])


def _pool(ctx: Context, pool_id: str, slots: int) -> None:
    pool_service.create(ctx, {"id": pool_id, "vmSize": "Standard_D4s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 0, "taskSlotsPerNode": slots})


def _add(ctx: Context, job_id: str, count: int, slots: int = 1, first: int = 0) -> None:
    for start in range(first, first + count, 100):
        task_service.create_collection(ctx, job_id, {"value": [
            {"id": f"t{i}", "commandLine": "/bin/true", "requiredSlots": slots}
            for i in range(start, min(first + count, start + 100))]}, 10_000)


def _states(ctx: Context, job_id: str) -> dict[tuple[str, int], int]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(tasks.c.state, tasks.c.required_slots, func.count())
                            .join(jobs, jobs.c.seq == tasks.c.job_seq).where(jobs.c.id == job_id)
                            .group_by(tasks.c.state, tasks.c.required_slots)).all()
    return {(state, slots): count for state, slots, count in rows}


def test_a_pass_backfills_past_non_fitting_tasks_on_either_store(any_ctx):
    ctx = any_ctx
    _pool(ctx, "p", 4)
    _ready_nodes(ctx, "p", 3, 4)
    job_service.create(ctx, {"id": "busy", "priority": 1000, "poolInfo": {"poolId": "p"}})
    _add(ctx, "busy", 3)
    assert len(scheduling.schedule(ctx)) == 3  # spread: one slot busy on each node, 3 free on each
    job_service.create(ctx, {"id": "wide", "priority": 900, "maxParallelTasks": 50, "poolInfo": {"poolId": "p"}})
    _add(ctx, "wide", 300, slots=4)
    _add(ctx, "wide", 2, slots=2, first=300)
    job_service.create(ctx, {"id": "narrow", "priority": 0, "poolInfo": {"poolId": "p"}})
    _add(ctx, "narrow", 300)
    scheduling.schedule(ctx)
    # No 4-slot task fits; the wide job's 2-slot tasks go first (priority), the narrow job fills the rest.
    assert _states(ctx, "wide") == {("active", 4): 300, ("running", 2): 2}
    assert _states(ctx, "narrow") == {("running", 1): 5, ("active", 1): 295}


def test_one_pass_fills_ten_thousand_nodes_in_short_transactions(ctx):
    node_count, slots = 10_000, 4
    _pool(ctx, "big", slots)
    _ready_nodes(ctx, "big", node_count, slots)
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "big"}})
    _add(ctx, "j", node_count * slots)
    commits: list[int] = []
    started = {"rows": 0}

    def count_starts(_conn, _cursor, statement, parameters, _context, executemany):
        if executemany and statement.startswith("UPDATE tasks SET state"):
            started["rows"] += len(parameters)

    def count_commit(_conn):
        commits.append(started["rows"])
        started["rows"] = 0

    event.listen(ctx.engine, "before_cursor_execute", count_starts)
    event.listen(ctx.engine, "commit", count_commit)
    try:
        woken = scheduling.schedule(ctx)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count_starts)
        event.remove(ctx.engine, "commit", count_commit)
    assert len(woken) == node_count
    assert sum(commits) == node_count * slots
    assert max(commits) <= scheduling.PLACEMENTS_PER_TRANSACTION
    with ctx.engine.connect() as conn:
        placed = conn.execute(select(tasks.c.id, tasks.c.node_id).where(tasks.c.state == "running")).all()
        states = dict(conn.execute(select(nodes.c.state, func.count()).group_by(nodes.c.state)).all())
    # Spread, committed in pieces, is still round after round over the nodes in listing order.
    assert {task_id: node for task_id, node in placed} == {
        f"t{i}": f"tvmps_{i % node_count:05d}" for i in range(node_count * slots)}
    assert states == {"running": node_count}


def test_jobs_whose_tasks_cannot_fit_cost_no_statement_of_their_own(ctx):
    _pool(ctx, "p", 4)
    _ready_nodes(ctx, "p", 2, 4)
    for index in range(200):
        job_service.create(ctx, {"id": f"wide{index}", "priority": 500, "poolInfo": {"poolId": "p"}})
        _add(ctx, f"wide{index}", 2, slots=5)
    job_service.create(ctx, {"id": "narrow", "priority": 0, "poolInfo": {"poolId": "p"}})
    _add(ctx, "narrow", 20)
    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(ctx.engine, "before_cursor_execute", listen)
    try:
        scheduling.schedule(ctx)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", listen)
    assert _states(ctx, "narrow") == {("running", 1): 8, ("active", 1): 12}
    # A fixed handful for the pass, however many jobs wait with tasks no node can take.
    assert len(statements) < 15, statements


def test_gangs_fill_ten_thousand_nodes_and_a_full_pool_reads_no_gang(ctx):
    node_count, width, waiting = 10_000, 4, 5_000
    pool_service.create(ctx, {"id": "mpi", "vmSize": "Standard_D4s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 0, "enableInterNodeCommunication": True})
    _ready_nodes(ctx, "mpi", node_count, 1)
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "mpi"}})
    settings = {"numberOfInstances": width, "coordinationCommandLine": "/bin/true"}
    for start in range(0, waiting, 100):
        task_service.create_collection(ctx, "j", {"value": [
            {"id": f"g{i}", "commandLine": "/bin/true", "multiInstanceSettings": settings}
            for i in range(start, start + 100)]}, 10_000)
    read = {"rows": 0}

    def count_reads(_conn, cursor, statement, _parameters, _context, _executemany):
        # The gang queue reads (_READY_GANG, _NEXT_GANG), not the jobs' smallest-size probes.
        if "tasks.instances = ?" in statement and "ORDER BY tasks.required_slots, tasks.seq" in statement \
                or "tasks.instances >= ?" in statement and "tasks.job_seq = ?" in statement:
            read["rows"] += 1

    event.listen(ctx.engine, "before_cursor_execute", count_reads)
    try:
        started = time.perf_counter()
        assert len(scheduling.schedule(ctx)) == node_count
        filled_s = time.perf_counter() - started
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count_reads)
    assert read["rows"] > 0  # the fill read the gang queues
    read["rows"] = 0
    with ctx.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(nodes).where(nodes.c.used_slots == 1)).scalar_one() == node_count
    assert _states(ctx, "j") == {("running", 1): node_count // width, ("active", 1): waiting - node_count // width}
    event.listen(ctx.engine, "before_cursor_execute", count_reads)
    try:
        started = time.perf_counter()
        assert scheduling.schedule(ctx) == set()
        full_s = time.perf_counter() - started
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count_reads)
    # A full pool reads no waiting gang (no node has room), however many wait.
    assert read["rows"] == 0
    assert full_s < 0.5, full_s
    print(f"\n10,000 nodes: {node_count // width} gangs of {width} placed in {filled_s:.2f} s; "
          f"a pass on the full pool with {waiting - node_count // width} gangs waiting: {full_s * 1000:.1f} ms")
