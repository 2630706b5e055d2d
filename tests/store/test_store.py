"""The store and the service rules on both backends: SQLite and a real PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, insert, inspect, select

from shoal.errors import Conflict, NotFound
from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import agents, allocation, scheduling
from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.db import migrate
from shoal.store.schema import nodes
from tests.helpers import store_context

_names = itertools.count()
IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


@pytest.fixture(params=["sqlite", "postgresql"])
def ctx(request: pytest.FixtureRequest, tmp_path) -> Iterator[Context]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shoal.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"store_{next(_names)}")
    yield from store_context(url)


def _pool(ctx: Context, pool_id: str = "p", nodes_wanted: int = 1, slots: int = 2) -> None:
    pool_service.create(ctx, {"id": pool_id, "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": nodes_wanted, "taskSlotsPerNode": slots})


def _bring_up_nodes(ctx: Context) -> list[Any]:
    """The real control-plane path a node takes: allocation creates it, its agent says hello."""
    allocation.reconcile(ctx)
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(nodes)).all()
    for row in rows:
        agents.hello(ctx, row.id, row.token, {"incarnation": "i1", "fileServerUrl": "http://127.0.0.1:1"})
    return rows


def test_migrations_create_the_schema_and_are_idempotent(ctx):
    migrate(ctx.engine)
    tables = set(inspect(ctx.engine).get_table_names())
    assert {"accounts", "pools", "nodes", "jobs", "tasks", "alembic_version"} <= tables


def test_pool_ids_are_unique_case_insensitively(ctx):
    _pool(ctx, "Render")
    with pytest.raises(Conflict) as info:
        _pool(ctx, "render")
    assert info.value.code == "PoolExists"
    assert pool_service.get(ctx, "RENDER").row.id == "Render"
    with pytest.raises(NotFound):
        pool_service.get(ctx, "missing")


def test_tasks_run_and_a_report_completes_a_task_exactly_once(ctx):
    _pool(ctx, slots=2)
    node = _bring_up_nodes(ctx)[0]
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}})
    results = task_service.create_collection(
        ctx, "j", {"value": [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(3)]}, 100)
    assert [r["status"] for r in results] == ["success"] * 3
    assert scheduling.schedule(ctx) == {node.id}
    answer = agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": [], "reports": [], "wait": False})
    assert sorted(a["taskId"] for a in answer.run) == ["t0", "t1"]
    report = {"jobId": "j", "taskId": "t0", "attempt": 1, "exitCode": 0}
    known = [["j", "t0", 1], ["j", "t1", 1]]
    first = agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": known, "reports": [report]})
    second = agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": [*known, ["j", "t2", 1]], "reports": [report]})
    assert first.ack == second.ack == [("j", "t0", 1)]
    # The freed slot went to the waiting task in the same answer.
    assert [a["taskId"] for a in first.run] == ["t2"] and second.run == []
    counts = job_service.task_counts(ctx, "j")["taskCounts"]
    assert counts == {"active": 0, "running": 2, "completed": 1, "succeeded": 1, "failed": 0}
    with ctx.engine.connect() as conn:
        assert conn.execute(select(nodes.c.total_tasks_succeeded)).scalar_one() == 1


def test_failed_task_counts_and_retry(ctx):
    _pool(ctx)
    node = _bring_up_nodes(ctx)[0]
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}, "constraints": {"maxTaskRetryCount": 1}})
    task_service.create(ctx, "j", {"id": "bad", "commandLine": "/bin/false"})
    for attempt in (1, 2):
        scheduling.schedule(ctx)
        agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": [], "reports": [
            {"jobId": "j", "taskId": "bad", "attempt": attempt, "exitCode": 1}]})
    task = task_service.get(ctx, "j", "bad").row
    assert task.state == "completed"
    assert task.execution_info["retryCount"] == 1
    assert task.execution_info["failureInfo"]["code"] == "FailureExitCode"
    assert job_service.task_counts(ctx, "j")["taskCounts"]["failed"] == 1


def test_duplicate_ids_in_a_collection_store_nothing(ctx):
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}})
    from shoal.errors import BadRequest

    with pytest.raises(BadRequest):
        task_service.create_collection(ctx, "j", {"value": [{"id": "a", "commandLine": "x"},
                                                            {"id": "A", "commandLine": "y"}]}, 100)
    page, _ = task_service.list_page(ctx, "j", after_seq=0, limit=10, predicate=None)
    assert page == []


def test_a_silent_node_that_returns_resumes_its_start_task_state(ctx):
    from shoal.service import nodes as node_service
    from shoal.service.liveness import Liveness

    pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 1, "startTask": {"commandLine": "/bin/false"}})
    node = _bring_up_nodes(ctx)[0]
    agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "startTask": {"state": "completed", "exitCode": 1,
                                                         "failure": {"code": "FailureExitCode"}}})
    assert pool_service.get(ctx, "p") and _node_state(ctx) == "starttaskfailed"
    # A board that has not heard from the node since it was made: silent at once for a timeout of -1.
    assert node_service.mark_silent_nodes_unusable(ctx, -1, Liveness())
    assert _node_state(ctx) == "unusable"
    agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": [], "wait": False})
    assert _node_state(ctx) == "starttaskfailed"


def _node_state(ctx: Context) -> str:
    with ctx.engine.connect() as conn:
        return conn.execute(select(nodes.c.state)).scalar_one()


def _store_at_revision(backend: str, tmp_path: Any, request: Any, revision: str) -> Any:
    """A new store (SQLite, or a PostgreSQL database of its own) migrated only up to ``revision``."""
    from alembic import command
    from alembic.config import Config

    from shoal.store.db import MIGRATIONS_DIR, create_store_engine

    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres").create_database(f"upgrade_{next(_names)}"))
    engine = create_store_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return engine


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_an_older_store_keeps_its_data(backend, tmp_path, request):
    """A store at revision 0003 with a completed task upgrades to head with its outcome filled in."""
    engine = _store_at_revision(backend, tmp_path, request, "0003")
    ensure_account(engine)
    ctx = Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    # Written as a server at 0003 wrote them: today's service knows tables 0003 does not have.
    now = datetime.now(UTC)
    with engine.begin() as conn:
        old_jobs = Table("jobs", MetaData(), autoload_with=conn)
        old_tasks = Table("tasks", MetaData(), autoload_with=conn)
        job_seq = conn.execute(insert(old_jobs).values(
            account=DEFAULT_ACCOUNT, id="old", key="old", state="active", priority=0, pool_key="p",
            max_parallel_tasks=-1, spec={}, execution_info={}, etag="0x1", last_modified=now, creation_time=now,
            state_transition_time=now)).inserted_primary_key[0]
        conn.execute(insert(old_tasks).values(
            job_seq=job_seq, id="done", key="done", state="completed", required_slots=1, attempt=0,
            spec={"commandLine": "/bin/true"}, execution_info={"result": "success", "retryCount": 0}, etag="0x1",
            last_modified=now, creation_time=now, state_transition_time=now))
    migrate(engine)
    assert job_service.task_counts(ctx, "old")["taskCounts"]["succeeded"] == 1
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_keeps_every_task_attempt_with_its_task_ids(backend, tmp_path, request):
    """Migration 0031 rebuilds task_attempts (its foreign key's delete rule changes): the attempts
    a store held stay, now with their job and task ids, and new ones number on after them."""
    engine = _store_at_revision(backend, tmp_path, request, "0030")
    ensure_account(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        old_jobs = Table("jobs", MetaData(), autoload_with=conn)
        old_tasks = Table("tasks", MetaData(), autoload_with=conn)
        old_attempts = Table("task_attempts", MetaData(), autoload_with=conn)
        job_seq = conn.execute(insert(old_jobs).values(
            account=DEFAULT_ACCOUNT, id="old", key="old", state="active", priority=0, pool_key="p",
            max_parallel_tasks=-1, spec={}, execution_info={}, etag="0x1", last_modified=now, creation_time=now,
            state_transition_time=now)).inserted_primary_key[0]
        task_seq = conn.execute(insert(old_tasks).values(
            job_seq=job_seq, id="ran", key="ran", state="completed", required_slots=1, attempt=1,
            spec={"commandLine": "/bin/true"}, execution_info={"result": "success", "exitCode": 0},
            etag="0x1", last_modified=now, creation_time=now, state_transition_time=now)).inserted_primary_key[0]
        conn.execute(insert(old_attempts).values(node_id="tvmps_1", task_seq=task_seq, end_time=now,
                                                 end_state="completed"))
    migrate(engine)
    from shoal.store.schema import task_attempts

    with engine.begin() as conn:
        kept = conn.execute(select(task_attempts)).one()
        assert (kept.node_id, kept.task_seq, kept.job_id, kept.task_id) == ("tvmps_1", task_seq, "old", "ran")
        assert kept.execution_info["exitCode"] == 0
        conn.execute(insert(task_attempts).values(node_id="tvmps_1", task_seq=task_seq, end_time=now,
                                                  end_state="completed", job_id="old", task_id="ran",
                                                  execution_info={}))
        assert sorted(conn.execute(select(task_attempts.c.seq)).scalars()) == [kept.seq, kept.seq + 1]
    engine.dispose()


def test_migrations_produce_exactly_the_declared_schema(ctx):
    """schema.py and the Alembic revisions never drift apart (on either backend)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shoal.store.schema import metadata

    with ctx.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_a_schedule_with_the_longest_id_makes_its_jobs_on_either_backend(ctx):
    """`<64-character id>:job-1` is longer than an id: the store keeps it (PostgreSQL enforces
    lengths, migration 0011 widens job ids there)."""
    from shoal.service import job_schedules

    schedule_id = "s" * 64
    job_schedules.add(ctx, job_schedules.parse_create({
        "id": schedule_id, "schedule": {"recurrenceInterval": "PT1M"},
        "jobSpecification": {"poolInfo": {"poolId": "p"}}}))
    assert job_schedules.run_due(ctx) == 1
    assert [job.id for job in job_schedules.list_jobs(ctx, schedule_id)] == [f"{schedule_id}:job-1"]
    assert job_service.get(ctx, f"{schedule_id}:job-1").schedule_seq == job_schedules.get(ctx, schedule_id).seq
    # Due again only at its next run, a minute away: the next pass does nothing.
    assert job_schedules.run_due(ctx) == 0


def test_a_providers_woken_pass_reads_only_the_nodes_it_acts_on_and_its_suspects(ctx):
    """Issue 7: a pass costs what changed. Of 6 nodes, 4 are up (idle): a partial view holds the
    2 still creating and the one suspect named, by an index walk on SQLite; the full view all 6."""
    from shoal.service import nodes as node_service
    from tests.helpers import sqlite_plan

    _pool(ctx, "up", nodes_wanted=4)
    up = _bring_up_nodes(ctx)
    _pool(ctx, "coming", nodes_wanted=2)
    allocation.reconcile(ctx)
    full = node_service.provisioning_view(ctx)
    assert len(full) == 6
    partial = node_service.provisioning_view(ctx, {up[0].id, "no-such-node"})
    assert sorted(r.state for r in partial) == ["creating", "creating", "idle"]
    assert {r.node_id for r in partial} >= {up[0].id}
    assert {r.pool_id for r in partial if r.state == "creating"} == {"coming"}
    assert len(node_service.provisioning_view(ctx, set())) == 2
    if ctx.engine.dialect.name == "sqlite":
        from shoal.model.states import PROVISIONING_NODE_STATES

        plan = sqlite_plan(ctx.engine, select(nodes.c.id).where(nodes.c.state.in_(PROVISIONING_NODE_STATES)))
        assert any("ix_nodes_provisioning" in step for step in plan), plan
