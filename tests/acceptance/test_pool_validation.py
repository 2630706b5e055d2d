"""Pool request validation as Azure Batch does it: a 400 naming the property, and nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance import rest
from tests.helpers import image, pool_options, wait_for


def error_of(exc: HttpResponseError) -> tuple[int, str, dict[str, str]]:
    body = exc.response.json()
    return exc.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


@pytest.fixture(scope="module")
def existing(client: Any) -> str:
    client.create_pool(pool_options("valid-existing", metadata=[models.BatchMetadataItem(name="k", value="v")]))
    # Steady first: the end of the initial sizing changes the ETag the tests compare.
    wait_for(lambda: client.get_pool("valid-existing").allocation_state == "steady", 10, message="steady pool")
    return "valid-existing"


def snapshot(client: Any) -> list[str]:
    # Ids only: pools created by other tests still move from resizing to steady (a new ETag).
    return [p.id for p in client.list_pools()]


# (case, create options, expected code, property named in `values`)
CREATE_CASES = [
    ("id-characters", lambda: pool_options("bad id!"), "InvalidPropertyValue", "id"),
    ("id-dot", lambda: pool_options("bad.id"), "InvalidPropertyValue", "id"),
    ("id-too-long", lambda: pool_options("x" * 65), "InvalidPropertyValue", "id"),
    ("slots-zero", lambda: pool_options("v-slots0", task_slots_per_node=0), "InvalidPropertyValue",
     "taskSlotsPerNode"),
    # standard_d2s_v3 has 2 vCPUs: at most 4 x 2 = 8 slots.
    ("slots-over-vcpus", lambda: pool_options("v-slots9", task_slots_per_node=9), "InvalidPropertyValue",
     "taskSlotsPerNode"),
    # 120 vCPUs would allow 480 slots, but 256 is the cap for every size.
    ("slots-over-256", lambda: pool_options("v-slots257", vm_size="standard_hb120rs_v2", task_slots_per_node=257),
     "InvalidPropertyValue", "taskSlotsPerNode"),
    ("negative-dedicated", lambda: pool_options("v-neg", target_dedicated_nodes=-1), "InvalidPropertyValue",
     "targetDedicatedNodes"),
    ("negative-spot", lambda: pool_options("v-negspot", target_low_priority_nodes=-2), "InvalidPropertyValue",
     "targetLowPriorityNodes"),
    ("autoscale-and-dedicated", lambda: pool_options("v-auto", enable_auto_scale=True,
                                                     auto_scale_formula="$TargetDedicatedNodes=1;",
                                                     target_dedicated_nodes=1),
     "InvalidPropertyValue", "targetDedicatedNodes"),
    ("autoscale-and-spot", lambda: pool_options("v-auto2", enable_auto_scale=True,
                                                auto_scale_formula="$TargetDedicatedNodes=1;",
                                                target_low_priority_nodes=1),
     "InvalidPropertyValue", "targetLowPriorityNodes"),
    ("unknown-vm-size", lambda: pool_options("v-size", vm_size="standard_nonexistent_v9"), "InvalidPropertyValue",
     "vmSize"),
    ("missing-vm-size", lambda: models.BatchPoolCreateOptions(id="v-novm", virtual_machine_configuration=image()),
     "MissingRequiredProperty", "vmSize"),
    ("missing-vm-configuration", lambda: models.BatchPoolCreateOptions(id="v-novmc", vm_size="standard_d2s_v3"),
     "MissingRequiredProperty", "virtualMachineConfiguration"),
    ("unknown-node-agent", lambda: models.BatchPoolCreateOptions(
        id="v-agent", vm_size="standard_d2s_v3",
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=image().image_reference, node_agent_sku_id="batch.node.windows amd64")),
     "InvalidPropertyValue", "virtualMachineConfiguration.nodeAgentSKUId"),
    ("resize-timeout-too-short", lambda: pool_options("v-rt", resize_timeout="PT1M"), "InvalidPropertyValue",
     "resizeTimeout"),
    ("display-name-too-long", lambda: pool_options("v-dn", display_name="d" * 1025), "InvalidPropertyValue",
     "displayName"),
    ("start-task-without-command", lambda: pool_options("v-st", start_task=models.BatchStartTask(command_line="")),
     "InvalidPropertyValue", "startTask.commandLine"),
]


@pytest.mark.parametrize(("options", "code", "prop"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES])
def test_invalid_create_is_refused_and_nothing_stored(client, existing, options, code, prop):
    before = snapshot(client)
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(options())
    status, got_code, values = error_of(info.value)
    assert (status, got_code, values.get("PropertyName")) == (400, code, prop)
    assert snapshot(client) == before


def test_size_limits_are_inclusive(client):
    # The boundaries themselves are accepted: 8 slots on 2 vCPUs, 256 on 120 vCPUs, 64-character ids.
    client.create_pool(pool_options("v-edge8", task_slots_per_node=8))
    client.create_pool(pool_options("v-edge256", vm_size="Standard_HB120rs_v2", task_slots_per_node=256))
    client.create_pool(pool_options("e" * 64))
    assert client.get_pool("v-edge8").task_slots_per_node == 8
    assert client.get_pool("v-edge256").task_slots_per_node == 256
    assert client.get_pool("E" * 64).id == "e" * 64


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "InvalidRequestBody"),
    (b"[1, 2]", "InvalidRequestBody"),
    (b"", "InvalidRequestBody"),
    (b'{"id": 5, "vmSize": "standard_d2s_v3"}', "InvalidPropertyValue"),
], ids=["malformed", "array", "empty", "id-not-string"])
def test_bad_request_bodies(shoal, client, existing, body, code):
    before = snapshot(client)
    response = rest.call(shoal, "POST", "/pools", body=body)
    rest.assert_batch_error(response, 400, code)
    assert snapshot(client) == before


UPDATE_CASES = [
    ("resize-negative", lambda c, p: c.begin_resize_pool(p, models.BatchPoolResizeOptions(target_dedicated_nodes=-1)),
     "InvalidPropertyValue", "targetDedicatedNodes"),
    ("resize-timeout", lambda c, p: c.begin_resize_pool(p, models.BatchPoolResizeOptions(
        target_dedicated_nodes=1, resize_timeout="PT10S")), "InvalidPropertyValue", "resizeTimeout"),
    ("resize-option", lambda c, p: c.begin_resize_pool(p, models.BatchPoolResizeOptions(
        target_dedicated_nodes=1, node_deallocation_option="later")), "InvalidPropertyValue",
     "nodeDeallocationOption"),
    ("patch-start-task", lambda c, p: c.update_pool(p, models.BatchPoolUpdateOptions(
        start_task=models.BatchStartTask(command_line=""))), "InvalidPropertyValue", "startTask.commandLine"),
    ("patch-metadata", lambda c, p: c.update_pool(p, models.BatchPoolUpdateOptions(
        metadata=[models.BatchMetadataItem(name="", value="x")])), "InvalidPropertyValue", "metadata[0].name"),
    ("remove-too-many", lambda c, p: c.begin_remove_nodes(p, models.BatchNodeRemoveOptions(
        node_ids=[f"n{i}" for i in range(101)])), "InvalidPropertyValue", "nodeList"),
]


@pytest.mark.parametrize(("call", "code", "prop"), [c[1:] for c in UPDATE_CASES], ids=[c[0] for c in UPDATE_CASES])
def test_invalid_changes_leave_the_pool_alone(client, existing, call, code, prop):
    before = client.get_pool(existing)
    with pytest.raises(HttpResponseError) as info:
        call(client, existing)
    status, got_code, values = error_of(info.value)
    assert (status, got_code, values.get("PropertyName")) == (400, code, prop)
    after = client.get_pool(existing)
    assert (after.etag, after.target_dedicated_nodes, after.allocation_state) == (
        before.etag, before.target_dedicated_nodes, before.allocation_state)
    assert [(m.name, m.value) for m in after.metadata] == [("k", "v")]


def test_bad_query_parameters(client, existing):
    with pytest.raises(HttpResponseError) as info:
        list(client.list_pools(max_results=0))
    assert error_of(info.value)[:2] == (400, "InvalidQueryParameterValue")
    with pytest.raises(HttpResponseError) as info:
        list(client.list_pools(filter="id eq"))
    assert error_of(info.value)[:2] == (400, "InvalidQueryParameterValue")


def test_json_round_trip_of_create_body(shoal, client):
    """The same body the SDK sends, posted raw, creates an identical pool (wire-format sanity)."""
    body = {"id": "v-raw", "vmSize": "Standard_D2s_v3", "taskSlotsPerNode": 4,
            "virtualMachineConfiguration": image().as_dict()}
    response = rest.call(shoal, "POST", "/pools", body=json.dumps(body).encode())
    assert response.status_code == 201, response.text
    pool = client.get_pool("v-raw")
    assert (pool.vm_size, pool.task_slots_per_node) == ("standard_d2s_v3", 4)
