"""Multi-instance tasks in the store on both backends: a gang placed with its subtasks holds a
slot on each of its nodes (the triggers of migration 0027), its subtask's node is told to run
the coordination command, and the task's end frees every node and completes every instance."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from shoal.service import agents, allocation, scheduling
from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.schema import nodes
from tests.helpers import store_context

_names = itertools.count()
IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}
SETTINGS = {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}


@pytest.fixture(params=["sqlite", "postgresql"])
def ctx(request: pytest.FixtureRequest, tmp_path) -> Iterator[Context]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shoal.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"gang_{next(_names)}")
    yield from store_context(url)


def _nodes_up(ctx: Context, count: int) -> list[Any]:
    pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": count, "enableInterNodeCommunication": True})
    allocation.reconcile(ctx)
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(nodes).order_by(nodes.c.allocation_time, nodes.c.id)).all()
    for row in rows:
        agents.hello(ctx, row.id, row.token, {"incarnation": "i1", "fileServerUrl": "http://127.0.0.1:1"})
    return rows


def _used(ctx: Context) -> dict[str, tuple[int, str]]:
    with ctx.engine.connect() as conn:
        return {r.id: (r.used_slots, r.state) for r in conn.execute(select(nodes.c.id, nodes.c.used_slots, nodes.c.state))}


def _sync(ctx: Context, node: Any, known: list[Any], reports: list[Any] | None = None) -> Any:
    return agents.sync(ctx, node.id, node.token, {"incarnation": "i1", "known": known, "reports": reports or [],
                                                   "wait": False})


def test_a_gang_holds_every_node_until_its_primary_ends(ctx: Context) -> None:
    first, second, third = _nodes_up(ctx, 3)
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}})
    task_service.create(ctx, "j", {"id": "gang", "commandLine": "/bin/true", "multiInstanceSettings": SETTINGS})
    task_service.create(ctx, "j", {"id": "big", "commandLine": "/bin/true",
                                   "multiInstanceSettings": {**SETTINGS, "numberOfInstances": 3}})
    task_service.create(ctx, "j", {"id": "plain", "commandLine": "/bin/true"})
    woken = scheduling.schedule(ctx)
    # The gang of 2 took two nodes; the gang of 3 could not have all three and took none, so
    # the ordinary task behind it got the third.
    assert len(woken) == 3
    assert {node: used for node, (used, _state) in _used(ctx).items()} == {first.id: 1, second.id: 1, third.id: 1}
    assert task_service.get(ctx, "j", "big").row.state == "active"
    instances = task_service.subtasks_of(ctx, "j", "gang")
    assert [(s["id"], s["state"]) for s in instances] == [(0, "running"), (1, "running")]
    primary, other = (next(n for n in (first, second, third) if n.id == s["nodeInfo"]["nodeId"]) for s in instances)
    run = {a["taskId"]: a for a in _sync(ctx, other, []).run}
    assert run["gang"]["multiInstance"]["instance"] == 1
    assert run["gang"]["multiInstance"]["coordinationCommandLine"] == "/bin/true"
    assert run["gang"]["multiInstance"]["hosts"] == ["127.0.0.1", "127.0.0.1"]
    # The subtask's node keeps it while it is running and known.
    assert _sync(ctx, other, [["j", "gang", 1]]).kill == []
    # The primary may run the task's command line only once every instance has coordinated.
    known = [["j", "gang", 1]]
    coordinated = {"incarnation": "i1", "known": known, "reports": [], "wait": False, "coordinated": known}
    assert agents.sync(ctx, primary.id, primary.token, coordinated).coordinated_ack == known
    assert _sync(ctx, primary, known).all_coordinated == []
    assert agents.sync(ctx, other.id, other.token, coordinated).coordinated_ack == known
    assert _sync(ctx, primary, known).all_coordinated == known
    # The primary ends: the task completes, both nodes are free, the subtask's node kills it.
    _sync(ctx, primary, [], [{"jobId": "j", "taskId": "gang", "attempt": 1, "exitCode": 0}])
    assert task_service.get(ctx, "j", "gang").row.state == "completed"
    assert [(s["state"], s.get("result")) for s in task_service.subtasks_of(ctx, "j", "gang")] == [
        ("completed", "success"), ("completed", "success")]
    assert _sync(ctx, other, [["j", "gang", 1]]).kill == [["j", "gang", 1, "stale"]]
    used = _used(ctx)
    assert used[primary.id][0] == 0 and used[other.id][0] == 0
    assert used[primary.id][1] == "idle" or used[other.id][1] == "idle"


def test_a_subtask_report_fails_the_attempt_and_frees_every_node(ctx: Context) -> None:
    nodes_up = _nodes_up(ctx, 2)
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}})
    task_service.create(ctx, "j", {"id": "gang", "commandLine": "/bin/true", "multiInstanceSettings": SETTINGS})
    scheduling.schedule(ctx)
    instances = task_service.subtasks_of(ctx, "j", "gang")
    other = next(n for n in nodes_up if n.id == instances[1]["nodeInfo"]["nodeId"])
    _sync(ctx, other, [], [{"jobId": "j", "taskId": "gang", "attempt": 1, "exitCode": 5}])
    row = task_service.get(ctx, "j", "gang").row
    assert (row.state, row.execution_info["exitCode"], row.execution_info["failureInfo"]["code"]) == (
        "completed", 5, "FailureExitCode")
    subtask = task_service.subtasks_of(ctx, "j", "gang")[1]
    assert (subtask["exitCode"], subtask["result"], subtask["failureInfo"]["code"]) == (5, "failure", "SubtaskFailed")
    assert all(used == 0 for used, _state in _used(ctx).values())


def test_active_tasks_count_a_waiting_multi_instance_task_once_per_instance(ctx: Context) -> None:
    from shoal.service import metrics
    from shoal.store.schema import pools

    pool_service.create(ctx, {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": IMAGE,
                              "targetDedicatedNodes": 0, "enableInterNodeCommunication": True})
    job_service.create(ctx, {"id": "j", "poolInfo": {"poolId": "p"}, "usesTaskDependencies": True})
    task_service.create(ctx, "j", {"id": "plain", "commandLine": "/bin/true"})
    task_service.create(ctx, "j", {"id": "gang", "commandLine": "/bin/true",
                                   "multiInstanceSettings": {**SETTINGS, "numberOfInstances": 4}})
    # Blocked by its dependency: not counted at all until it is ready.
    task_service.create(ctx, "j", {"id": "later", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["plain"]},
                                   "multiInstanceSettings": {**SETTINGS, "numberOfInstances": 3}})

    def active() -> float:
        with ctx.engine.connect() as conn:
            pool = conn.execute(select(pools).where(pools.c.id == "p")).one()
            return metrics.pool_counts(conn, pool)["$ActiveTasks"]

    assert active() == 1 + 4
    task_service.terminate(ctx, "j", "plain")  # satisfies nothing by default, but ends "plain"
    task_service.delete_task(ctx, "j", "gang")
    assert active() == 0
