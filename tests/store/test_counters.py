"""Task and node counters equal a recount after any sequence of real service operations.

The store keeps per-job task counts and per-pool node counts (migration 0007) so taskcounts,
nodecounts, job completion and metric sampling read one row. Here random sequences of adds,
scheduling passes, agent reports (success, retry, failure), requeues (job disable), task
terminations, deletions and reactivations, node scheduling changes, job termination and job
deletion are driven through the service functions against a real store, SQLite and PostgreSQL,
and after every step the counters must equal the GROUP BY they replace.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from shoal.errors import BatchError
from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import agents, allocation, node_operations, scheduling
from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.db import open_store
from shoal.store.schema import job_task_counts, jobs, nodes, pool_node_counts, tasks

IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}
_names = itertools.count()
_jobs = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Context, Any]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('counters') / 'shoal.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"counters_{next(_names)}")
    engine = open_store(url)
    ensure_account(engine)
    ctx = Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 2, "taskSlotsPerNode": 3})
    allocation.reconcile(ctx)
    with engine.connect() as conn:
        node_rows = conn.execute(select(nodes)).all()
    for row in node_rows:
        agents.hello(ctx, row.id, row.token, {"incarnation": "i1", "fileServerUrl": "http://127.0.0.1:1"})
    try:
        yield ctx, node_rows
    finally:
        engine.dispose()


def _recount(conn: Any, job_seq: int) -> dict[str, int]:
    """The GROUP BY taskcounts used to run, as the reference."""
    out = dict.fromkeys(job_service.COUNT_BUCKETS, 0)
    out.update({f"{name}_slots": 0 for name in job_service.COUNT_BUCKETS})
    for state, outcome, count, slots in conn.execute(
            select(tasks.c.state, tasks.c.outcome, func.count(), func.sum(tasks.c.required_slots))
            .where(tasks.c.job_seq == job_seq).group_by(tasks.c.state, tasks.c.outcome)).all():
        bucket = "running" if state == "preparing" else state
        buckets = [bucket] + ([{"success": "succeeded", "failure": "failed"}[outcome]]
                              if state == "completed" and outcome in ("success", "failure") else [])
        for name in buckets:
            out[name] += count
            out[f"{name}_slots"] += int(slots)
    return out


def _check(ctx: Context, job_id: str) -> None:
    with ctx.engine.connect() as conn:
        job = conn.execute(select(jobs.c.seq).where(jobs.c.key == job_id.lower())).first()
        if job is not None:
            row = conn.execute(select(job_task_counts).where(job_task_counts.c.job_seq == job.seq)).one()
            assert {name: row._mapping[name] for name in _recount(conn, job.seq)} == _recount(conn, job.seq)
        else:
            # A reaped job takes its counters with it.
            assert conn.execute(select(func.count()).select_from(job_task_counts)
                                .where(job_task_counts.c.job_seq.not_in(select(jobs.c.seq)))).scalar() == 0
        kept = {(r.pool_seq, bool(r.is_dedicated), r.state): r.count
                for r in conn.execute(select(pool_node_counts).where(pool_node_counts.c.count != 0)).all()}
        recount = {(p, bool(d), s): c for p, d, s, c in conn.execute(
            select(nodes.c.pool_seq, nodes.c.is_dedicated, nodes.c.state, func.count())
            .group_by(nodes.c.pool_seq, nodes.c.is_dedicated, nodes.c.state)).all()}
        assert kept == recount
        # Each node's used slots (migration 0008) equal the slots of the tasks running there.
        running = dict(conn.execute(select(tasks.c.node_id, func.sum(tasks.c.required_slots))
                                    .where(tasks.c.state == "running").group_by(tasks.c.node_id)).all())
        used = {n.id: n.used_slots for n in conn.execute(select(nodes.c.id, nodes.c.used_slots)).all()}
        assert used == {node_id: int(running.get(node_id, 0)) for node_id in used}
        assert set(running) <= set(used)


def _tasks_of(ctx: Context, job_id: str, state: str | None = None) -> list[Any]:
    with ctx.engine.connect() as conn:
        query = (select(tasks).join(jobs, jobs.c.seq == tasks.c.job_seq).where(jobs.c.key == job_id.lower())
                 .order_by(tasks.c.seq))
        if state:
            query = query.where(tasks.c.state == state)
        return list(conn.execute(query).all())


def _report(ctx: Context, node_rows: list[Any], job_id: str, pick: int, exit_code: int) -> None:
    running = _tasks_of(ctx, job_id, "running")
    if not running:
        return
    row = running[pick % len(running)]
    node = next(n for n in node_rows if n.id == row.node_id)
    agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": [], "wait": False, "reports": [
        {"jobId": job_id, "taskId": row.id, "attempt": row.attempt, "exitCode": exit_code}]})


def _on_task(action: Any, ctx: Context, job_id: str, pick: int) -> None:
    rows = _tasks_of(ctx, job_id)
    if rows:
        action(ctx, job_id, rows[pick % len(rows)].id)


def _apply(ctx: Context, node_rows: list[Any], job_id: str, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "add":
        _kind, count, slots = op
        start = len(_tasks_of(ctx, job_id)) + next(_jobs) * 10
        task_service.add_collection(ctx, job_id, [task_service.parse_task(
            {"id": f"t{start + i}", "commandLine": "x", "requiredSlots": slots}) for i in range(count)])
    elif kind == "schedule":
        scheduling.schedule(ctx)
    elif kind == "report":
        _report(ctx, node_rows, job_id, op[1], op[2])
    elif kind == "terminate_task":
        _on_task(task_service.terminate, ctx, job_id, op[1])
    elif kind == "delete_task":
        _on_task(task_service.delete_task, ctx, job_id, op[1])
    elif kind == "reactivate":
        _on_task(task_service.reactivate, ctx, job_id, op[1])
    elif kind == "requeue":
        job_service.disable(ctx, job_id, {"disableTasks": "requeue"})
        job_service.enable(ctx, job_id)
    elif kind == "node_disable":
        node = node_rows[op[1] % len(node_rows)]
        node_operations.disable_scheduling(ctx, "p", node.id, {"nodeDisableSchedulingOption": op[2]})
    elif kind == "node_enable":
        node_operations.enable_scheduling(ctx, "p", node_rows[op[1] % len(node_rows)].id)
    elif kind == "terminate_job":
        job_service.terminate(ctx, job_id, None)
    elif kind == "delete_job":
        job_service.delete_job(ctx, job_id)
        emptied = job_service.reap_deleted(ctx, set())
        job_service.remove_deleted_jobs(ctx, [job.seq for job in emptied])


_pick = st.integers(0, 50)
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4), st.integers(1, 3)),
    st.tuples(st.just("schedule")),
    st.tuples(st.just("schedule")),
    st.tuples(st.just("report"), _pick, st.sampled_from([0, 0, 1, 2])),
    st.tuples(st.just("report"), _pick, st.sampled_from([0, 1])),
    st.tuples(st.just("terminate_task"), _pick),
    st.tuples(st.just("delete_task"), _pick),
    st.tuples(st.just("reactivate"), _pick),
    st.tuples(st.just("requeue")),
    st.tuples(st.just("node_disable"), _pick, st.sampled_from(["requeue", "terminate", "taskcompletion"])),
    st.tuples(st.just("node_enable"), _pick),
    st.tuples(st.just("terminate_job")),
    st.tuples(st.just("delete_job")),
), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, retries=st.sampled_from([0, 1, -1]), finish=st.booleans())
def test_counters_equal_a_recount_after_any_sequence(store, ops, retries, finish):
    ctx, node_rows = store
    job_id = f"j{next(_jobs)}"
    body: dict[str, Any] = {"id": job_id, "poolInfo": {"poolId": "p"}, "constraints": {"maxTaskRetryCount": retries}}
    if finish:
        body["onAllTasksComplete"] = "terminatejob"
    job_service.create(ctx, body)
    try:
        _check(ctx, job_id)
        for op in ops:
            try:
                _apply(ctx, node_rows, job_id, op)
            except BatchError:
                pass  # refused (a job already completed, a task not reactivatable...): nothing changed
            _check(ctx, job_id)
            counts = None
            try:
                counts = job_service.task_counts(ctx, job_id)
            except BatchError:
                pass
            if counts is not None:
                with ctx.engine.connect() as conn:
                    seq = conn.execute(select(jobs.c.seq).where(jobs.c.key == job_id)).scalar_one()
                    recount = _recount(conn, seq)
                assert counts["taskCounts"] == {name: recount[name] for name in job_service.COUNT_BUCKETS}
                assert counts["taskSlotCounts"] == {name: recount[f"{name}_slots"]
                                                    for name in job_service.COUNT_BUCKETS}
    finally:
        # Free the nodes for the next example: end the job's running tasks, re-enable nodes.
        for row in node_rows:
            try:
                node_operations.enable_scheduling(ctx, "p", row.id)
            except BatchError:
                pass
        try:
            job_service.terminate(ctx, job_id, None)
        except BatchError:
            pass
        _check(ctx, job_id)


def test_a_job_of_terminatejob_completes_from_its_counters(store):
    """onAllTasksComplete reads the counters: the last task ending completes the job."""
    ctx, node_rows = store
    job_id = f"j{next(_jobs)}"
    job_service.create(ctx, {"id": job_id, "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminatejob"})
    task_service.add_collection(ctx, job_id, [task_service.parse_task({"id": f"t{i}", "commandLine": "x"})
                                              for i in range(2)])
    scheduling.schedule(ctx)
    _report(ctx, node_rows, job_id, 0, 0)
    assert job_service.get(ctx, job_id).state == "active"
    _report(ctx, node_rows, job_id, 0, 0)
    assert job_service.get(ctx, job_id).state == "completed"


def test_node_counts_come_from_the_counters(store):
    ctx, node_rows = store
    [entry] = [e for e in pool_service.node_counts(ctx) if e["poolId"] == "p"]
    with ctx.engine.connect() as conn:
        states = dict(conn.execute(select(nodes.c.state, func.count()).group_by(nodes.c.state)).all())
    assert entry["dedicated"]["total"] == len(node_rows)
    assert entry["dedicated"]["idle"] + entry["dedicated"]["running"] + entry["dedicated"]["offline"] == \
        states.get("idle", 0) + states.get("running", 0) + states.get("offline", 0)
    assert entry["lowPriority"]["total"] == 0


def test_metric_history_is_trimmed_in_bounded_batches_by_time(store, monkeypatch):
    """Each sample tick deletes at most TRIM_BATCH × TRIM_BATCHES_PER_TICK old samples, oldest
    first, through the (pool, time) index; newer samples stay."""
    from datetime import timedelta

    from sqlalchemy import delete, insert

    from shoal import clock
    from shoal.service import metrics
    from shoal.store.schema import metric_samples, pools

    ctx, _node_rows = store
    monkeypatch.setattr(metrics, "TRIM_BATCH", 5)
    monkeypatch.setattr(metrics, "TRIM_BATCHES_PER_TICK", 2)
    now = clock.now()
    with ctx.engine.begin() as conn:
        pool_seq = conn.execute(select(pools.c.seq).where(pools.c.key == "p")).scalar_one()
        conn.execute(delete(metric_samples))
        conn.execute(insert(metric_samples), [
            {"pool_seq": pool_seq, "metric": "$ActiveTasks", "node_id": None, "value": float(i),
             "time": now - timedelta(hours=48) + timedelta(seconds=i)} for i in range(12)]
            + [{"pool_seq": pool_seq, "metric": "$ActiveTasks", "node_id": None, "value": -1.0, "time": now}])
        assert metrics.trim_history(conn, [pool_seq], now - metrics.HISTORY) == 10
        left = conn.execute(select(metric_samples.c.value).order_by(metric_samples.c.time)).scalars().all()
        assert left == [10.0, 11.0, -1.0]
        assert metrics.trim_history(conn, [pool_seq], now - metrics.HISTORY) == 2
        assert conn.execute(select(metric_samples.c.value)).scalars().all() == [-1.0]
