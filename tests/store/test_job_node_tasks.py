"""The lookups of job preparation and release state (service/job_prep_nodes.py) are index work:
none reads all of a job's rows or all of a node's, however many there are."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shoal.service import job_prep_nodes as prep
from shoal.store.schema import job_node_tasks
from tests.helpers import sqlite_plan, store_context


def _plan(tmp_path: Any, statement: Any) -> list[str]:
    for ctx in store_context(f"sqlite:///{tmp_path / 'shoal.db'}"):
        return sqlite_plan(ctx.engine, statement)
    raise AssertionError("no store")


def test_a_node_s_pending_runs_are_a_partial_index_seek(tmp_path: Any) -> None:
    for statement in (prep._PENDING_ON_NODE.params(b_node="n"), prep._PENDING_ON_NODES.params(b_nodes=["n", "m"])):
        steps = _plan(tmp_path, statement)
        assert any("ix_job_node_tasks_pending" in step for step in steps), steps
        assert not any(step.startswith("SCAN") for step in steps), steps


def test_owed_releases_and_barred_nodes_are_partial_index_seeks(tmp_path: Any) -> None:
    steps = _plan(tmp_path, prep._OWED.params(b_job=1))
    assert any("ix_job_node_tasks_releases" in step for step in steps), steps
    assert not any(step.startswith("SCAN") for step in steps), steps
    steps = _plan(tmp_path, prep._BARRED.params(b_jobs=[1, 2]))
    assert any("ix_job_node_tasks_barred" in step for step in steps), steps
    assert not any(step.startswith("SCAN") for step in steps), steps


def test_the_status_list_walks_the_job_s_rows_in_order_without_sorting(tmp_path: Any) -> None:
    page = (select(job_node_tasks).where(job_node_tasks.c.job_seq == 1, job_node_tasks.c.prep_state.is_not(None),
                                         job_node_tasks.c.seq > 5).order_by(job_node_tasks.c.seq).limit(10))
    steps = _plan(tmp_path, page)
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in steps), steps


def test_finding_the_rows_of_placed_tasks_is_a_unique_index_seek(tmp_path: Any) -> None:
    steps = _plan(tmp_path, prep._ROWS_OF_JOB_ON.params(b_job=1, b_nodes=["a", "b"]))
    # SQLite names the unique constraint's index sqlite_autoindex_…
    assert any("(job_seq=? AND node_id=?)" in step for step in steps), steps
    assert not any(step.startswith("SCAN") for step in steps), steps
