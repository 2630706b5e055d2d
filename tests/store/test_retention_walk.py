"""The walk of tasks whose retentionTime has passed (shoal/service/tasks.py `expired_folders`),
run by a lifecycle duty every pass: it must read only the expired tasks it returns, however many
completed tasks the store holds (issue 7: bounded, indexed retention deletes)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from shoal import clock
from shoal.model.states import TaskState
from shoal.service import jobs as job_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.schema import tasks
from tests.helpers import sqlite_plan, store_context


@pytest.fixture
def ctx(tmp_path: Any) -> Iterator[Context]:
    for context in store_context(f"sqlite:///{tmp_path / 'shoal.db'}"):
        for job_id in ("kept", "expiring"):
            job_service.create(context, {"id": job_id, "poolInfo": {"poolId": "p"}})
            task_service.create_collection(context, job_id, {"value": [
                {"id": f"t{i}", "commandLine": "/bin/true"} for i in range(50)]}, 0)
        yield context


def _complete(ctx: Context, job_id: str, deadline: Any, count: int | None = None) -> None:
    job = job_service.load(ctx.engine.connect(), ctx, job_id)
    with ctx.engine.begin() as conn:
        seqs = [row.seq for row in conn.execute(tasks.select().where(tasks.c.job_seq == job.seq)
                                                .order_by(tasks.c.seq).limit(count or 10**6))]
        conn.execute(update(tasks).where(tasks.c.seq.in_(seqs)).values(state=TaskState.COMPLETED,
                                                                       retention_deadline=deadline))


def test_the_walk_is_an_index_range_without_a_sort(ctx: Context) -> None:
    # Before: joined to the account's jobs, SQLite walked every completed task of every job
    # (ix_tasks_job_state_slots_seq) and sorted them all, once a lifecycle pass.
    now = clock.now()
    for after in (None, (now, 5)):
        plan = sqlite_plan(ctx.engine, task_service.expired_statement(after, now, 100))
        assert any("USING INDEX ix_tasks_retention (retention_deadline" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan


def test_the_walk_pages_through_expired_tasks_once_each(ctx: Context) -> None:
    _complete(ctx, "kept", clock.now() + timedelta(days=7))
    _complete(ctx, "expiring", clock.now() - timedelta(minutes=1), count=7)
    seen: list[str] = []
    after = None
    for _ in range(10):
        folders, after = task_service.expired_folders(ctx, after, 3)
        assert all(folder.job_id == "expiring" for folder in folders)
        seen += [folder.task_id for folder in folders]
        if after is None:
            break
    assert sorted(seen) == sorted(f"t{i}" for i in range(7)), seen
    assert after is None
