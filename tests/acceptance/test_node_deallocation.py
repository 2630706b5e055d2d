"""Deallocate and start a node (issue 10 item 2; api-version 2025-06-01): the node stops with
its disk kept, runs nothing while deallocated, and starts again as the same node, rerunning its
start task."""

from __future__ import annotations

from typing import Any

import pytest
from azure.batch import models
from azure.batch.models._models import BatchNodeDeallocateOptions

from tests.acceptance import rest
from tests.helpers import agent_processes, error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "dealloc"
JOB = "dealloc-job"
BOOTS = "/bin/sh -c 'echo boot >> $AZ_BATCH_NODE_SHARED_DIR/boots.txt'"


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=1,
                                    start_task=models.BatchStartTask(command_line=BOOTS, wait_for_success=True)))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return wait_pool_idle(client, POOL, 1)[0]


def _state(client: Any, node: Any) -> str:
    return client.get_node(POOL, node.id).state


def _boots(client: Any, node: Any) -> int:
    return b"".join(client.download_node_file(POOL, node.id, "shared/boots.txt")).count(b"boot")


def test_a_deallocated_node_keeps_its_disk_runs_nothing_and_starts_again(client, node):
    client.create_task(JOB, models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 30"))
    wait_task_state(client, JOB, "long", "running")
    client.begin_deallocate_node(POOL, node.id, BatchNodeDeallocateOptions(node_deallocate_option="requeue"),
                                 polling_interval=0.2).result()
    wait_for(lambda: _state(client, node) == "deallocated", 30, message="deallocated")
    assert not agent_processes(node.id)  # the "VM" is stopped: no agent, no task
    task = client.get_task(JOB, "long")
    assert task.state == "active" and task.execution_info.requeue_count == 1
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}[POOL]
    assert counts.dedicated.deallocated == 1 and counts.dedicated.total == 1
    # Nothing runs on it meanwhile, and a second deallocation is refused.
    again = BatchNodeDeallocateOptions(node_deallocate_option="requeue")
    assert error_of(lambda: client.begin_deallocate_node(POOL, node.id, again).result())[:2] == (409, "NodeNotReady")
    client.begin_start_node(POOL, node.id, polling_interval=0.2).result()
    wait_for(lambda: _state(client, node) in ("idle", "running"), 30, message="started again")
    assert [n.id for n in client.list_nodes(POOL)] == [node.id]  # the same node
    assert _boots(client, node) == 2  # its disk was kept and its start task ran again
    assert wait_task_state(client, JOB, "long", "running", timeout=30).node_info.node_id == node.id
    client.terminate_task(JOB, "long")


def test_only_a_deallocated_node_starts_and_older_api_versions_have_neither(shoal, client, node):
    wait_for(lambda: _state(client, node) == "idle", 30)
    assert error_of(lambda: client.begin_start_node(POOL, node.id).result())[:2] == (409, "NodeNotDeallocated")
    for operation in ("deallocate", "start"):
        response = rest.call(shoal, "POST", f"/pools/{POOL}/nodes/{node.id}/{operation}", body=b"",
                             api_version="2024-07-01.20.0")
        rest.assert_batch_error(response, 404, "InvalidUri")
    response = rest.call(shoal, "POST", f"/pools/{POOL}/nodes/{node.id}/deallocate",
                         body=b'{"nodeDeallocateOption": "later"}')
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")
