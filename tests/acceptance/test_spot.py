"""Spot nodes: isDedicated=false, preemption requeues without a retry, capacity comes back."""

from __future__ import annotations

import subprocess
import sys

import pytest
from azure.batch import models

from shoal.testing.server import running_shoal
from tests.helpers import pool_options, wait_for, wait_tasks_done


@pytest.fixture(scope="module")
def spot_shoal(tmp_path_factory):
    # 60× time: a preempted node gets its capacity back after 60 s of scaled time (1 s real).
    with running_shoal(tmp_path_factory.mktemp("spot"),
                       extra_args=["--time-scale", "60", "--spot-recovery", "60", "--spot-capacity", "3"]) as running:
        yield running


@pytest.fixture(scope="module")
def client(spot_shoal):
    return spot_shoal.client()


def _usable(client, pool_id: str, dedicated: bool | None = None) -> list:
    return [n for n in client.list_nodes(pool_id) if n.state in ("idle", "running")
            and (dedicated is None or n.is_dedicated == dedicated)]


def test_preempted_mid_run_task_finishes_elsewhere_without_a_retry(spot_shoal, client):
    client.create_pool(pool_options("spotty", target_low_priority_nodes=2, task_slots_per_node=1))
    nodes = wait_for(lambda: len(_usable(client, "spotty")) == 2 and _usable(client, "spotty"), 30,
                     message="two spot nodes")
    assert all(not n.is_dedicated for n in nodes)
    assert client.get_pool("spotty").current_low_priority_nodes == 2
    client.create_job(models.BatchJobCreateOptions(id="spot-job", pool_info=models.BatchPoolInfo(pool_id="spotty")))
    client.create_task("spot-job", models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 3"))
    task = wait_for(lambda: (t := client.get_task("spot-job", "long")).state == "running" and t, 30,
                    message="task running")
    victim = task.node_info.node_id
    subprocess.run([sys.executable, "-m", "shoal.cli", "node", "preempt", "spotty", victim, "--data-dir",
                    str(spot_shoal.data_dir)], check=True, capture_output=True, timeout=60)
    assert client.get_node("spotty", victim).state == "preempted"
    counts = next(c for c in client.list_pool_node_counts() if c.pool_id == "spotty")
    assert counts.low_priority.preempted == 1
    wait_tasks_done(client, "spot-job", timeout=60)
    done = client.get_task("spot-job", "long")
    assert done.execution_info.result == "success"
    assert done.execution_info.retry_count == 0 and done.execution_info.requeue_count == 0
    assert done.node_info.node_id != victim
    # Capacity comes back: the same node id starts again.
    wait_for(lambda: client.get_node("spotty", victim).state == "idle", 30, message="preempted node back")


def test_dedicated_plus_spot_pool_keeps_serving_while_spot_nodes_come_and_go(spot_shoal, client):
    client.create_pool(pool_options(
        "mixed", target_dedicated_nodes=1, target_low_priority_nodes=1, task_slots_per_node=2,
        metadata=[models.BatchMetadataItem(name="shoal:spotEvictionRate", value="120")]))
    wait_for(lambda: len(_usable(client, "mixed", dedicated=True)) == 1, 30, message="dedicated node")
    client.create_job(models.BatchJobCreateOptions(id="mixed-job", pool_info=models.BatchPoolInfo(pool_id="mixed")))
    client.create_tasks("mixed-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/sleep 0.5")
                                      for i in range(30)])
    seen_preempted = []

    def done() -> bool:
        seen_preempted.extend(n.id for n in client.list_nodes("mixed") if n.state == "preempted")
        counts = client.get_job_task_counts("mixed-job").task_counts
        return counts.active == 0 and counts.running == 0

    wait_for(done, 120, interval=0.1, message="tasks to finish")
    assert seen_preempted, "the eviction rate should have preempted the spot node at least once"
    counts = client.get_job_task_counts("mixed-job").task_counts
    assert counts.succeeded == 30 and counts.failed == 0
    tasks = list(client.list_tasks("mixed-job"))
    assert all(t.execution_info.retry_count == 0 for t in tasks)


def test_scarce_spot_capacity_keeps_a_pool_below_target(client):
    # Capacity is 3 spot nodes for the machine; "spotty" holds 2 and "mixed" 1 (or is evicted).
    client.create_pool(pool_options("starved", target_low_priority_nodes=3))
    pool = wait_for(lambda: (p := client.get_pool("starved")).allocation_state == "steady" and p, 30,
                    message="steady")
    assert pool.current_low_priority_nodes < 3
    assert pool.resize_errors and pool.resize_errors[0].code == "AllocationFailed"


def test_dedicated_nodes_cannot_be_preempted(spot_shoal, client):
    client.create_pool(pool_options("solid", target_dedicated_nodes=1))
    node = wait_for(lambda: _usable(client, "solid") and _usable(client, "solid")[0], 30, message="node")
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "node", "preempt", "solid", node.id, "--data-dir",
                             str(spot_shoal.data_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "NodeNotPreemptible" in result.stdout
