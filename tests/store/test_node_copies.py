"""The copies of removed nodes' logs are bounded: kept for a retention after the node's record
goes, at most MAX_REMOVED_FILES of them, and never touched while the node exists
(service/node_copies.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from shoal import clock
from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import node_copies
from shoal.service.context import Context
from shoal.store.db import open_store
from shoal.store.schema import node_logs


@pytest.fixture
def ctx(tmp_path) -> Iterator[Context]:
    engine = open_store(f"sqlite:///{tmp_path / 'shoal.db'}")
    ensure_account(engine)
    try:
        yield Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    finally:
        engine.dispose()


def _count(ctx: Context) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(node_logs)).scalar_one())


def test_copies_of_gone_nodes_go_after_the_retention_and_others_stay(ctx):
    long_ago = clock.now() - node_copies.REMOVED_RETENTION - timedelta(minutes=1)
    with ctx.engine.begin() as conn:
        # No node record exists for these: kept as removed.
        node_copies.keep(conn, ctx.account, "p", "old", {node_copies.AGENT_LOG: (b"old", 3)}, long_ago)
        node_copies.keep(conn, ctx.account, "p", "recent", {node_copies.AGENT_LOG: (b"new", 3)})
        node_copies.keep(conn, ctx.account, "p", "recent", node_copies.start_task_copies(
            {"stdout": (b"out", 3), "stderr": (b"", 0)}))
    assert _count(ctx) == 4
    assert node_copies.Purge()(ctx) == 1
    with ctx.engine.connect() as conn:
        assert node_copies.files_of(conn, ctx.account, "p", "old") == []
        kept = node_copies.files_of(conn, ctx.account, "p", "recent")
        assert [(f.name, f.data) for f in kept] == [("agent.log", b"new"), ("startup/stdout.txt", b"out"),
                                                    ("startup/stderr.txt", b"")]
        # Another account's or pool's node of that id sees nothing.
        assert node_copies.files_of(conn, "other", "p", "recent") == []
        assert node_copies.files_of(conn, ctx.account, "q", "recent") == []


def test_a_copy_replaces_the_last_and_the_count_cap_drops_the_oldest(ctx, monkeypatch):
    monkeypatch.setattr(node_copies, "MAX_REMOVED_FILES", 3)
    start = clock.now() - timedelta(hours=1)
    with ctx.engine.begin() as conn:
        for index in range(5):
            node_copies.keep(conn, ctx.account, "p", f"n{index}", {node_copies.AGENT_LOG: (b"x", 1)},
                             start + timedelta(seconds=index))
        node_copies.keep(conn, ctx.account, "p", "n4", {node_copies.AGENT_LOG: (b"again", 5)},
                         start + timedelta(seconds=4))
    assert _count(ctx) == 5
    assert node_copies.Purge()(ctx) == 2
    with ctx.engine.connect() as conn:
        assert [n for n in ("n0", "n1", "n2", "n3", "n4") if node_copies.files_of(conn, ctx.account, "p", n)] == \
            ["n2", "n3", "n4"]
        assert node_copies.files_of(conn, ctx.account, "p", "n4")[0].data == b"again"


def test_gone_starts_the_retention_only_of_the_nodes_named(ctx):
    with ctx.engine.begin() as conn:
        node_copies.keep(conn, ctx.account, "p", "a", {node_copies.AGENT_LOG: (b"a", 1)})
        conn.execute(node_logs.update().values(removed=None))  # as if their nodes still existed
        node_copies.keep(conn, ctx.account, "p", "b", {node_copies.AGENT_LOG: (b"b", 1)})
        conn.execute(node_logs.update().where(node_logs.c.node_id == "b").values(removed=None))
        node_copies.gone(conn, ["a"], clock.now() - node_copies.REMOVED_RETENTION - timedelta(seconds=1))
    assert node_copies.Purge()(ctx) == 1
    with ctx.engine.connect() as conn:
        assert node_copies.files_of(conn, ctx.account, "p", "b")
