"""Every api-version since 2020-03-01.11.0 is served with its own shape (shoal/api/versions.py).

Each difference tested here is one the SDK of that version shows: a property its models lack is
refused in a body and absent from answers; a renamed one is read and written under the old name.
Raw signed HTTP, since an SDK would never send what its version does not define.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.api.versions import VERSIONS
from tests.acceptance import rest
from tests.helpers import wait_for

V11, V12, V14, V15, V16, V17, V18, V19, V20, V2025 = VERSIONS
VM_CONFIGURATION = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy",
                                       "sku": "22_04-lts"},
                    "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


def _send(shoal: Any, method: str, path: str, version: str, body: Any = None, expect: int = 200) -> Any:
    response = rest.call(shoal, method, path, api_version=version,
                         body=None if body is None else json.dumps(body).encode())
    assert response.status_code == expect, (version, response.status_code, response.text)
    return response.json() if response.content else None


def _pool(pool_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": pool_id, "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": VM_CONFIGURATION, **extra}


def _refused(shoal: Any, method: str, path: str, version: str, body: Any, property_path: str) -> None:
    response = rest.call(shoal, method, path, api_version=version, body=json.dumps(body).encode())
    error = rest.assert_batch_error(response, 400, "InvalidRequestBody")
    assert {"key": "PropertyName", "value": property_path} in error["values"], error


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_since_2020_is_served(shoal: Any, version: str) -> None:
    assert "value" in _send(shoal, "GET", "/pools", version)


def test_a_version_azure_does_not_serve_is_refused(shoal: Any) -> None:
    response = rest.call(shoal, "GET", "/pools", api_version="2019-08-01.10.0")
    rest.assert_batch_error(response, 400, "InvalidApiVersion")


def test_max_tasks_per_node_is_task_slots_per_node_before_2020_09(shoal: Any) -> None:
    # azure-batch 9.0.0 (2020-03-01.11.0) models CloudPool.maxTasksPerNode; 10.0.0 renamed it.
    _send(shoal, "POST", "/pools", V11, _pool("v-slots", maxTasksPerNode=3), expect=201)
    old = _send(shoal, "GET", "/pools/v-slots", V11)
    assert old["maxTasksPerNode"] == 3 and "taskSlotsPerNode" not in old
    new = _send(shoal, "GET", "/pools/v-slots", V12)
    assert new["taskSlotsPerNode"] == 3 and "maxTasksPerNode" not in new
    listed = _send(shoal, "GET", "/pools", V11, None)["value"]
    assert [p["maxTasksPerNode"] for p in listed if p["id"] == "v-slots"] == [3]


def test_each_spelling_of_the_slots_is_refused_where_it_is_not_defined(shoal: Any) -> None:
    _refused(shoal, "POST", "/pools", V11, _pool("v-new-name", taskSlotsPerNode=2), "taskSlotsPerNode")
    _refused(shoal, "POST", "/pools", V12, _pool("v-old-name", maxTasksPerNode=2), "maxTasksPerNode")
    _refused(shoal, "POST", "/pools", V2025, _pool("v-old-name", maxTasksPerNode=2), "maxTasksPerNode")


@pytest.mark.parametrize(("version", "accepted"), [(V15, False), (V16, True)])
def test_node_communication_mode_exists_from_2022_10(shoal: Any, version: str, accepted: bool) -> None:
    pool = _pool(f"v-mode-{accepted}", targetNodeCommunicationMode="simplified")
    if not accepted:
        _refused(shoal, "POST", "/pools", version, pool, "targetNodeCommunicationMode")
        return
    _send(shoal, "POST", "/pools", version, pool, expect=201)
    assert _send(shoal, "GET", f"/pools/{pool['id']}", version)["targetNodeCommunicationMode"] == "simplified"
    assert "targetNodeCommunicationMode" not in _send(shoal, "GET", f"/pools/{pool['id']}", V15)


def test_upgrade_policy_exists_from_2024_02(shoal: Any) -> None:
    _refused(shoal, "POST", "/pools", V18, _pool("v-upgrade", upgradePolicy={"mode": "manual"}), "upgradePolicy")
    _send(shoal, "POST", "/pools", V19, _pool("v-upgrade", upgradePolicy={"mode": "manual"}), expect=201)
    assert _send(shoal, "GET", "/pools/v-upgrade", V19)["upgradePolicy"] == {"mode": "manual"}
    assert "upgradePolicy" not in _send(shoal, "GET", "/pools/v-upgrade", V18)


def test_pool_patch_changes_the_display_name_only_from_2025_06(shoal: Any) -> None:
    _send(shoal, "POST", "/pools", V19, _pool("v-patch"), expect=201)
    _refused(shoal, "PATCH", "/pools/v-patch", V20, {"displayName": "renamed"}, "displayName")
    _send(shoal, "PATCH", "/pools/v-patch", V2025, {"displayName": "renamed"})
    assert _send(shoal, "GET", "/pools/v-patch", V20)["displayName"] == "renamed"


def test_start_task_resource_file_identities_exist_from_2021_06(shoal: Any) -> None:
    start = {"commandLine": "/bin/true", "resourceFiles": [
        {"httpUrl": "http://example.invalid/a", "filePath": "a", "identityReference": {"resourceId": "x"}}]}
    _refused(shoal, "POST", "/pools", V12, _pool("v-identity", startTask=start),
             "startTask.resourceFiles[0].identityReference")


@pytest.fixture(scope="module")
def job_with_tasks(shoal: Any) -> str:
    _send(shoal, "POST", "/pools", V11, _pool("v-run", targetDedicatedNodes=1, maxTasksPerNode=2), expect=201)
    _send(shoal, "POST", "/jobs", V11, {"id": "v-job", "poolInfo": {"poolId": "v-run"}}, expect=201)
    _send(shoal, "POST", "/jobs/v-job/addtaskcollection", V11,
          {"value": [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(3)]})
    wait_for(lambda: _send(shoal, "GET", "/jobs/v-job/taskcounts", V12)["taskCounts"]["completed"] == 3, 60,
             message="three tasks done")
    return "v-job"


def test_task_counts_before_2020_09_are_the_counts_alone(shoal: Any, job_with_tasks: str) -> None:
    # Recorded at 2020-03-01.11.0 (azure-sdk-for-node batchservice-tests.json, "should count tasks"):
    # `{"odata.metadata": "…#taskcounts/@Element", "active": 0, "running": 0, "completed": 4, …}`.
    old = _send(shoal, "GET", f"/jobs/{job_with_tasks}/taskcounts", V11)
    assert old["odata.metadata"].endswith("$metadata#taskcounts/@Element")
    assert {k: v for k, v in old.items() if k != "odata.metadata"} == {
        "active": 0, "running": 0, "completed": 3, "succeeded": 3, "failed": 0}
    new = _send(shoal, "GET", f"/jobs/{job_with_tasks}/taskcounts", V12)
    assert new["odata.metadata"].endswith("$metadata#taskcountsresult/@Element")
    assert new["taskCounts"]["succeeded"] == 3 and new["taskSlotCounts"]["succeeded"] == 3


def test_required_slots_exist_from_2020_09(shoal: Any, job_with_tasks: str) -> None:
    task = _send(shoal, "GET", f"/jobs/{job_with_tasks}/tasks/t0", V11)
    assert "requiredSlots" not in task
    assert _send(shoal, "GET", f"/jobs/{job_with_tasks}/tasks/t0", V12)["requiredSlots"] == 1
    assert all("requiredSlots" not in t for t in _send(shoal, "GET", f"/jobs/{job_with_tasks}/tasks", V11)["value"])
    _refused(shoal, "POST", f"/jobs/{job_with_tasks}/tasks", V11,
             {"id": "slots", "commandLine": "/bin/true", "requiredSlots": 1}, "requiredSlots")
    _refused(shoal, "POST", f"/jobs/{job_with_tasks}/addtaskcollection", V11,
             {"value": [{"id": "ok", "commandLine": "/bin/true"},
                        {"id": "slots", "commandLine": "/bin/true", "requiredSlots": 1}]}, "value[1].requiredSlots")


def test_node_shape_follows_the_version(shoal: Any, job_with_tasks: str) -> None:
    node = _send(shoal, "GET", "/pools/v-run/nodes", V11)["value"][0]
    assert "runningTaskSlotsCount" not in node and "virtualMachineInfo" not in node
    assert "certificateReferences" in node
    node = _send(shoal, "GET", "/pools/v-run/nodes", V14)["value"][0]
    assert "runningTaskSlotsCount" in node and "virtualMachineInfo" in node
    # Certificates left the API with 2024-07-01.20.0.
    assert "certificateReferences" not in _send(shoal, "GET", f"/pools/v-run/nodes/{node['id']}", V20)


def test_job_limits_exist_from_2021_06_and_2022_01(shoal: Any, job_with_tasks: str) -> None:
    job = _send(shoal, "GET", f"/jobs/{job_with_tasks}", V12)
    assert "maxParallelTasks" not in job and "allowTaskPreemption" not in job
    job = _send(shoal, "GET", f"/jobs/{job_with_tasks}", V14)
    assert job["maxParallelTasks"] == -1 and "allowTaskPreemption" not in job
    assert _send(shoal, "GET", f"/jobs/{job_with_tasks}", V15)["allowTaskPreemption"] is False
    _refused(shoal, "POST", "/jobs", V12, {"id": "v-par", "poolInfo": {"poolId": "v-run"}, "maxParallelTasks": 2},
             "maxParallelTasks")
    _refused(shoal, "PATCH", f"/jobs/{job_with_tasks}", V14, {"allowTaskPreemption": False}, "allowTaskPreemption")
    # PUT (job update) learnt maxParallelTasks a version after add and PATCH did.
    _refused(shoal, "PUT", f"/jobs/{job_with_tasks}", V14, {"poolInfo": {"poolId": "v-run"}, "maxParallelTasks": 2},
             "maxParallelTasks")


def test_node_counts_follow_the_version(shoal: Any, job_with_tasks: str) -> None:
    counts = {c["poolId"]: c for c in _send(shoal, "GET", "/nodecounts", V18)["value"]}["v-run"]
    assert "upgradingOS" not in counts["dedicated"] and "deallocated" not in counts["dedicated"]
    counts = {c["poolId"]: c for c in _send(shoal, "GET", "/nodecounts", V20)["value"]}["v-run"]
    assert "upgradingOS" in counts["dedicated"] and "deallocated" not in counts["lowPriority"]
    counts = {c["poolId"]: c for c in _send(shoal, "GET", "/nodecounts", V2025)["value"]}["v-run"]
    assert counts["dedicated"]["deallocated"] == 0
