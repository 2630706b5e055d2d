"""Bounded work: account quotas refuse pools and jobs beyond them (409, Batch's codes), core quotas
and the machine's node capacity stop a resize short with a resize error, and a target of a billion
nodes is answered at once while the server keeps answering."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal, kill_agents, start_shoal, stop_shoal
from tests.acceptance import rest
from tests.helpers import pool_options, wait_for

BILLION = 1_000_000_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    """A `shoal up` with small quotas: 3 pools, 2 active jobs, 4 dedicated cores (two D2 nodes),
    no low-priority cores."""
    data_dir: Path = tmp_path_factory.mktemp("quotas")
    env = {"SHOAL_QUOTA_POOLS": "3", "SHOAL_QUOTA_ACTIVE_JOBS": "2", "SHOAL_QUOTA_DEDICATED_CORES": "4",
           "SHOAL_QUOTA_LOW_PRIORITY_CORES": "0"}
    running = start_shoal(data_dir, env=env)
    try:
        yield running
    finally:
        stop_shoal(running)
        kill_agents(data_dir)


@pytest.fixture(scope="module")
def small_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    """A `shoal up` on a machine that hosts one node."""
    data_dir: Path = tmp_path_factory.mktemp("capacity")
    running = start_shoal(data_dir, env={"SHOAL_MAX_NODES": "1"})
    try:
        yield running
    finally:
        stop_shoal(running)
        kill_agents(data_dir)


def steady(client: Any, pool_id: str, timeout: float = 20.0) -> Any:
    return wait_for(lambda: (p := client.get_pool(pool_id)).allocation_state == "steady" and p, timeout,
                    message=f"{pool_id} steady")


def error_codes(pool: Any) -> list[str]:
    return [e.code for e in pool.resize_errors or []]


def test_billion_nodes_answered_quickly_and_server_keeps_answering(limited: RunningShoal) -> None:
    client = limited.client()
    started = time.monotonic()
    client.create_pool(pool_options("huge", target_dedicated_nodes=BILLION, target_low_priority_nodes=BILLION))
    pool = steady(client, "huge", timeout=10)
    assert time.monotonic() - started < 10
    assert set(error_codes(pool)) == {"AccountCoreQuotaReached"}
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (BILLION, 2)  # 4 cores / 2 per node
    assert pool.current_low_priority_nodes == 0
    assert len(list(client.list_nodes("huge"))) == 2
    # The server is not busy creating nodes: requests answer at once, and keep doing so.
    for _ in range(5):
        began = time.monotonic()
        assert rest.call(limited, "GET", "/pools").status_code == 200
        assert time.monotonic() - began < 2
    resize = json.dumps({"targetDedicatedNodes": BILLION}).encode()
    assert rest.call(limited, "POST", "/pools/huge/resize", body=resize).status_code == 202
    pool = steady(client, "huge", timeout=10)
    assert set(error_codes(pool)) == {"AccountCoreQuotaReached"}  # dedicated, and spot still short
    assert len(list(client.list_nodes("huge"))) == 2


def test_core_quota_is_shared_by_the_account(limited: RunningShoal) -> None:
    """`huge` holds all four cores: another pool gets no node, and says why."""
    client = limited.client()
    client.create_pool(pool_options("second", target_dedicated_nodes=1))
    pool = steady(client, "second")
    assert error_codes(pool) == ["AccountCoreQuotaReached"]
    assert pool.current_dedicated_nodes == 0


def test_target_beyond_int32_is_refused(limited: RunningShoal) -> None:
    body = {"targetDedicatedNodes": 2**31}
    response = rest.call(limited, "POST", "/pools/huge/resize", body=json.dumps(body).encode())
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")


def test_pool_quota(limited: RunningShoal) -> None:
    client = limited.client()
    client.create_pool(pool_options("third", target_dedicated_nodes=0))
    body = {"id": "fourth", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04"}}
    response = rest.call(limited, "POST", "/pools", body=json.dumps(body).encode())
    rest.assert_batch_error(response, 409, "PoolQuotaReached")
    assert rest.call(limited, "GET", "/pools/fourth").status_code == 404
    assert rest.call(limited, "DELETE", "/pools/third").status_code == 202  # a deleting pool no longer counts
    assert rest.call(limited, "POST", "/pools", body=json.dumps(body).encode()).status_code == 201


def test_active_job_quota(limited: RunningShoal) -> None:
    client = limited.client()
    for job_id in ("j1", "j2"):
        client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="huge")))
    body = json.dumps({"id": "j3", "poolInfo": {"poolId": "huge"}}).encode()
    rest.assert_batch_error(rest.call(limited, "POST", "/jobs", body=body), 409, "ActiveJobAndScheduleQuotaReached")
    assert rest.call(limited, "GET", "/jobs/j3").status_code == 404
    assert rest.call(limited, "POST", "/jobs/j1/terminate", body=b"{}").status_code == 202  # completed: not counted
    wait_for(lambda: client.get_job("j1").state == "completed", 10)
    assert rest.call(limited, "POST", "/jobs", body=body).status_code == 201


def test_machine_capacity_stops_a_resize_with_an_error(small_machine: RunningShoal) -> None:
    client = small_machine.client()
    started = time.monotonic()
    client.create_pool(pool_options("cap", target_dedicated_nodes=BILLION))
    pool = steady(client, "cap", timeout=10)
    assert time.monotonic() - started < 10
    assert error_codes(pool) == ["AllocationFailed"]
    assert len(list(client.list_nodes("cap"))) == 1
    assert rest.call(small_machine, "GET", "/pools").status_code == 200


def test_billion_node_pool_does_not_wedge_a_restarted_server(tmp_path: Path) -> None:
    """The pool is saved with its billion-node target; the server that starts on that store answers
    at once and the pool stays within the machine."""
    env = {"SHOAL_MAX_NODES": "1"}
    first = start_shoal(tmp_path / "data", env=env)
    try:
        body = json.dumps({"targetDedicatedNodes": BILLION}).encode()
        first.client().create_pool(pool_options("wedge", target_dedicated_nodes=0))
        steady(first.client(), "wedge")
        assert rest.call(first, "POST", "/pools/wedge/resize", body=body).status_code == 202
    finally:
        stop_shoal(first)
    second = start_shoal(tmp_path / "data", env=env)
    try:
        began = time.monotonic()
        assert rest.call(second, "GET", "/pools/wedge").status_code == 200
        assert time.monotonic() - began < 2
        pool = steady(second.client(), "wedge", timeout=10)
        assert error_codes(pool) == ["AllocationFailed"]
        assert len(list(second.client().list_nodes("wedge"))) == 1
    finally:
        stop_shoal(second)
        kill_agents(tmp_path / "data")
