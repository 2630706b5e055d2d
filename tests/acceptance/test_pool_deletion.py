"""A deleted pool stays visible as `deleting` until its nodes are gone, as on Azure: GET and list
show it, every change (a second delete, a resize, adding a pool with its id) is 409
PoolBeingDeleted, a restarted server carries the deletion on, and the jobs on it wait for the
next pool of that id."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.acceptance import rest
from tests.helpers import frozen_agent, pool_options, wait_for, wait_pool_idle, wait_task_state

POLL_S = 0.1


def _code_of(call: Any) -> tuple[int, str]:
    with pytest.raises(HttpResponseError) as info:
        call()
    return info.value.status_code, info.value.response.json()["code"]


def _gone(client: Any, pool_id: str) -> bool:
    try:
        client.get_pool(pool_id)
    except HttpResponseError as exc:
        return exc.status_code == 404
    return False


def _assert_refused_while_deleting(client: Any, pool_id: str) -> None:
    calls = {
        "second delete": lambda: client.begin_delete_pool(pool_id, polling_interval=POLL_S),
        "add again": lambda: client.create_pool(pool_options(pool_id)),
        "resize": lambda: client.begin_resize_pool(
            pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=POLL_S),
        "stop resize": lambda: client.begin_stop_pool_resize(pool_id, polling_interval=POLL_S),
        "patch": lambda: client.update_pool(pool_id, models.BatchPoolUpdateOptions(display_name="x")),
        "enable autoscale": lambda: client.enable_pool_auto_scale(
            pool_id, models.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=1;")),
        "disable autoscale": lambda: client.disable_pool_auto_scale(pool_id),
    }
    for name, call in calls.items():
        assert _code_of(call) == (409, "PoolBeingDeleted"), name


def test_an_empty_deleted_pool_is_deleting_before_it_is_gone(shoal, client):
    client.create_pool(pool_options("del-empty"))
    wait_for(lambda: client.get_pool("del-empty").allocation_state == "steady", 10, message="steady pool")
    deleted_at = time.monotonic()
    client.begin_delete_pool("del-empty", polling_interval=POLL_S)
    pool = client.get_pool("del-empty")
    assert (pool.state, pool.target_dedicated_nodes, pool.current_dedicated_nodes) == ("deleting", 0, 0)
    assert {p.id: p.state for p in client.list_pools()}["del-empty"] == "deleting"
    assert [p.id for p in client.list_pools(filter="state eq 'deleting'")] == ["del-empty"]
    assert rest.call(shoal, "HEAD", "/pools/del-empty").status_code == 200
    _assert_refused_while_deleting(client, "del-empty")
    # Azure still answers `deleting` a second after DELETE (recorded); so does Shoal.
    time.sleep(max(0.0, deleted_at + 1.0 - time.monotonic()))
    assert client.get_pool("del-empty").state == "deleting"
    wait_for(lambda: _gone(client, "del-empty"), 15, message="deleted pool to go")
    # The id is free again once the pool is gone.
    client.create_pool(pool_options("del-empty"))
    assert client.get_pool("del-empty").state == "active"


def test_a_pool_with_a_stuck_node_stays_deleting_until_the_node_leaves(client):
    client.create_pool(pool_options("del-stuck", target_dedicated_nodes=1))
    node = wait_pool_idle(client, "del-stuck", 1)[0]
    with frozen_agent(node.id):
        client.begin_delete_pool("del-stuck", polling_interval=POLL_S)
        time.sleep(3.0)  # longer than an empty pool takes: the node keeps it
        assert client.get_pool("del-stuck").state == "deleting"
        assert [n.id for n in client.list_nodes("del-stuck")] == [node.id]
        _assert_refused_while_deleting(client, "del-stuck")
    wait_for(lambda: _gone(client, "del-stuck"), 20, message="pool to go once its node left")


def test_tasks_of_a_deleted_pool_wait_for_the_next_pool_of_that_id(client):
    client.create_pool(pool_options("del-job", target_dedicated_nodes=1))
    old_node = wait_pool_idle(client, "del-job", 1)[0]
    client.create_job(models.BatchJobCreateOptions(id="del-job", pool_info=models.BatchPoolInfo(pool_id="del-job")))
    client.create_task("del-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/sleep 2"))
    wait_task_state(client, "del-job", "t", "running")
    client.begin_delete_pool("del-job", polling_interval=POLL_S).result(timeout=30)
    # Deleting requeues what ran; the job stays active, waiting for a pool of its id.
    assert client.get_task("del-job", "t").state == "active"
    assert client.get_job("del-job").state == "active"
    client.create_job(models.BatchJobCreateOptions(id="del-job-2", pool_info=models.BatchPoolInfo(pool_id="del-job")))
    client.create_pool(pool_options("del-job", target_dedicated_nodes=1))
    task = wait_task_state(client, "del-job", "t", "completed", timeout=60)
    assert task.execution_info.result == "success"
    assert task.node_info.node_id != old_node.id


def test_a_restarted_server_carries_the_deletion_on(tmp_path):
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        client.create_pool(pool_options("del-restart", target_dedicated_nodes=1))
        node = wait_pool_idle(client, "del-restart", 1)[0]
        port = int(shoal.endpoint.rsplit(":", 1)[1])
        with frozen_agent(node.id):
            client.begin_delete_pool("del-restart", polling_interval=POLL_S)
            # kill -9 leaves the agent running (here: frozen), its node still to leave.
            stop_shoal(shoal, sig=signal.SIGKILL)
            shoal = start_shoal(tmp_path, port=port)
            client = shoal.client()
            assert client.get_pool("del-restart").state == "deleting"
            assert {p.id: p.state for p in client.list_pools()} == {"del-restart": "deleting"}
            _assert_refused_while_deleting(client, "del-restart")
        wait_for(lambda: _gone(client, "del-restart"), 60, message="deletion to finish after the restart")
        client.create_pool(pool_options("del-restart"))
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
