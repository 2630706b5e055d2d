"""Finding the agent processes of a running `shoal up`, for tests that kill or watch them, and the
two-victim-node set-up the protocol tests share."""

from __future__ import annotations

from typing import Any

import psutil
from azure.batch import models

from shoal.testing.server import RunningShoal
from tests.helpers import pool_options, wait_pool_idle, wait_task_state


def agent_process(shoal: RunningShoal, node_id: str) -> psutil.Process | None:
    """The live agent of ``node_id`` (its argv names the node and a root under the nodes dir)."""
    marker = str(shoal.nodes_dir)
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "shoal.agent" in cmdline and node_id in cmdline and any(marker in part for part in cmdline):
            return process
    return None


def agent_pids(shoal: RunningShoal, node_ids: list[str]) -> dict[str, int | None]:
    return {node_id: getattr(agent_process(shoal, node_id), "pid", None) for node_id in node_ids}


def two_nodes_each_running_a_secret_task(client: Any, pool: str, job: str, secret: str) -> dict[str, str]:
    """A two-node pool whose nodes each run one long task ("a", "b") of a job whose environment
    holds ``secret``: node id → the task it runs."""
    client.create_pool(pool_options(pool, target_dedicated_nodes=2, task_slots_per_node=1))
    nodes = wait_pool_idle(client, pool, 2, timeout=60)
    client.create_job(models.BatchJobCreateOptions(
        id=job, pool_info=models.BatchPoolInfo(pool_id=pool),
        common_environment_settings=[models.EnvironmentSetting(name="SECRET", value=secret)]))
    for task_id in ("a", "b"):
        client.create_task(job, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/sleep 600"))
    tasks = {t: wait_task_state(client, job, t, "running", timeout=60) for t in ("a", "b")}
    on_node = {tasks[t].node_info.node_id: t for t in tasks}
    assert set(on_node) == {n.id for n in nodes}, "each node runs one task"
    return on_node
