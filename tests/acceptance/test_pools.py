"""Pools through the official SDK against a real `shoal up`: CRUD, listing, resizing, node removal,
deletion (agents and node folders gone), conflicts and conditional requests."""

from __future__ import annotations

import json
from typing import Any

import psutil
import pytest
from azure.batch import models
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
)

from tests.acceptance import rest
from tests.helpers import agent_processes, frozen_agent, pool_options, wait_for, wait_pool_idle

# The SDK's long-running operations poll every 5 s by default; the local provider is much faster.
POLL_S = 0.1


def _status_and_headers(response: Any, _body: Any, headers: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return response.http_response.status_code, headers


def error_of(exc: HttpResponseError) -> tuple[int, str, dict[str, str]]:
    body = exc.response.json()
    return exc.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def create_steady(client: Any, options: Any) -> None:
    """Create a pool and wait out its initial sizing, which changes the ETag and refuses resizes."""
    client.create_pool(options)
    wait_for(lambda: client.get_pool(options.id).allocation_state == "steady", 10, message=f"{options.id} steady")


def pool_missing(client: Any, pool_id: str) -> bool:
    """HEAD /pools/{id} answered 404. SDK 15.1.0's error policy raises on the 404 that `pool_exists`
    means to turn into False, so both outcomes count."""
    try:
        return client.pool_exists(pool_id) is False
    except ResourceNotFoundError as exc:
        return exc.status_code == 404


def test_create_get_exists_headers(client):
    status, headers = client.create_pool(pool_options("crud-a", display_name="first"), cls=_status_and_headers)
    assert status == 201
    assert headers["ETag"] and headers["Last-Modified"] is not None
    assert headers["DataServiceId"].endswith("/pools/crud-a")
    pool = client.get_pool("crud-a")
    assert (pool.id, pool.display_name, pool.state, pool.vm_size) == ("crud-a", "first", "active", "standard_d2s_v3")
    assert pool.task_slots_per_node == 1 and pool.target_dedicated_nodes == 0
    assert pool.virtual_machine_configuration.node_agent_sku_id == "batch.node.ubuntu 22.04"
    assert pool.etag and pool.creation_time and pool.last_modified
    assert client.pool_exists("crud-a") is True
    assert client.pool_exists("CRUD-A") is True  # ids are case-insensitive
    assert pool_missing(client, "crud-missing")


def test_create_location_header_raw(shoal):
    body = {"id": "crud-raw", "vmSize": "standard_d2s_v3",
            "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical",
                                                               "offer": "0001-com-ubuntu-server-jammy",
                                                               "sku": "22_04-lts", "version": "latest"},
                                            "nodeAgentSKUId": "batch.node.ubuntu 22.04"}}
    response = rest.call(shoal, "POST", "/pools", body=json.dumps(body).encode())
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"{shoal.endpoint}/pools/crud-raw"
    assert response.headers["ETag"] and response.headers["Last-Modified"] and response.headers["request-id"]


def test_list_paging_filter_select(client):
    for i in range(5):
        client.create_pool(pool_options(f"page-{i}"))
    client.create_pool(pool_options("other-page"))
    pages = list(client.list_pools(max_results=2, filter="startswith(id,'page-')").by_page())
    assert len(pages) == 3
    assert [p.id for page in pages for p in page] == [f"page-{i}" for i in range(5)]
    ids = {p.id for p in client.list_pools(filter="state eq 'active'")}
    assert {"other-page", "page-0"} <= ids
    selected = list(client.list_pools(filter="id eq 'page-3'", select=["id", "state"]))
    assert len(selected) == 1
    assert (selected[0].id, selected[0].state, selected[0].vm_size, selected[0].etag) == (
        "page-3", "active", None, None)
    one = client.get_pool("page-4", select=["id", "vmSize"])
    assert (one.id, one.vm_size, one.state) == ("page-4", "standard_d2s_v3", None)


def test_update_pool_patch_and_replace_properties(client):
    client.create_pool(pool_options(
        "upd", metadata=[models.BatchMetadataItem(name="a", value="1")],
        start_task=models.BatchStartTask(command_line="/bin/true", wait_for_success=False)))
    before = client.get_pool("upd")
    client.update_pool("upd", models.BatchPoolUpdateOptions(
        metadata=[models.BatchMetadataItem(name="b", value="2")], display_name="renamed"))
    after = client.get_pool("upd")
    assert [(m.name, m.value) for m in after.metadata] == [("b", "2")]
    assert after.display_name == "renamed"
    # PATCH keeps what it does not mention.
    assert after.start_task.command_line == "/bin/true"
    assert after.etag != before.etag and after.last_modified >= before.last_modified

    status, _ = client.replace_pool_properties("upd", models.BatchPoolReplaceOptions(
        metadata=[], application_package_references=[],
        start_task=models.BatchStartTask(command_line="/bin/echo hi")), cls=_status_and_headers)
    assert status == 204
    replaced = client.get_pool("upd")
    assert replaced.start_task.command_line == "/bin/echo hi"
    assert not replaced.metadata
    client.replace_pool_properties("upd", models.BatchPoolReplaceOptions(metadata=[], application_package_references=[]))
    # updateproperties replaces everything updatable: an absent start task is removed.
    assert client.get_pool("upd").start_task is None


def test_not_found_and_exists_errors(client):
    client.create_pool(pool_options("dup"))
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(pool_options("DUP"))
    assert error_of(info.value)[:2] == (409, "PoolExists")
    for call in (lambda: client.get_pool("nope"),
                 lambda: client.update_pool("nope", models.BatchPoolUpdateOptions(display_name="x")),
                 lambda: client.begin_resize_pool("nope", models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                                                  polling_interval=POLL_S),
                 lambda: client.begin_delete_pool("nope", polling_interval=POLL_S).result()):
        with pytest.raises(HttpResponseError) as info:
            call()
        assert error_of(info.value)[:2] == (404, "PoolNotFound")


def test_resize_up_and_down_with_node_counts(client):
    create_steady(client, pool_options("rsz", target_dedicated_nodes=1))
    wait_pool_idle(client, "rsz", 1)
    client.begin_resize_pool("rsz", models.BatchPoolResizeOptions(target_dedicated_nodes=3),
                             polling_interval=POLL_S).result()
    nodes = wait_pool_idle(client, "rsz", 3)
    wait_for(lambda: client.get_pool("rsz").allocation_state == "steady", 10, message="steady after grow")
    pool = client.get_pool("rsz")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (3, 3)
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["rsz"]
    assert (counts.dedicated.idle, counts.dedicated.total, counts.low_priority.total) == (3, 3, 0)

    client.begin_resize_pool("rsz", models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=POLL_S).result()
    remaining = wait_pool_idle(client, "rsz", 1)
    assert remaining[0].id in {n.id for n in nodes}
    wait_for(lambda: client.get_pool("rsz").allocation_state == "steady", 10, message="steady after shrink")
    assert client.get_pool("rsz").current_dedicated_nodes == 1
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["rsz"]
    assert counts.dedicated.total == 1


def test_remove_nodes(client):
    client.create_pool(pool_options("rm", target_dedicated_nodes=2))
    nodes = wait_pool_idle(client, "rm", 2)
    wait_for(lambda: client.get_pool("rm").allocation_state == "steady", 10, message="steady")
    victim = nodes[0].id
    client.begin_remove_nodes("rm", models.BatchNodeRemoveOptions(node_ids=[victim]),
                              polling_interval=POLL_S).result()

    def gone_or_leaving() -> bool:
        states = {n.id: n.state for n in client.list_nodes("rm")}
        return victim not in states or states[victim] == "leavingpool"

    wait_for(gone_or_leaving, 10, message="removed node to leave")
    wait_for(lambda: [n.id for n in client.list_nodes("rm")] == [nodes[1].id], 10, message="node gone")
    pool = client.get_pool("rm")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (1, 1)
    wait_for(lambda: not agent_processes(victim), 15, message="removed node's agent to exit")
    with pytest.raises(HttpResponseError) as info:
        client.begin_remove_nodes("rm", models.BatchNodeRemoveOptions(node_ids=["tvmps_" + "0" * 64 + "_d"]),
                                  polling_interval=POLL_S)
    assert error_of(info.value)[:2] == (404, "NodeNotFound")


def test_resize_conflicts_and_stop_resize(client):
    client.create_pool(pool_options("busy", target_dedicated_nodes=2))
    nodes = wait_pool_idle(client, "busy", 2)
    wait_for(lambda: client.get_pool("busy").allocation_state == "steady", 10, message="steady")
    with frozen_agent(nodes[0].id):
        # A frozen node cannot leave, so the removal keeps the pool resizing.
        client.begin_remove_nodes("busy", models.BatchNodeRemoveOptions(node_ids=[nodes[0].id]),
                                  polling_interval=POLL_S)
        assert client.get_pool("busy").allocation_state == "resizing"
        assert client.get_node("busy", nodes[0].id).state == "leavingpool"
        counts = list(client.list_pool_node_counts(filter="poolId eq 'busy'"))
        assert [c.pool_id for c in counts] == ["busy"]
        assert (counts[0].dedicated.leaving_pool, counts[0].dedicated.idle) == (1, 1)
        assert client.get_pool("busy").current_dedicated_nodes == 1
        with pytest.raises(HttpResponseError) as info:
            client.begin_resize_pool("busy", models.BatchPoolResizeOptions(target_dedicated_nodes=3),
                                     polling_interval=POLL_S)
        assert error_of(info.value)[:2] == (409, "PoolBeingResized")
        with pytest.raises(HttpResponseError) as info:
            client.begin_remove_nodes("busy", models.BatchNodeRemoveOptions(node_ids=[nodes[1].id]),
                                      polling_interval=POLL_S)
        assert error_of(info.value)[:2] == (409, "PoolBeingResized")
        client.begin_stop_pool_resize("busy", polling_interval=POLL_S).result()
        pool = client.get_pool("busy")
        assert pool.allocation_state == "steady"
        assert [e.code for e in pool.resize_errors] == ["ResizeStopped"]
    wait_for(lambda: len(list(client.list_nodes("busy"))) == 1, 15, message="removed node to go after thaw")


def test_delete_pool_stops_agents_and_removes_node_folders(shoal, client):
    client.create_pool(pool_options("del", target_dedicated_nodes=2))
    nodes = wait_pool_idle(client, "del", 2)
    folders = [shoal.nodes_dir / n.id for n in nodes]
    processes = [p for n in nodes for p in agent_processes(n.id)]
    assert all(f.is_dir() for f in folders) and len(processes) == 2
    with frozen_agent(nodes[0].id):
        poller = client.begin_delete_pool("del", polling_interval=POLL_S)
        assert client.get_pool("del").state == "deleting"
        # A deleting pool refuses changes.
        for call in (lambda: client.update_pool("del", models.BatchPoolUpdateOptions(display_name="x")),
                     lambda: client.begin_resize_pool("del", models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                                                      polling_interval=POLL_S),
                     lambda: client.replace_pool_properties("del", models.BatchPoolReplaceOptions(
                         metadata=[], application_package_references=[])),
                     lambda: client.begin_delete_pool("del", polling_interval=POLL_S)):
            with pytest.raises(HttpResponseError) as info:
                call()
            assert error_of(info.value)[:2] == (409, "PoolBeingDeleted")
    poller.result(timeout=30)
    assert pool_missing(client, "del")
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes), 15,
             message="agents of the deleted pool to exit")
    wait_for(lambda: not any(f.exists() for f in folders), 15, message="node folders to be removed")
    assert "del" not in {c.pool_id for c in client.list_pool_node_counts()}


def test_conditional_requests(client):
    create_steady(client, pool_options("cond"))
    etag = client.get_pool("cond").etag
    client.update_pool("cond", models.BatchPoolUpdateOptions(display_name="v2"), etag=etag,
                       match_condition=MatchConditions.IfNotModified)
    fresh = client.get_pool("cond").etag
    assert fresh != etag
    with pytest.raises(ResourceModifiedError) as info:
        client.update_pool("cond", models.BatchPoolUpdateOptions(display_name="v3"), etag=etag,
                           match_condition=MatchConditions.IfNotModified)
    assert error_of(info.value)[:2] == (412, "ConditionNotMet")
    assert client.get_pool("cond").display_name == "v2"
    with pytest.raises(ResourceModifiedError):
        client.get_pool("cond", etag=etag, match_condition=MatchConditions.IfNotModified)
    assert client.get_pool("cond", etag=fresh, match_condition=MatchConditions.IfNotModified).id == "cond"
    # A read whose If-None-Match holds the current ETag is answered 304, as Batch documents for reads
    # (SDK 15.1.0's error policy raises ResourceModifiedError for any 304).
    with pytest.raises((ResourceModifiedError, ResourceNotModifiedError)) as info:
        client.get_pool("cond", etag=fresh, match_condition=MatchConditions.IfModified)
    assert info.value.status_code == 304
    assert client.get_pool("cond", etag=etag, match_condition=MatchConditions.IfModified).display_name == "v2"
    with pytest.raises(HttpResponseError) as info:
        client.begin_delete_pool("cond", etag=etag, match_condition=MatchConditions.IfNotModified,
                                 polling_interval=POLL_S)
    assert error_of(info.value)[:2] == (412, "ConditionNotMet")
    assert client.pool_exists("cond")
    client.begin_delete_pool("cond", etag=fresh, match_condition=MatchConditions.IfNotModified,
                             polling_interval=POLL_S).result(timeout=30)
    assert pool_missing(client, "cond")


def test_supported_images(client):
    images = list(client.list_supported_images())
    by_agent = {}
    for image in images:
        by_agent.setdefault(image.node_agent_sku_id, []).append(image.image_reference)
    assert {"batch.node.ubuntu 22.04", "batch.node.ubuntu 24.04"} <= set(by_agent)
    assert any(r.offer == "0001-com-ubuntu-server-jammy" and r.sku == "22_04-lts"
               for r in by_agent["batch.node.ubuntu 22.04"])
    assert any(r.offer == "ubuntu-24_04-lts" for r in by_agent["batch.node.ubuntu 24.04"])
    assert all(i.os_type == "linux" and i.verification_type in ("verified", "unverified") for i in images)


def test_vm_size_is_case_insensitive(client):
    client.create_pool(pool_options("sized", vm_size="STANDARD_D4S_V3", task_slots_per_node=16))
    pool = client.get_pool("sized")
    assert (pool.vm_size, pool.task_slots_per_node) == ("standard_d4s_v3", 16)


def test_list_nodes_paging_filter_select(client):
    client.create_pool(pool_options("lst", target_dedicated_nodes=3))
    nodes = wait_pool_idle(client, "lst", 3)
    pages = list(client.list_nodes("lst", max_results=1).by_page())
    assert len(pages) == 3
    assert sorted(n.id for page in pages for n in page) == sorted(n.id for n in nodes)
    assert len(list(client.list_nodes("lst", filter="state eq 'idle'"))) == 3
    assert list(client.list_nodes("lst", filter="state eq 'running'")) == []
    selected = list(client.list_nodes("lst", select=["id", "state"]))
    assert {n.state for n in selected} == {"idle"} and all(n.vm_size is None for n in selected)
    one = client.get_node("lst", nodes[0].id, select=["id"])
    assert (one.id, one.state) == (nodes[0].id, None)
    with pytest.raises(HttpResponseError) as info:
        list(client.list_nodes("lst-missing"))
    assert error_of(info.value)[:2] == (404, "PoolNotFound")
    client.create_pool(pool_options("lst-other"))
    with pytest.raises(HttpResponseError) as info:
        client.get_node("lst-other", nodes[0].id)
    assert error_of(info.value)[:2] == (404, "NodeNotFound")


def test_conditional_header_rules_raw(shoal, client):
    create_steady(client, pool_options("cond-raw"))
    etag = client.get_pool("cond-raw").etag
    later = "Fri, 01 Jan 2100 00:00:00 GMT"
    # Reads: an unmet If-None-Match / If-Modified-Since is 304 without a body, If-Match is 412.
    response = rest.call(shoal, "GET", "/pools/cond-raw", headers={"If-Modified-Since": later})
    assert (response.status_code, response.content) == (304, b"")
    response = rest.call(shoal, "HEAD", "/pools/cond-raw", headers={"If-None-Match": f'"{etag}"'})
    assert response.status_code == 304
    response = rest.call(shoal, "GET", "/pools/cond-raw", headers={"If-Match": '"0x8D0000000000000"'})
    rest.assert_batch_error(response, 412, "ConditionNotMet")
    # The ETag header decides when it comes with its date counterpart.
    response = rest.call(shoal, "GET", "/pools/cond-raw",
                           headers={"If-None-Match": '"other"', "If-Modified-Since": later})
    assert response.status_code == 200
    # Writes: an unmet condition is 412 whichever header it is.
    response = rest.call(shoal, "PATCH", "/pools/cond-raw", body=b'{"displayName": "x"}',
                           headers={"If-None-Match": f'"{etag}"'})
    rest.assert_batch_error(response, 412, "ConditionNotMet")
    response = rest.call(shoal, "GET", "/pools/cond-raw",
                           headers={"If-Match": f'"{etag}"', "If-None-Match": '"other"'})
    rest.assert_batch_error(response, 400, "MultipleConditionHeadersNotSupported")
    assert client.get_pool("cond-raw").display_name is None
