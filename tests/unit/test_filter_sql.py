"""Task `$filter` in SQL means what the Python evaluator means, and task lists are index walks.

Tasks are generated as plain rows in a real SQLite store (migrated as `shoal up` migrates it);
filters are generated over the properties the store can answer, with literals of every type
(so null, type-mismatch, case-folding and ordering rules are all exercised). The SQL side is the
service's own listing with the conditions `split_for_sql` produced; the reference is the
evaluator over each task's wire form.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from shoal import odata
from shoal.api import render
from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import jobs as job_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.db import open_store
from shoal.store.schema import job_task_counts, tasks
from tests.helpers import sqlite_plan

BASE = datetime(2026, 1, 1, tzinfo=UTC)
STATES = ["active", "running", "completed", "preparing"]
IDS = ["a", "A", "a1", "b", "task-1", "task-10", "task-2", "zz", "Ω", "é"]


def _store(url: str) -> Any:
    engine = open_store(url)
    ensure_account(engine)
    context = Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    job_service.create(context, {"id": "j", "poolInfo": {"poolId": "p"}})
    return context


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SQLite, where the plans are checked."""
    context = _store(f"sqlite:///{tmp_path_factory.mktemp('filters') / 'shoal.db'}")
    yield context
    context.engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_ctx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('filters_any') / 'shoal.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database("filters")
    context = _store(url)
    yield context
    context.engine.dispose()


_seconds = st.integers(min_value=0, max_value=5)
_info = st.fixed_dictionaries({"retryCount": st.integers(0, 2)}, optional={
    "exitCode": st.one_of(st.integers(-2, 3), st.just(2**40)),
    "requeueCount": st.integers(0, 2),
})


@st.composite
def task_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=8, unique_by=str.lower))
    rows = []
    for task_id in ids:
        state = draw(st.sampled_from(STATES))
        info = draw(_info)
        outcome = draw(st.sampled_from(["success", "failure", None])) if state == "completed" else None
        if outcome:
            info["result"] = outcome
        previous = draw(st.sampled_from([None, "active", "running"]))
        created = BASE + timedelta(seconds=draw(_seconds), microseconds=draw(st.sampled_from([0, 1, 500000])))
        rows.append({"id": task_id, "key": task_id.lower(), "state": state, "previous_state": previous,
                     "required_slots": draw(st.integers(1, 3)), "attempt": 0,
                     "spec": {"commandLine": "x"}, "execution_info": info, "etag": "e",
                     "creation_time": created, "last_modified": created + timedelta(seconds=draw(_seconds)),
                     "state_transition_time": created + timedelta(seconds=draw(_seconds)),
                     "previous_state_transition_time": created if previous else None, "outcome": outcome})
    return rows


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_TEXT_PROPS = ["id", "state", "State", "previousState", "executionInfo/result", "ExecutionInfo/Result"]
_NUMBER_PROPS = ["requiredSlots", "executionInfo/exitCode", "executionInfo/retryCount",
                 "executionInfo/requeueCount"]
_TIME_PROPS = ["creationTime", "stateTransitionTime", "lastModified"]
_OPS = ["eq", "ne", "gt", "ge", "lt", "le"]


def _time_literal(draw: st.DrawFn) -> str:
    moment = BASE + timedelta(seconds=draw(st.integers(0, 10)), microseconds=draw(st.sampled_from([0, 1, 500000])))
    style = draw(st.sampled_from(["plain", "datetime", "offset"]))
    if style == "offset":
        return (moment.astimezone(__import__("datetime").timezone(timedelta(hours=2)))
                .isoformat(timespec="microseconds"))
    body = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"datetime'{body}'" if style == "datetime" else body


@st.composite
def literals(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["text", "enum", "number", "null", "bool", "time"]))
    if kind == "text":
        return _quote(draw(st.sampled_from([*IDS, "", "task", "b'", "ACTIVE", "x\u00e9"])))
    if kind == "enum":
        return _quote(draw(st.sampled_from(["active", "Completed", "RUNNING", "success", "Failure", "preparing"])))
    if kind == "number":
        return draw(st.sampled_from(["0", "1", "2", "-1", "2.5", "3.0", "1099511627776", "1e3"]))
    if kind == "null":
        return "null"
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    return _time_literal(draw)


def _matching_literal(prop: str) -> st.SearchStrategy[str]:
    """Mostly literals of the property's own type, where the interesting rules are."""
    if prop in _TEXT_PROPS:
        return st.sampled_from([*IDS, "active", "Completed", "RUNNING", "success", "Failure", "b", ""]).map(_quote)
    if prop in _NUMBER_PROPS:
        return st.sampled_from(["0", "1", "2", "3", "-1", "1.5", "null"])
    return st.composite(lambda draw: _time_literal(draw))()


@st.composite
def leaves(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["compare", "compare", "compare", "flipped", "startswith", "bare"]))
    prop = draw(st.sampled_from(_TEXT_PROPS + _NUMBER_PROPS + _TIME_PROPS))
    if shape == "startswith":
        return f"startswith({prop}, {_quote(draw(st.sampled_from(['', 'a', 'task-', 'A', 'act', 'Ω'])))})"
    if shape == "bare":
        return draw(st.sampled_from(["true", "false", prop]))
    literal = draw(st.one_of(_matching_literal(prop), _matching_literal(prop), literals()))
    op = draw(st.sampled_from(_OPS))
    return f"{literal} {op} {prop}" if shape == "flipped" else f"{prop} {op} {literal}"


def filters() -> st.SearchStrategy[str]:
    return st.recursive(
        leaves(),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda pair: f"{pair[0]} and {pair[1]}"),
            st.tuples(inner, inner).map(lambda pair: f"({pair[0]}) or ({pair[1]})"),
            inner.map(lambda part: f"not ({part})"),
        ),
        max_leaves=4,
    )


def _reset(ctx: Context, rows: list[dict[str, Any]]) -> Any:
    with ctx.engine.begin() as conn:
        job = job_service.load(conn, ctx, "j")
        conn.execute(delete(tasks).where(tasks.c.job_seq == job.seq))
        if rows:
            conn.execute(insert(tasks), [{**row, "job_seq": job.seq} for row in rows])
    return job


def _everything(ctx: Context, *, limit: int = 1000, **filtering: Any) -> list[str]:
    ids: list[str] = []
    token = 0
    for _ in itertools.count():
        page, token_or_none = task_service.list_page(ctx, "j", after_seq=token, limit=limit, **filtering)
        ids.extend(record.row.id for record in page)
        if token_or_none is None:
            return ids
        token = token_or_none


def _on_wire(ctx: Context, rest: odata.Node | None) -> Any:
    """What the API passes the service for the part of a filter SQL left: judged on the wire form."""
    if rest is None:
        return None
    predicate = odata.predicate_of(rest)
    return lambda record: predicate(render.task(ctx.base_url, record))


translated = itertools.count()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=task_rows(), text_filter=filters())
def test_sql_filter_selects_what_the_evaluator_selects(any_ctx, rows, text_filter):
    ctx = any_ctx
    _reset(ctx, rows)
    node = odata.parse_filter(text_filter)
    conditions, rest = odata.split_for_sql(node, task_service.FILTER_PROPERTIES, ctx.engine.dialect.name)
    predicate = odata.predicate_of(node)
    with ctx.engine.connect() as conn:
        job = job_service.load(conn, ctx, "j")
        stored = conn.execute(select(tasks).where(tasks.c.job_seq == job.seq).order_by(tasks.c.seq)).all()
    expected = [row.id for row in stored if predicate(render.task(ctx.base_url, task_service.TaskRecord(job, row)))]
    if rest is None:
        next(translated)
    got = _everything(ctx, conditions=conditions, predicate=_on_wire(ctx, rest))
    assert got == expected, text_filter
    # Small pages and a small window give the same rows in the same order.
    assert _everything(ctx, limit=1, conditions=conditions, predicate=_on_wire(ctx, rest)) == expected


def test_most_generated_filters_were_wholly_sql():
    """Guards the test above from passing because nothing was translated (runs after it)."""
    assert next(translated) > 400  # both backends


@pytest.mark.parametrize("text_filter", [
    "state eq 'active'", "STATE eq 'Completed'", "id ge 'task-1' and id lt 'task-2'",
    "executionInfo/exitCode eq 3", "executionInfo/result eq 'failure'", "requiredSlots gt 1",
    "creationTime gt 2026-01-01T00:00:00Z", "not (state eq 'running') or startswith(id, 'a')",
    "previousState eq null", "executionInfo/exitCode ne null",
])
def test_filters_on_store_properties_translate_entirely(text_filter):
    _conditions, rest = odata.split_for_sql(odata.parse_filter(text_filter), task_service.FILTER_PROPERTIES,
                                           "sqlite")
    assert rest is None


def test_unknown_properties_stay_in_python_and_are_applied():
    node = odata.parse_filter("state eq 'active' and commandLine eq 'x'")
    conditions, rest = odata.split_for_sql(node, task_service.FILTER_PROPERTIES, "sqlite")
    assert len(conditions) == 1 and rest is not None


def _plan(ctx: Context, query: Any) -> list[str]:
    return sqlite_plan(ctx.engine, query)


@pytest.mark.parametrize("text_filter", [
    None, "state eq 'completed'", "executionInfo/exitCode eq 3", "id ge 'a' and id lt 'b'",
    "state eq 'active' or state eq 'running'", "creationTime gt 2020-01-01T00:00:00Z",
])
def test_task_list_queries_are_index_searches_without_sorting(ctx, text_filter):
    conditions, _rest = odata.split_for_sql(odata.parse_filter(text_filter), task_service.FILTER_PROPERTIES,
                                            "sqlite")
    page = select(tasks).where(tasks.c.job_seq == 1, *conditions, tasks.c.seq > 5).order_by(tasks.c.seq).limit(10)
    window = (select(tasks).where(tasks.c.job_seq == 1, *conditions, tasks.c.seq > 5, tasks.c.seq <= 900)
              .order_by(tasks.c.seq))
    for query in (page, window):
        plan = _plan(ctx, query)
        assert len(plan) == 1 and plan[0].startswith("SEARCH tasks USING INDEX ix_tasks_job_"), plan
        assert "TEMP B-TREE" not in " ".join(plan)
    if text_filter == "state eq 'completed'":
        assert "state=?" in _plan(ctx, page)[0]


def test_window_bound_and_counts_are_index_seeks(ctx):
    bound = (select(tasks.c.seq).where(tasks.c.job_seq == 1, tasks.c.seq > 5).order_by(tasks.c.seq)
             .offset(999).limit(1))
    assert _plan(ctx, bound) == ["SEARCH tasks USING COVERING INDEX ix_tasks_job_seq (job_seq=? AND seq>?)"]
    counts = select(job_task_counts).where(job_task_counts.c.job_seq.in_([1]))
    assert _plan(ctx, counts) == ["SEARCH job_task_counts USING INTEGER PRIMARY KEY (rowid=?)"]


@pytest.mark.parametrize("text_filter", ["commandLine eq 'odd'", "executionInfo/exitCode eq 1"])
def test_bounded_requests_return_short_pages_and_lose_nothing(ctx, monkeypatch, text_filter):
    """A filter examined in windows stops at its per-request bound with a token; following the
    tokens finds every match, in order, and no request examines more than the bound."""
    monkeypatch.setattr(task_service, "_PYTHON_WINDOW", 3)
    monkeypatch.setattr(task_service, "_SQL_WINDOW", 3)
    monkeypatch.setattr(task_service, "MAX_EVALUATED_ROWS_PER_PAGE", 6)
    monkeypatch.setattr(task_service, "MAX_INDEX_ENTRIES_PER_PAGE", 6)
    rows = []
    for i in range(40):
        odd = i % 7 == 3
        rows.append({"id": f"t{i:02d}", "key": f"t{i:02d}", "state": "completed", "required_slots": 1, "attempt": 0,
                     "spec": {"commandLine": "odd" if odd else "even"}, "outcome": "failure" if odd else "success",
                     "execution_info": {"retryCount": 0, "exitCode": 1 if odd else 0}, "etag": "e",
                     "creation_time": BASE, "last_modified": BASE, "state_transition_time": BASE})
    _reset(ctx, rows)
    node = odata.parse_filter(text_filter)
    conditions, rest = odata.split_for_sql(node, task_service.FILTER_PROPERTIES, "sqlite")
    found, pages, token = [], [], 0
    while True:
        page, next_token = task_service.list_page(ctx, "j", after_seq=token, limit=1000, conditions=conditions,
                                                  predicate=_on_wire(ctx, rest))
        pages.append(len(page))
        found.extend(record.row.id for record in page)
        if next_token is None:
            break
        token = next_token
    assert found == [f"t{i:02d}" for i in range(40) if i % 7 == 3]
    assert len(pages) >= 40 // 6 and max(pages) <= 2
