"""Images and node agent SKUs through the SDK against a real `shoal up`: what `/supportedimages`
lists, that a pool of every listed Linux image gets idle nodes that run a task, and that Windows,
mismatched pairs and malformed image references are refused as Azure refuses them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance import rest
from tests.helpers import wait_for, wait_pool_idle, wait_tasks_done

POLL_S = 0.1
# Pools brought up at once: every node is an agent process on this machine.
POOLS_AT_ONCE = 6

# (publisher, offer, sku, node agent SKU) that Azure Batch lists for its current Linux agents.
EXPECTED_LINUX_IMAGES = [
    ("canonical", "0001-com-ubuntu-server-focal", "20_04-lts", "batch.node.ubuntu 20.04"),
    ("canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2", "batch.node.ubuntu 20.04"),
    ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 22.04"),
    ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "batch.node.ubuntu 22.04"),
    ("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04"),
    ("canonical", "ubuntu-24_04-lts", "server-gen1", "batch.node.ubuntu 24.04"),
    ("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", "batch.node.ubuntu 20.04"),
    ("microsoft-azure-batch", "ubuntu-server-container-rdma", "20-04-lts", "batch.node.ubuntu 20.04"),
    ("microsoft-dsvm", "ubuntu-hpc", "2004", "batch.node.ubuntu 20.04"),
    ("microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04"),
    ("almalinux", "almalinux-x86_64", "8-gen1", "batch.node.el 8"),
    ("almalinux", "almalinux-x86_64", "8-gen2", "batch.node.el 8"),
    ("almalinux", "almalinux-x86_64", "9-gen1", "batch.node.el 9"),
    ("almalinux", "almalinux-x86_64", "9-gen2", "batch.node.el 9"),
    ("almalinux", "almalinux-hpc", "8-hpc-gen1", "batch.node.el 8"),
    ("almalinux", "almalinux-hpc", "8-hpc-gen2", "batch.node.el 8"),
    ("resf", "rockylinux-x86_64", "9-base", "batch.node.el 9"),
    ("debian", "debian-11", "11", "batch.node.debian 11"),
    ("debian", "debian-11", "11-gen2", "batch.node.debian 11"),
    ("debian", "debian-12", "12", "batch.node.debian 12"),
    ("debian", "debian-12", "12-gen2", "batch.node.debian 12"),
    ("redhat", "rhel", "8_10", "batch.node.el 8"),
    ("redhat", "rhel", "9_5", "batch.node.el 9"),
]


def _vm_configuration(publisher: str, offer: str, sku: str, agent: str) -> Any:
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher=publisher, offer=offer, sku=sku, version="latest"),
        node_agent_sku_id=agent)


def _error_of(exc: HttpResponseError) -> tuple[int, str, dict[str, str]]:
    body = exc.response.json()
    return exc.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def _listed(client: Any) -> dict[tuple[str, str, str], Any]:
    return {(i.image_reference.publisher, i.image_reference.offer, i.image_reference.sku): i
            for i in client.list_supported_images()}


def test_supported_images_cover_the_current_linux_agents(client):
    listed = _listed(client)
    for publisher, offer, sku, agent in EXPECTED_LINUX_IMAGES:
        image = listed.get((publisher, offer, sku))
        assert image is not None, (publisher, offer, sku)
        assert image.node_agent_sku_id == agent
        assert image.os_type == "linux" and image.image_reference.version == "latest"
        assert image.verification_type in ("verified", "unverified")
    # Facts as Azure lists them (recorded 2023 listing; Azure/Batch#178; the 20.04 retirement notice).
    container = listed[("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts")]
    assert container.verification_type == "verified"
    assert container.capabilities == ["DockerCompatible", "NvidiaTeslaDriverInstalled", "NvidiaGridDriverInstalled"]
    assert container.batch_support_end_of_life.isoformat() == "2025-04-23T00:00:00+00:00"
    noble = listed[("canonical", "ubuntu-24_04-lts", "server")]
    assert (noble.verification_type, noble.capabilities, noble.batch_support_end_of_life) == (
        "verified", ["Generation2VMImage"], None)
    jammy_gen2 = listed[("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2")]
    assert (jammy_gen2.verification_type, jammy_gen2.capabilities) == ("unverified", ["Generation2VMImage"])
    hpc = listed[("microsoft-dsvm", "ubuntu-hpc", "2204")]
    assert hpc.capabilities == ["DockerCompatible", "SupportsRDMAOnly", "Generation2VMImage",
                                "IntelMPIRuntimeInstalled"]
    alma_hpc = listed[("almalinux", "almalinux-hpc", "8-hpc-gen1")]
    assert (alma_hpc.verification_type, alma_hpc.capabilities) == (
        "unverified", ["SupportsRDMAOnly", "IntelMPIRuntimeInstalled"])
    # Shoal's nodes run Linux only, so no Windows image is offered.
    assert all(i.os_type == "linux" and i.node_agent_sku_id != "batch.node.windows amd64" for i in listed.values())


def test_supported_images_wire_shape_omits_what_azure_omits(shoal):
    response = rest.call(shoal, "GET", "/supportedimages")
    assert response.status_code == 200
    by_sku = {(i["imageReference"]["offer"], i["imageReference"]["sku"]): i for i in response.json()["value"]}
    # Azure writes `capabilities` only when there are some and `batchSupportEndOfLife` only once announced.
    assert set(by_sku[("ubuntu-24_04-lts", "server-gen1")]) == {
        "imageReference", "verificationType", "nodeAgentSKUId", "osType"}
    assert set(by_sku[("0001-com-ubuntu-server-focal", "20_04-lts-gen2")]) == {
        "imageReference", "verificationType", "nodeAgentSKUId", "capabilities", "batchSupportEndOfLife", "osType"}


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@pytest.mark.parametrize("group", _chunks(EXPECTED_LINUX_IMAGES, POOLS_AT_ONCE),
                         ids=lambda group: f"{group[0][1]}..{group[-1][1]}")
def test_a_pool_of_each_linux_image_runs_a_task(client, group):
    pools = {f"img-{publisher}-{offer}-{sku}".replace("_", "-")[:64]: (publisher, offer, sku, agent)
             for publisher, offer, sku, agent in group}
    for pool_id, entry in pools.items():
        client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=_vm_configuration(*entry)))
    try:
        for pool_id, (publisher, offer, sku, _agent) in pools.items():
            node = wait_pool_idle(client, pool_id, 1, timeout=60)[0]
            shown = client.get_node(pool_id, node.id).virtual_machine_info.image_reference
            assert (shown.publisher, shown.offer, shown.sku, shown.version) == (publisher, offer, sku, "latest")
            # Every local node runs the host's OS whatever the image; `latest` resolves to its release.
            assert shown.exact_version
            client.create_job(models.BatchJobCreateOptions(id=pool_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
            client.create_task(pool_id, models.BatchTaskCreateOptions(id="hello", command_line="/bin/sh -c 'echo hi'"))
        for pool_id in pools:
            counts = wait_tasks_done(client, pool_id, timeout=60)
            assert (counts.succeeded, counts.failed) == (1, 0), pool_id
            assert b"".join(client.download_task_file(pool_id, "hello", "stdout.txt")) == b"hi\n"
    finally:
        for pool_id in pools:
            client.begin_delete_job(pool_id, polling_interval=POLL_S)
            client.begin_delete_pool(pool_id, polling_interval=POLL_S)
    wait_for(lambda: not set(pools) & {p.id for p in client.list_pools()}, 30, message="image pools deleted")


REFUSED_PAIRS = [
    ("windows-image-and-agent", ("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter",
                                 "batch.node.windows amd64")),
    ("windows-image-linux-agent", ("MicrosoftWindowsServer", "WindowsServer", "2019-datacenter-core",
                                   "batch.node.ubuntu 22.04")),
    ("linux-image-windows-agent", ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts",
                                   "batch.node.windows amd64")),
    ("jammy-with-noble-agent", ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 24.04")),
    ("container-with-noble-agent", ("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts",
                                    "batch.node.ubuntu 24.04")),
    ("alma9-with-el8-agent", ("almalinux", "almalinux-x86_64", "9-gen1", "batch.node.el 8")),
    ("debian12-with-debian11-agent", ("debian", "debian-12", "12", "batch.node.debian 11")),
    ("rocky-with-ubuntu-agent", ("resf", "rockylinux-x86_64", "9-base", "batch.node.ubuntu 22.04")),
]


@pytest.mark.parametrize("pair", [c[1] for c in REFUSED_PAIRS], ids=[c[0] for c in REFUSED_PAIRS])
def test_unsupported_image_and_agent_pairs_are_refused(client, pair):
    """Azure's answer to an image and agent SKU it will not pair: 400 InvalidPropertyValue."""
    pool_id = "refused-" + pair[3].replace(" ", "-").replace(".", "-")
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(models.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3",
                                                         virtual_machine_configuration=_vm_configuration(*pair)))
    status, code, values = _error_of(info.value)
    assert (status, code) == (400, "InvalidPropertyValue")
    assert values["PropertyName"] == "virtualMachineConfiguration.nodeAgentSKUId"
    assert values["PropertyValue"] == pair[3]
    assert pool_id not in {p.id for p in client.list_pools()}


def _pool_body(image_reference: Any, agent: Any = "batch.node.ubuntu 22.04") -> bytes:
    return json.dumps({"id": "bad-image", "vmSize": "standard_d2s_v3",
                       "virtualMachineConfiguration": {"imageReference": image_reference,
                                                       "nodeAgentSKUId": agent}}).encode()


_JAMMY = {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}

BAD_IMAGE_INPUTS = [
    ("publisher-number", _pool_body({**_JAMMY, "publisher": 5}), "virtualMachineConfiguration.imageReference.publisher"),
    ("sku-list", _pool_body({**_JAMMY, "sku": ["22_04-lts"]}), "virtualMachineConfiguration.imageReference.sku"),
    ("version-object", _pool_body({**_JAMMY, "version": {"v": 1}}),
     "virtualMachineConfiguration.imageReference.version"),
    ("reference-string", _pool_body("canonical:jammy:22_04-lts"), "virtualMachineConfiguration.imageReference"),
    ("agent-number", _pool_body(_JAMMY, 22.04), "virtualMachineConfiguration.nodeAgentSKUId"),
    ("agent-huge", _pool_body(_JAMMY, "batch.node.ubuntu 22.04" + "x" * 200_000),
     "virtualMachineConfiguration.nodeAgentSKUId"),
    ("offer-huge", _pool_body({**_JAMMY, "offer": "o" * 200_000}), "virtualMachineConfiguration.imageReference.offer"),
    ("offer-nul", _pool_body({**_JAMMY, "offer": "0001-com-ubuntu-server-jammy\x00"}),
     "virtualMachineConfiguration.imageReference.offer"),
    ("agent-nul", _pool_body(_JAMMY, "batch.node.ubuntu 22.04\x00"), "virtualMachineConfiguration.nodeAgentSKUId"),
    ("agent-empty", _pool_body(_JAMMY, ""), "virtualMachineConfiguration.nodeAgentSKUId"),
]


@pytest.mark.parametrize(("body", "prop"), [c[1:] for c in BAD_IMAGE_INPUTS], ids=[c[0] for c in BAD_IMAGE_INPUTS])
def test_malformed_image_references_are_400s(shoal, client, body, prop):
    response = rest.call(shoal, "POST", "/pools", body=body)
    error = rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert {v["key"]: v["value"] for v in error["values"]}["PropertyName"] == prop
    assert "bad-image" not in {p.id for p in client.list_pools()}
