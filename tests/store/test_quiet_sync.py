"""A sync with nothing to record is answered by reads alone; silence is judged from in-memory
timers, and only by a loop known to be on time (shoal.service.liveness)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from shoal.server import DEFAULT_ACCOUNT, ensure_account
from shoal.service import agents, allocation, scheduling
from shoal.service import jobs as job_service
from shoal.service import nodes as node_service
from shoal.service import pools as pool_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.service.liveness import Liveness
from shoal.store.db import open_store
from shoal.store.schema import nodes

IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


@pytest.fixture
def ctx(tmp_path) -> Iterator[Context]:
    engine = open_store(f"sqlite:///{tmp_path / 'shoal.db'}")
    ensure_account(engine)
    try:
        yield Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    finally:
        engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _node(ctx: Context) -> Any:
    pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 1, "taskSlotsPerNode": 1})
    allocation.reconcile(ctx)
    with ctx.engine.connect() as conn:
        node = conn.execute(select(nodes)).one()
    agents.hello(ctx, node.id, node.token, {"incarnation": "i1", "fileServerUrl": "http://127.0.0.1:1"})
    return node


def _writes(ctx: Context) -> list[str]:
    statements: list[str] = []

    @event.listens_for(ctx.engine, "before_cursor_execute")
    def record(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            statements.append(statement)

    return statements


def _state(ctx: Context) -> str:
    with ctx.engine.connect() as conn:
        return conn.execute(select(nodes.c.state)).scalar_one()


def test_a_quiet_sync_writes_nothing_and_still_delivers_work(ctx):
    node = _node(ctx)
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}})
    task_service.create(ctx, "j", {"id": "t", "commandLine": "/bin/true"})
    scheduling.schedule(ctx)
    writes = _writes(ctx)
    answer = agents.sync_without_writes(ctx, node.id, node.token, {"incarnation": "i1", "known": []})
    assert answer is not None
    assert [a["taskId"] for a in answer.run] == ["t"]
    assert writes == []
    # News to record is not for the read-only path.
    assert agents.sync_without_writes(ctx, node.id, node.token, {
        "incarnation": "i1", "reports": [{"jobId": "j", "taskId": "t", "attempt": 1}]}) is None


def test_a_silent_node_becomes_unusable_and_its_return_is_written(ctx):
    node = _node(ctx)
    clock = Clock()
    board = Liveness(clock)
    board.beat(node.id)
    clock.now += 2
    board.tick()
    assert not node_service.mark_silent_nodes_unusable(ctx, 3.0, board)
    assert _state(ctx) == "idle"
    clock.now += 2
    board.tick()
    assert node_service.mark_silent_nodes_unusable(ctx, 3.0, board)
    assert _state(ctx) == "unusable"
    # Back: the read-only path hands over to the writer, which restores the node.
    body = {"incarnation": "i1", "known": [], "wait": False}
    assert agents.sync_without_writes(ctx, node.id, node.token, body) is None
    agents.sync(ctx, node.id, node.token, body)
    assert _state(ctx) == "idle"


def test_no_node_is_declared_silent_while_the_loop_is_late(ctx):
    node = _node(ctx)
    clock = Clock()
    board = Liveness(clock)
    board.beat(node.id)
    clock.now += 10  # neither the agent's calls nor the loop's own ticks were seen
    writes = _writes(ctx)
    assert not node_service.mark_silent_nodes_unusable(ctx, 3.0, board)
    assert _state(ctx) == "idle" and writes == []
