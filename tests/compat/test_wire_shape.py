"""The JSON Shoal answers has the shape Azure Batch's has: the properties Azure always sends (with
the defaults it applied) and none of the empty ones it leaves out.

Each rule was read off traffic recorded against the real service (`../shared/oracle/recordings`,
replayed by `oracle/replay.py`); the comment on each test names the recording. The tests are ours:
they look at raw JSON over signed HTTP, since the SDK's models cannot tell an absent property from
an empty one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.acceptance import rest
from tests.helpers import wait_for

IMAGE = {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
VM_CONFIGURATION = {"imageReference": IMAGE, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}
# The api-version of the azure-sdk-for-python recordings (2023).
RECORDED_2023 = "2023-05-01.17.0"
DEFAULT_IDENTITY = {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}


def _send(shoal: Any, method: str, path: str, body: Any = None, expect: int = 200,
          api_version: str = rest.API_VERSION) -> Any:
    response = rest.call(shoal, method, path, body=None if body is None else json.dumps(body).encode(),
                         api_version=api_version)
    assert response.status_code == expect, (response.status_code, response.text)
    return response.json() if response.content else None


def _create_pool(shoal: Any, pool_id: str, **extra: Any) -> None:
    body = {"id": pool_id, "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": VM_CONFIGURATION, **extra}
    _send(shoal, "POST", "/pools", body, expect=201)


def _steady(shoal: Any, pool_id: str) -> dict[str, Any]:
    return wait_for(lambda: (pool := _send(shoal, "GET", f"/pools/{pool_id}"))["allocationState"] == "steady"
                    and pool, 20, message=f"{pool_id} steady")


@pytest.fixture(scope="module")
def pool_with_node(shoal: Any) -> dict[str, Any]:
    """A pool of one idle node whose start task gave only a command line."""
    _create_pool(shoal, "shape-nodes", targetDedicatedNodes=1,
                 startTask={"commandLine": "/bin/true"})

    def idle() -> Any:
        nodes = _send(shoal, "GET", "/pools/shape-nodes/nodes")["value"]
        return nodes if nodes and nodes[0]["state"] == "idle" else None

    return {"pool": _steady(shoal, "shape-nodes"), "node": wait_for(idle, 60, message="an idle node")[0]}


def test_pool_without_metadata_or_nodes_leaves_both_out(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_scale_pools[sync].json (Pool_Get): a pool created without
    # metadata, with no nodes, has neither `metadata` nor `currentNodeCommunicationMode`.
    _create_pool(shoal, "shape-empty")
    pool = _steady(shoal, "shape-empty")
    assert "metadata" not in pool
    assert "currentNodeCommunicationMode" not in pool
    listed = _send(shoal, "GET", "/pools", None)["value"]
    assert all("metadata" not in p and "currentNodeCommunicationMode" not in p
               for p in listed if p["id"] == "shape-empty")


def test_metadata_replaced_by_none_is_left_out(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_update_pools[sync].json (Pool_UpdateProperties then
    # Pool_Get): updateproperties with `metadata: []` leaves the pool without `metadata`.
    _create_pool(shoal, "shape-meta", metadata=[{"name": "a", "value": "b"}])
    assert _send(shoal, "GET", "/pools/shape-meta")["metadata"] == [{"name": "a", "value": "b"}]
    # At the recording's api-version: certificateReferences left the API with 2024-07-01.20.0.
    _send(shoal, "POST", "/pools/shape-meta/updateproperties",
          {"metadata": [], "applicationPackageReferences": [], "certificateReferences": []}, expect=204,
          api_version=RECORDED_2023)
    assert "metadata" not in _send(shoal, "GET", "/pools/shape-meta")


def test_job_without_metadata_leaves_it_out(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_jobs[sync].json (Job_Get, Job_List): no `metadata` on a
    # job created without any.
    _send(shoal, "POST", "/jobs", {"id": "shape-job", "poolInfo": {"poolId": "shape-empty"}}, expect=201)
    job = _send(shoal, "GET", "/jobs/shape-job")
    assert "metadata" not in job
    assert all("metadata" not in j for j in _send(shoal, "GET", "/jobs")["value"])


def test_task_shows_the_default_user_identity(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_files[async].json (Task_Get) and
    # test_batch_extensions_live.json (Task_List): a task created without a userIdentity shows
    # the pool-scope non-admin auto-user; a partial autoUser is shown with its defaults filled in.
    _send(shoal, "POST", "/jobs", {"id": "shape-tasks", "poolInfo": {"poolId": "shape-empty"}}, expect=201)
    _send(shoal, "POST", "/jobs/shape-tasks/tasks", {"id": "plain", "commandLine": "/bin/true"}, expect=201)
    _send(shoal, "POST", "/jobs/shape-tasks/tasks",
          {"id": "admin", "commandLine": "/bin/true", "userIdentity": {"autoUser": {"elevationLevel": "admin"}}},
          expect=201)
    assert _send(shoal, "GET", "/jobs/shape-tasks/tasks/plain")["userIdentity"] == DEFAULT_IDENTITY
    assert _send(shoal, "GET", "/jobs/shape-tasks/tasks/admin")["userIdentity"] == {
        "autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    listed = {t["id"]: t for t in _send(shoal, "GET", "/jobs/shape-tasks/tasks")["value"]}
    assert listed["plain"]["userIdentity"] == DEFAULT_IDENTITY


def test_pool_start_task_and_image_show_their_defaults(pool_with_node: dict[str, Any]) -> None:
    # azure-sdk-for-node/batchservice-tests.json (Pool_Get, ComputeNode_Get): a start task given
    # only a command line comes back with its user identity, retry count and waitForSuccess; an
    # image reference without a version, with `latest` (test_batch_network_configuration[sync]).
    pool = pool_with_node["pool"]
    assert pool["startTask"] == {"commandLine": "/bin/true", "userIdentity": DEFAULT_IDENTITY,
                                 "maxTaskRetryCount": 0, "waitForSuccess": True}
    assert pool["virtualMachineConfiguration"]["imageReference"] == {**IMAGE, "version": "latest"}
    assert pool_with_node["node"]["startTask"] == pool["startTask"]


def test_pool_with_nodes_shows_its_communication_mode(shoal: Any, pool_with_node: dict[str, Any]) -> None:
    # test_batch.pyTestBatchtest_batch_network_configuration[sync].json (Pool_Get #7): a pool with
    # nodes reports `currentNodeCommunicationMode`.
    assert _send(shoal, "GET", "/pools/shape-nodes")["currentNodeCommunicationMode"] == "simplified"


def test_idle_node_has_the_properties_azure_always_sends(shoal: Any, pool_with_node: dict[str, Any]) -> None:
    # test_batch.pyTestBatchtest_batch_compute_nodes[sync].json and
    # test_batch_extensions_live.json (ComputeNode_List): every node has `endpointConfiguration`
    # and `virtualMachineInfo` (the pool's image with the exact version); once its agent is up,
    # `certificateReferences: []`, `nodeAgentInfo` and `lastBootTime`.
    node = pool_with_node["node"]
    assert node["endpointConfiguration"] == {"inboundEndpoints": []}
    image = node["virtualMachineInfo"]["imageReference"]
    assert {k: image[k] for k in IMAGE} == IMAGE
    assert image["version"] == "latest"
    assert isinstance(image["exactVersion"], str) and image["exactVersion"] not in ("", "latest")
    # At the recordings' api-version (certificates left the API with 2024-07-01.20.0).
    recorded = _send(shoal, "GET", f"/pools/shape-nodes/nodes/{node['id']}", api_version=RECORDED_2023)
    assert recorded["certificateReferences"] == []
    assert "certificateReferences" not in node
    assert set(node["nodeAgentInfo"]) == {"version", "lastUpdateTime"}
    assert "lastBootTime" in node


def test_a_pinned_image_version_is_the_exact_version(shoal: Any) -> None:
    # test_batch_extensions_live.json (ComputeNode_List): exactVersion is what the version
    # resolved to; a pinned version resolves to itself.
    pinned = {**IMAGE, "version": "22.04.202401010"}
    _create_pool(shoal, "shape-pinned", targetDedicatedNodes=1,
                 virtualMachineConfiguration={**VM_CONFIGURATION, "imageReference": pinned})
    nodes = wait_for(lambda: _send(shoal, "GET", "/pools/shape-pinned/nodes")["value"], 30, message="a node")
    assert nodes[0]["virtualMachineInfo"]["imageReference"]["exactVersion"] == "22.04.202401010"
    _send(shoal, "DELETE", "/pools/shape-pinned", expect=202)


def test_evaluating_an_undefined_name_is_an_evaluation_error_not_a_bad_request(shoal: Any) -> None:
    # azure-sdk-for-node/batchservice-tests.json (Pool_EvaluateAutoScale #33): a formula that is a
    # lone undefined name answers 200 with the run's error, and the results show both targets.
    _create_pool(shoal, "shape-autoscale", enableAutoScale=True, autoScaleFormula="$TargetDedicatedNodes = 0")
    run = _send(shoal, "POST", "/pools/shape-autoscale/evaluateautoscale", {"autoScaleFormula": "something_useless"})
    assert run["error"]["code"] == "AutoScalingFormulaEvaluationError"
    assert run["error"]["values"] == [{"name": "Message", "value": "Line 1, Col 1: Undefined symbol: something_useless"}]
    assert run["results"] == "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"


def test_a_task_terminated_before_it_ran_can_be_reactivated(shoal: Any) -> None:
    # azure-sdk-for-node/batchservice-tests.json (Task_Terminate #57, Task_Reactivate #59): a task
    # ended through the API is reactivated (204) and is active again, previously completed.
    _send(shoal, "POST", "/jobs", {"id": "shape-reactivate", "poolInfo": {"poolId": "shape-empty"}}, expect=201)
    _send(shoal, "POST", "/jobs/shape-reactivate/tasks", {"id": "t", "commandLine": "/bin/true"}, expect=201)
    _send(shoal, "POST", "/jobs/shape-reactivate/tasks/t/terminate", expect=204)
    assert _send(shoal, "GET", "/jobs/shape-reactivate/tasks/t")["state"] == "completed"
    _send(shoal, "POST", "/jobs/shape-reactivate/tasks/t/reactivate", expect=204)
    task = _send(shoal, "GET", "/jobs/shape-reactivate/tasks/t")
    assert (task["state"], task["previousState"]) == ("active", "completed")


@pytest.mark.parametrize("image_id", [
    "/subscriptions/0/resourceGroups/test/providers/Microsoft.Compute/gallery/FakeGallery/images/FakeImage/versions/v",
    "/subscriptions/0/resourceGroups/test/providers/Microsoft.Compute/images/FakeImage",
], ids=["malformed", "well-formed"])
def test_a_custom_image_id_is_an_invalid_property_value(shoal: Any, image_id: str) -> None:
    # test_batch.pyTestBatchtest_batch_create_pools[sync].json and
    # azure-sdk-for-node/batchservice-tests.json (Pool_Add of an image pool): 400
    # InvalidPropertyValue naming virtualMachineImageId, whether or not the id is well formed.
    body = {"id": "shape-image", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": {
        "imageReference": {"virtualMachineImageId": image_id}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}}
    response = rest.call(shoal, "POST", "/pools", body=json.dumps(body).encode())
    error = rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert {v["key"]: v["value"] for v in error["values"]}["PropertyName"] == "virtualMachineImageId"


def test_a_subnet_is_an_invalid_property_value(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_create_pools[sync].json (2023-05-01.17.0 and 2025-06-01):
    # a pool in a subnet of another subscription is 400 InvalidPropertyValue naming subnetId.
    subnet = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/test/providers/"
              "Microsoft.Network/virtualNetworks/vnet1/subnets/subnet1")
    body = {"id": "shape-subnet", "vmSize": "standard_d2s_v3", "networkConfiguration": {"subnetId": subnet},
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy",
                                   "sku": "22_04-lts"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}}
    response = rest.call(shoal, "POST", "/pools", body=json.dumps(body).encode())
    error = rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    values = {v["key"]: v["value"] for v in error["values"]}
    assert (values["PropertyName"], values["PropertyValue"]) == ("subnetId", subnet)
    assert rest.call(shoal, "GET", "/pools/shape-subnet").status_code == 404


def test_the_classic_communication_mode_is_accepted_and_kept(shoal: Any) -> None:
    # test_batch.pyTestBatchtest_batch_create_pools[sync].json #001 (Pool_Add with
    # `targetNodeCommunicationMode: classic`, 201) and test_batch.pyTestBatchtest_batch_update_pools
    # [sync].json #001 (Pool_UpdateProperties with it, 204) and #004 (Pool_Get shows it back, and
    # `certificateReferences: []` as updated). Shoal's agents still talk the simplified way.
    _send(shoal, "POST", "/pools", {"id": "shape-classic", "vmSize": "standard_d2s_v3",
                                    "virtualMachineConfiguration": VM_CONFIGURATION,
                                    "targetNodeCommunicationMode": "classic"}, expect=201, api_version=RECORDED_2023)
    assert _send(shoal, "GET", "/pools/shape-classic")["targetNodeCommunicationMode"] == "classic"
    _send(shoal, "POST", "/pools/shape-classic/updateproperties",
          {"certificateReferences": [], "applicationPackageReferences": [],
           "metadata": [{"name": "foo", "value": "bar"}], "targetNodeCommunicationMode": "classic"},
          expect=204, api_version=RECORDED_2023)
    pool = _send(shoal, "GET", "/pools/shape-classic", api_version=RECORDED_2023)
    assert pool["targetNodeCommunicationMode"] == "classic"
    assert pool["certificateReferences"] == []
    assert "currentNodeCommunicationMode" not in pool  # no nodes


def test_a_listed_directory_has_no_properties(shoal: Any, pool_with_node: dict[str, Any]) -> None:
    # batchservice-tests.json #074 (File_ListFromComputeNode of a node's root: directories only,
    # none with `properties`) and test_batch.pyTestBatchtest_batch_files[async].json #011
    # (recursive: directories without, files with `properties`).
    node = pool_with_node["node"]["id"]
    response = rest.call(shoal, "GET", f"/pools/shape-nodes/nodes/{node}/files", params={"recursive": "true"})
    assert response.status_code == 200, response.text
    listed = response.json()["value"]
    directories = [item for item in listed if item["isDirectory"]]
    files = [item for item in listed if not item["isDirectory"]]
    assert directories and files
    assert all(set(item) == {"name", "url", "isDirectory"} for item in directories)
    assert all({"creationTime", "lastModified", "contentLength"} <= set(item["properties"]) for item in files)


@pytest.mark.parametrize("api_version", [RECORDED_2023, "2024-02-01.19.0"])
def test_a_reimage_before_2024_07_needs_a_cloud_service_pool(shoal: Any, pool_with_node: dict[str, Any],
                                                            api_version: str) -> None:
    # test_batch.pyTestBatchtest_batch_compute_nodes[sync].json #009 (ComputeNode_Reimage of a node
    # of a virtual-machine pool at 2023-05-01.17.0): 409 OperationNotValidOnNode, as the
    # 2024-02-01.19.0 OpenAPI document describes the operation. An unknown node is still 404.
    node = pool_with_node["node"]["id"]
    body = json.dumps({"nodeReimageOption": "terminate"}).encode()
    response = rest.call(shoal, "POST", f"/pools/shape-nodes/nodes/{node}/reimage", body=body,
                         api_version=api_version)
    error = rest.assert_batch_error(response, 409, "OperationNotValidOnNode")
    assert {v["key"]: v["value"] for v in error["values"]}["Reason"] == (
        "Operation reimage can be invoked only on pools created with cloudServiceConfiguration")
    assert _send(shoal, "GET", f"/pools/shape-nodes/nodes/{node}")["state"] == "idle"
    missing = rest.call(shoal, "POST", "/pools/shape-nodes/nodes/tvmps_nosuchnode/reimage", body=body,
                        api_version=api_version)
    rest.assert_batch_error(missing, 404, "NodeNotFound")


def test_a_node_keeps_listing_a_task_of_a_deleted_job(shoal: Any, pool_with_node: dict[str, Any]) -> None:
    # test_batch_extensions_live.json #036 (Job_Delete) then #100 (ComputeNode_List at
    # 2022-01-01.15.0): the node's `recentTasks` still shows the deleted job's completed task,
    # with its execution information.
    _send(shoal, "POST", "/jobs", {"id": "shape-gone", "poolInfo": {"poolId": "shape-nodes"}}, expect=201)
    _send(shoal, "POST", "/jobs/shape-gone/tasks", {"id": "myTask", "commandLine": "/bin/true"}, expect=201)
    wait_for(lambda: _send(shoal, "GET", "/jobs/shape-gone/tasks/myTask")["state"] == "completed", 30,
             message="the task completed")
    _send(shoal, "DELETE", "/jobs/shape-gone", expect=202)
    wait_for(lambda: rest.call(shoal, "GET", "/jobs/shape-gone").status_code == 404, 30, message="the job gone")
    node = _send(shoal, "GET", "/pools/shape-nodes/nodes", api_version="2022-01-01.15.0")["value"][0]
    recent = [t for t in node.get("recentTasks", []) if t["jobId"] == "shape-gone"]
    assert recent and recent[0]["taskId"] == "myTask" and recent[0]["taskState"] == "completed"
    assert recent[0]["executionInfo"]["result"] == "success"
    assert recent[0]["taskUrl"].endswith("/jobs/shape-gone/tasks/myTask")
