"""Inputs that once crash-looped every agent of a pool or froze them (issue 6, item 4).

Against a real `shoal up` with a pool of two nodes, each bad task is sent as raw signed REST.
The API may refuse it (a 4xx with a Batch error body; the API checks live elsewhere), or accept
it; then the agent must refuse to start it, and the task must end `completed` with a `usererror`
failureInfo, not be requeued from agent to agent. Either way both agents keep running (same
pids, nodes never unusable) and a normal task added afterwards completes at once. The agent's own
defence is also proven without the API in tests/agent/test_process.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal
from tests.acceptance.rest import call
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_task_state
from tests.security.agents import agent_pids

POOL = "bad-inputs"
JOB = "bad-inputs-job"
NODES = 2

BAD_TASKS: dict[str, dict[str, Any]] = {
    "nul-in-command-line": {"commandLine": "echo a\u0000b"},
    "equals-in-environment-name": {"commandLine": "true", "environmentSettings": [{"name": "A=B", "value": "1"}]},
    "nul-in-environment-name": {"commandLine": "true", "environmentSettings": [{"name": "A\u0000B", "value": "1"}]},
    "nul-in-environment-value": {"commandLine": "true",
                                 "environmentSettings": [{"name": "GOOD", "value": "a\u0000b"}]},
    "nul-in-user-name": {"commandLine": "true", "userIdentity": {"userName": "x\u0000y"}},
    # One 3.9 MB word: parsed on the agent's event loop, this froze both agents for minutes.
    "huge-command-line": {"commandLine": "echo " + "a" * 3_900_000},
    "command-line-over-batchs-cap": {"commandLine": "echo " + "a" * 8187},
}


@pytest.fixture(scope="module")
def pool(shoal: RunningShoal, client: Any) -> list[str]:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=NODES, task_slots_per_node=2))
    nodes = [n.id for n in wait_pool_idle(client, POOL, NODES, timeout=60)]
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return nodes


def add_task(shoal: RunningShoal, body: dict[str, Any]) -> int:
    response = call(shoal, "POST", f"/jobs/{JOB}/tasks", body=json.dumps(body).encode())
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()
        assert error["code"] and error["message"]["value"], error
    return response.status_code


def assert_agents_unchanged(shoal: RunningShoal, client: Any, before: dict[str, int | None]) -> None:
    assert agent_pids(shoal, list(before)) == before, "an agent died or was restarted"
    states = {n.id: n.state for n in client.list_nodes(POOL)}
    assert all(state in ("idle", "running") for state in states.values()), states


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_a_bad_task_fails_alone_and_the_agents_live_on(
    shoal: RunningShoal, client: Any, pool: list[str], case: str
) -> None:
    before = agent_pids(shoal, pool)
    assert all(before.values()), before
    task_id = f"bad-{case}"
    status = add_task(shoal, {"id": task_id, **BAD_TASKS[case]})
    if status < 400:
        task = wait_task_state(client, JOB, task_id, "completed", timeout=30)
        info = task.execution_info
        assert info.result == "failure", info
        assert info.failure_info is not None and info.failure_info.category == "usererror", info
        assert info.failure_info.code and info.failure_info.message, info.failure_info
        assert info.exit_code is None, info  # nothing ran
        assert info.requeue_count == 0, info  # no agent died over it
        assert len(info.failure_info.message) < 1000, info.failure_info.message  # no 3.9 MB echo
    assert_agents_unchanged(shoal, client, before)

    # The pool still works, at once: a normal task right after the bad one completes.
    good_id = f"good-after-{case}"
    began = time.monotonic()
    assert add_task(shoal, {"id": good_id, "commandLine": "sh -c 'echo fine'"}) == 201
    task = wait_task_state(client, JOB, good_id, "completed", timeout=15)
    assert task.execution_info.exit_code == 0 and task.execution_info.failure_info is None
    assert time.monotonic() - began < 15
    assert_agents_unchanged(shoal, client, before)


def test_bad_tasks_all_at_once_leave_every_slot_usable(shoal: RunningShoal, client: Any, pool: list[str]) -> None:
    """Every bad input together, more of them than slots, then as many normal tasks as slots:
    all normal ones complete side by side."""
    before = agent_pids(shoal, pool)
    for round_ in range(2):
        for case, body in BAD_TASKS.items():
            add_task(shoal, {"id": f"bulk{round_}-{case}", **body})
    good = [f"bulk-good{i}" for i in range(NODES * 2)]
    for task_id in good:
        assert add_task(shoal, {"id": task_id, "commandLine": "sleep 1"}) == 201
    wait_for(lambda: all(client.get_task(JOB, t).state == "completed" for t in good), timeout=30,
             message="normal tasks after a burst of bad ones")
    for task_id in good:
        assert client.get_task(JOB, task_id).execution_info.exit_code == 0
    assert_agents_unchanged(shoal, client, before)
