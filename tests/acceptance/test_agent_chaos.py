"""Chaos (issue 10 acceptance): kill -9 a node's agent mid-task. Its tasks die with it and are
requeued as a recovery (neither retryCount nor requeueCount moves), the node comes back under
the same id, the task runs again and completes, and what the first attempt wrote to stdout can
be read meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.agent.outputs import COPY_CHECK_S
from shoal.testing.server import kill_agents, start_shoal, stop_shoal
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
    # The node is unusable until the provider's next pass starts a new agent on it.
    states = []
    while time.monotonic() - killed_at < 15 and "unusable" not in states:
        states.append(client.get_node(POOL, node.id).state)
        time.sleep(0.02)
    assert "unusable" in states, states
    # The first attempt's output stays readable meanwhile (its copy, then its disk).
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


def test_partial_output_of_a_node_lost_to_kill_9_is_read_from_its_copy(tmp_path):
    """A node no provider restarts (its agent joined by hand, as on a VM of one's own): after
    kill -9 of its agent nothing on the node answers, and the output its task printed so far is
    read from the copy the agent sent while the task ran."""
    shoal = start_shoal(tmp_path / "server", command="server", env={"SHOAL_HEARTBEAT_TIMEOUT_S": "3"})
    agent = None
    agent_log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the agent's stdout, closed below
    try:
        client = shoal.client()
        client.create_pool(pool_options("lost", target_dedicated_nodes=1, task_slots_per_node=1))
        joined = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "join-token", "lost", "--data-dir",
                                 str(shoal.data_dir)], capture_output=True, text=True, timeout=60)
        assert joined.returncode == 0, joined.stderr
        agent = subprocess.Popen([sys.executable, "-m", "shoal.agent", "--join", shoal.endpoint, "--pool", "lost",
                                  "--join-token", joined.stdout.strip(), "--root", str(tmp_path / "node" / "batch")],
                                 stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True)
        node = wait_pool_idle(client, "lost", 1)[0]
        client.create_job(models.BatchJobCreateOptions(id="lost-job", pool_info=models.BatchPoolInfo(pool_id="lost")))
        client.create_task("lost-job", models.BatchTaskCreateOptions(
            id="t", command_line="/bin/sh -c 'echo partial-line; echo partial-err >&2; sleep 120'"))
        wait_task_state(client, "lost-job", "t", "running")
        wait_for(lambda: b"".join(client.download_task_file("lost-job", "t", "stdout.txt")) == b"partial-line\n",
                 15, message="the first output")
        time.sleep(COPY_CHECK_S + 2)  # the agent's next look sends the copy
        os.killpg(agent.pid, signal.SIGKILL)  # the agent and every process of the "VM"
        agent.wait(10)
        wait_for(lambda: client.get_node("lost", node.id).state == "unusable", 30, message="the node unusable")
        task = client.get_task("lost-job", "t")
        assert task.state == "active"
        assert (task.execution_info.retry_count, task.execution_info.requeue_count) == (0, 0)
        assert b"".join(client.download_task_file("lost-job", "t", "stdout.txt")) == b"partial-line\n"
        assert b"".join(client.download_task_file("lost-job", "t", "stderr.txt")) == b"partial-err\n"
        # The node's own log went with its boot; nothing else of the node is served.
        assert sorted(f.name for f in client.list_node_files("lost", node.id)) == ["agent.log"]
    finally:
        agent_log.close()
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        stop_shoal(shoal)
        kill_agents(tmp_path)
