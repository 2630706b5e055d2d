"""Heavy reads never stall the control plane: with 200,000 tasks in a job, clients listing it with
a filter and polling its counts do not make a healthy node unusable or restart a running task,
and a cheap GET stays quick meanwhile.

Before store work left the event loop, one filtered listing held the loop for many seconds: the
agents' calls went unread, their nodes were declared silent and their tasks requeued. The server
runs with a 3 s heartbeat timeout here, so such a stall shows within seconds.

The tasks are added through the real API (addtaskcollection, 100 per request, from a few threads
on kept-alive connections) as raw signed requests: the very requests the SDK's create_tasks
sends, built here without the SDK's per-task model objects, which would cost the test more CPU
than the server. So the job is exactly what a client could have made, counters and all.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.sharedkey import sign_request
from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.acceptance.rest import API_VERSION
from tests.helpers import pool_options, wait_for, wait_pool_idle
from tests.security.agents import agent_process

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT_S = 3
BIG_JOB_TASKS = 200_000
LOAD_S = 25
READERS = 4


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("loop")
    running = start_shoal(data_dir, env={"SHOAL_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S)})
    try:
        yield running
    finally:
        stop_shoal(running)
        kill_agents(data_dir)


def _add_tasks(shoal: Any, job_id: str, count: int) -> None:
    local = threading.local()

    def chunk(start: int) -> None:
        body = json.dumps({"value": [{"id": f"t{n:06d}", "commandLine": "/bin/true"}
                                     for n in range(start, min(start + 100, count))]}).encode()
        url = f"{shoal.endpoint}/jobs/{job_id}/addtaskcollection?api-version={API_VERSION}"
        headers = sign_request("POST", url, {"Content-Type": "application/json; odata=minimalmetadata",
                                             "Content-Length": str(len(body))},
                               shoal.account, shoal.primary_key)
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=120)  # kept alive: one connection per thread
        response = local.http.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert all(r["status"] == "success" for r in response.json()["value"]), response.text[:500]

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(chunk, range(0, count, 100)))


def _attempts(client: Any, job_id: str) -> dict[str, tuple[Any, ...]]:
    """Per task: where and when its attempt started, and how often it was retried or requeued."""
    attempts = {}
    for t in client.list_tasks(job_id):
        # A task not yet placed has neither node nor execution info.
        node = t.node_info.node_id if t.node_info else None
        info = t.execution_info
        attempts[t.id] = (t.state, node, info.start_time if info else None, info.retry_count if info else None,
                          info.requeue_count if info else None)
    return attempts


def test_listing_and_counting_a_huge_job_leaves_nodes_and_running_tasks_alone(shoal):
    client = shoal.client()
    # A pool whose two nodes each run one long task, in a job of its own.
    client.create_pool(pool_options("steady", target_dedicated_nodes=2, task_slots_per_node=1))
    # The huge job's pool: one node, which keeps working through the backlog meanwhile.
    client.create_pool(pool_options("crowd", target_dedicated_nodes=1, task_slots_per_node=1))
    wait_pool_idle(client, "steady", 2, timeout=90)
    wait_pool_idle(client, "crowd", 1, timeout=90)
    client.create_job(models.BatchJobCreateOptions(id="long", pool_info=models.BatchPoolInfo(pool_id="steady")))
    client.create_tasks("long", [models.BatchTaskCreateOptions(id=f"long{i}", command_line="/bin/sleep 900")
                                 for i in range(2)])
    wait_for(lambda: all(a[0] == "running" for a in _attempts(client, "long").values()), timeout=60)
    before = _attempts(client, "long")
    assert len({a[1] for a in before.values()}) == 2  # one per node

    client.create_job(models.BatchJobCreateOptions(id="huge", pool_info=models.BatchPoolInfo(pool_id="crowd")))
    started = time.monotonic()
    _add_tasks(shoal, "huge", BIG_JOB_TASKS)
    print(f"\nadded {BIG_JOB_TASKS} tasks in {time.monotonic() - started:.1f} s")
    counts = client.get_job_task_counts("huge").task_counts
    assert counts.active + counts.running + counts.completed == BIG_JOB_TASKS

    stop_at = time.monotonic() + LOAD_S
    listing_s: list[float] = []
    counting_s: list[float] = []
    failures: list[BaseException] = []

    def reader(index: int) -> None:
        own = shoal.client()
        try:
            while time.monotonic() < stop_at:
                began = time.monotonic()
                if index % 2 == 0:
                    # Few matches: the whole job is looked at (every page the server sends).
                    list(own.list_tasks("huge", filter="state eq 'completed' and executionInfo/exitCode ne 0"))
                    listing_s.append(time.monotonic() - began)
                else:
                    own.get_job_task_counts("huge")
                    counting_s.append(time.monotonic() - began)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    for thread in threads:
        thread.start()
    cheap_get_s: list[float] = []
    node_states: set[str] = set()
    while time.monotonic() < stop_at:
        began = time.monotonic()
        client.get_pool("steady")
        cheap_get_s.append(time.monotonic() - began)
        node_states |= {n.state for pool in ("steady", "crowd") for n in client.list_nodes(pool)}
        time.sleep(0.3)
    for thread in threads:
        thread.join(120)
    # Past the load by more than a heartbeat timeout: a node declared silent late shows too.
    time.sleep(HEARTBEAT_TIMEOUT_S + 1)
    node_states |= {n.state for pool in ("steady", "crowd") for n in client.list_nodes(pool)}
    after = _attempts(client, "long")

    def summary(name: str, values: list[float]) -> str:
        if not values:
            return f"{name}: none finished"
        return (f"{name}: n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
                f"max={max(values) * 1000:.0f} ms")

    print(summary("filtered listing", listing_s))
    print(summary("task counts", counting_s))
    print(summary("cheap GET", cheap_get_s))
    print(f"node states seen: {sorted(node_states)}")
    assert not failures, failures
    assert "unusable" not in node_states
    assert after == before, "a running task was requeued or restarted"
    assert listing_s and counting_s
    # Loose on purpose (two shared cores): only a blocked loop takes seconds to answer this.
    assert max(cheap_get_s) < 5.0


def _token(shoal: Any, node_id: str) -> str:
    with sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT token FROM nodes WHERE id = ?", (node_id,)).fetchone()[0]


def test_calls_from_another_incarnation_do_not_keep_a_silent_node_alive(shoal):
    """The heartbeat is the node's current agent calling: a holder of the token alone (an old
    agent process, a thief) keeps no frozen node looking healthy."""
    client = shoal.client()
    client.create_pool(pool_options("frozen", target_dedicated_nodes=1, task_slots_per_node=1))
    node_id = wait_pool_idle(client, "frozen", 1, timeout=90)[0].id
    token = _token(shoal, node_id)
    agent = agent_process(shoal, node_id)
    assert agent is not None
    agent.suspend()  # alive to its provider, silent to the control plane
    try:
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT_S * 5
        while time.monotonic() < deadline and client.get_node("frozen", node_id).state != "unusable":
            response = httpx.post(f"{shoal.endpoint}/agent/v1/nodes/{node_id}/sync", timeout=30,
                                  json={"incarnation": "not-the-agents", "known": [], "wait": False},
                                  headers={"Authorization": f"ShoalNode {token}"})
            assert response.status_code == 200, response.text
            time.sleep(0.3)
        assert client.get_node("frozen", node_id).state == "unusable"
    finally:
        agent.resume()
    # The real agent calls again: the node is back.
    wait_for(lambda: client.get_node("frozen", node_id).state == "idle", timeout=30)
