"""Chaos (issue 10 acceptance): kill -9 a node's agent mid-task. Its tasks die with it and are
requeued as a recovery (neither retryCount nor requeueCount moves), the node comes back under
the same id, the task runs again and completes, and what the first attempt wrote to stdout can
be read meanwhile."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.helpers import agent_processes, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "chaos"
JOB = "chaos-job"
# The first attempt writes a line and waits; the second finds the marker and finishes.
COMMAND = ("/bin/sh -c 'echo attempt-started; if [ -e $AZ_BATCH_NODE_SHARED_DIR/seen ]; then echo rerun; exit 0; "
           "fi; touch $AZ_BATCH_NODE_SHARED_DIR/seen; sleep 60'")


def _stdout(client: Any) -> bytes | None:
    try:
        return b"".join(client.download_task_file(JOB, "victim", "stdout.txt"))
    except HttpResponseError:
        return None


def test_kill_9_of_an_agent_mid_task_requeues_as_a_recovery_and_the_node_comes_back(client):
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=1))
    node = wait_pool_idle(client, POOL, 1)[0]
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    client.create_task(JOB, models.BatchTaskCreateOptions(id="victim", command_line=COMMAND))
    wait_task_state(client, JOB, "victim", "running")
    wait_for(lambda: (_stdout(client) or b"").startswith(b"attempt-started"), 15, message="first output")
    agents = agent_processes(node.id)
    assert agents
    for agent in agents:
        os.kill(agent.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # The first attempt's output stays readable while the node recovers (its disk survives).
    seen_output = False
    while time.monotonic() - killed_at < 20:
        out = _stdout(client)
        seen_output = seen_output or (out is not None and out.startswith(b"attempt-started"))
        task = client.get_task(JOB, "victim")
        if task.state == "completed":
            break
        time.sleep(0.2)
    task = wait_task_state(client, JOB, "victim", "completed", timeout=60)
    assert seen_output
    assert task.execution_info.result == "success"
    assert (task.execution_info.retry_count, task.execution_info.requeue_count) == (0, 0)
    assert b"rerun" in (_stdout(client) or b"")
    # The same node is back and usable; the killed attempt's processes are gone.
    wait_for(lambda: [(n.id, n.state) for n in client.list_nodes(POOL)] == [(node.id, "idle")], 30,
             message="node back")
    assert not [p for p in agents if p.is_running() and p.status() != "zombie"]
