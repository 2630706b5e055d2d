"""An honest surface: what Shoal does not carry out is refused with FeatureNotSupported naming the
property (never stored and ignored), unknown properties are refused, and pool user passwords are
write-only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models

from tests.acceptance import rest
from tests.helpers import pool_options

POOL = "surface-pool"
JOB = "surface-job"


@pytest.fixture(scope="module")
def setup(client: Any) -> None:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=0))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))


def send(shoal: Any, method: str, path: str, body: Any, api_version: str = rest.API_VERSION) -> Any:
    return rest.call(shoal, method, path, body=json.dumps(body).encode(), api_version=api_version)


def values_of(response: Any) -> dict[str, str]:
    return {item["key"]: item["value"] for item in response.json().get("values", [])}


def refused(response: Any, code: str, name: str) -> None:
    rest.assert_batch_error(response, 400, code)
    assert values_of(response)["PropertyName"] == name


# (multiInstanceSettings and jobManagerTask were refused already: tests/acceptance; dependencies
# and exit conditions, resource and output files and application packages are carried out:
# tests/acceptance/test_dependencies.py, test_resource_files.py, test_output_files.py,
# test_application_packages.py.)
TASK_FEATURES = [
    ("containerSettings", {"imageName": "ubuntu"}),
]


@pytest.mark.parametrize(("name", "value"), TASK_FEATURES, ids=[n for n, _ in TASK_FEATURES])
def test_unimplemented_task_feature_is_refused(client: Any, shoal: Any, setup: None, name: str, value: Any) -> None:
    task_id = f"t-{name.lower()}"
    response = send(shoal, "POST", f"/jobs/{JOB}/tasks", {"id": task_id, "commandLine": "true", name: value})
    refused(response, "FeatureNotSupported", name)
    assert rest.call(shoal, "GET", f"/jobs/{JOB}/tasks/{task_id}").status_code == 404


def test_empty_lists_mean_none_and_pass(client: Any, shoal: Any, setup: None) -> None:
    body = {"id": "t-empty", "commandLine": "true", "resourceFiles": [], "outputFiles": [],
            "applicationPackageReferences": []}
    assert send(shoal, "POST", f"/jobs/{JOB}/tasks", body).status_code == 201
    shown = rest.call(shoal, "GET", f"/jobs/{JOB}/tasks/t-empty").json()
    assert "applicationPackageReferences" not in shown  # nothing was kept that could look like a promise


JOB_FEATURES = [
    ("networkConfiguration", {"subnetId": "/subscriptions/x/subnets/y"}),
    ("allowTaskPreemption", True),
]


@pytest.mark.parametrize(("name", "value"), JOB_FEATURES, ids=[n for n, _ in JOB_FEATURES])
def test_unimplemented_job_feature_is_refused(shoal: Any, setup: None, name: str, value: Any) -> None:
    job_id = f"j-{name.lower()}"
    response = send(shoal, "POST", "/jobs", {"id": job_id, "poolInfo": {"poolId": POOL}, name: value})
    refused(response, "FeatureNotSupported", name)
    assert rest.call(shoal, "GET", f"/jobs/{job_id}").status_code == 404


def test_job_update_refuses_what_it_would_ignore(shoal: Any, setup: None) -> None:
    before = rest.call(shoal, "GET", f"/jobs/{JOB}").json()["eTag"]
    refused(send(shoal, "PATCH", f"/jobs/{JOB}", {"allowTaskPreemption": True}), "FeatureNotSupported",
            "allowTaskPreemption")
    refused(send(shoal, "PATCH", f"/jobs/{JOB}", {"networkConfiguration": {"subnetId": "s"}}),
            "FeatureNotSupported", "networkConfiguration")
    assert rest.call(shoal, "GET", f"/jobs/{JOB}").json()["eTag"] == before


def pool_body(pool_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": pool_id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy",
                                   "sku": "22_04-lts", "version": "latest"},
                "nodeAgentSKUId": "batch.node.ubuntu 22.04"}, **extra}


POOL_FEATURES = [
    ("mountConfiguration", {"mountConfiguration": [{"nfsMountConfiguration": {
        "source": "nfs://h/x", "relativeMountPath": "m"}}]}),
    # (a subnet is an invalid value instead: tests/compat/test_wire_shape.py)
    ("networkConfiguration", {"networkConfiguration": {"enableAcceleratedNetworking": True}}),
    ("resourceTags", {"resourceTags": {"team": "x"}}),
    ("startTask.containerSettings", {"startTask": {"commandLine": "true", "containerSettings": {"imageName": "u"}}}),
]


@pytest.mark.parametrize(("name", "extra"), POOL_FEATURES, ids=[n for n, _ in POOL_FEATURES])
def test_unimplemented_pool_feature_is_refused(shoal: Any, setup: None, name: str, extra: dict[str, Any]) -> None:
    pool_id = f"p-{name.lower().replace('.', '-')}"
    refused(send(shoal, "POST", "/pools", pool_body(pool_id, **extra), rest.API_VERSION), "FeatureNotSupported",
            name)
    assert rest.call(shoal, "GET", f"/pools/{pool_id}").status_code == 404


def test_certificate_references_are_unknown_from_2024_07(shoal: Any, setup: None) -> None:
    body = pool_body("p-certificates", certificateReferences=[{"thumbprint": "ab", "thumbprintAlgorithm": "sha1"}])
    for version in ("2024-07-01.20.0", "2025-06-01"):
        refused(send(shoal, "POST", "/pools", body, version), "InvalidRequestBody", "certificateReferences")


def test_vm_configuration_pieces_that_would_do_nothing_are_refused(shoal: Any, setup: None) -> None:
    body = pool_body("p-vmc")
    body["virtualMachineConfiguration"]["dataDisks"] = [{"lun": 1, "diskSizeGB": 50}]
    refused(send(shoal, "POST", "/pools", body), "FeatureNotSupported", "virtualMachineConfiguration.dataDisks")
    body = pool_body("p-vmc")
    body["virtualMachineConfiguration"]["containerConfiguration"] = {"type": "dockerCompatible"}
    refused(send(shoal, "POST", "/pools", body), "FeatureNotSupported",
            "virtualMachineConfiguration.containerConfiguration")
    assert rest.call(shoal, "GET", "/pools/p-vmc").status_code == 404


def test_pool_patch_refuses_what_it_would_ignore(shoal: Any, setup: None) -> None:
    before = rest.call(shoal, "GET", f"/pools/{POOL}").json()
    for body, name in (({"vmSize": "standard_d4s_v3"}, "vmSize"), ({"taskSlotsPerNode": 2}, "taskSlotsPerNode")):
        refused(send(shoal, "PATCH", f"/pools/{POOL}", body), "FeatureNotSupported", name)
    after = rest.call(shoal, "GET", f"/pools/{POOL}").json()
    assert (after["eTag"], after["vmSize"], after["taskSlotsPerNode"]) == (
        before["eTag"], before["vmSize"], before["taskSlotsPerNode"])


UNKNOWN = [
    ("/jobs", {"id": "j-unknown", "poolInfo": {"poolId": POOL}, "colour": "red"}, "colour"),
    ("/jobs", {"id": "j-unknown", "poolInfo": {"poolId": POOL, "poolName": "x"}}, "poolInfo.poolName"),
    # Names are read in any case (tests/acceptance/test_property_names.py): `commandline` beside
    # `commandLine` is one property given twice, and `userIdentity.userName` is `username`.
    (f"/jobs/{JOB}/tasks", {"id": "t-unknown", "commandLine": "true", "commandLines": "false"}, "commandLines"),
    (f"/jobs/{JOB}/tasks", {"id": "t-unknown", "commandLine": "true", "constraints": {"maxRetries": 3}},
     "constraints.maxRetries"),
    (f"/jobs/{JOB}/tasks", {"id": "t-unknown", "commandLine": "true", "userIdentity": {"user": "x"}},
     "userIdentity.user"),
    (f"/jobs/{JOB}/addtaskcollection", {"value": [], "extra": 1}, "extra"),
    ("/pools", pool_body("p-unknown", gpuCount=2), "gpuCount"),
]


@pytest.mark.parametrize(("path", "body", "name"), UNKNOWN, ids=[n for _, _, n in UNKNOWN])
def test_unknown_property_is_refused(shoal: Any, setup: None, path: str, body: dict[str, Any], name: str) -> None:
    refused(send(shoal, "POST", path, body), "InvalidRequestBody", name)
    assert rest.call(shoal, "GET", "/jobs/j-unknown").status_code == 404
    assert rest.call(shoal, "GET", f"/jobs/{JOB}/tasks/t-unknown").status_code == 404
    assert rest.call(shoal, "GET", "/pools/p-unknown").status_code == 404


def test_user_account_password_is_write_only(client: Any, shoal: Any, setup: None) -> None:
    secret = "s3cret-Pa55word"
    body = pool_body("p-users", userAccounts=[
        {"name": "alice", "password": secret, "elevationLevel": "admin",
         "linuxUserConfiguration": {"uid": 4001, "gid": 4001, "sshPrivateKey": "-----BEGIN KEY-----"}}])
    assert send(shoal, "POST", "/pools", body).status_code == 201
    single = rest.call(shoal, "GET", "/pools/p-users")
    listed = rest.call(shoal, "GET", "/pools")
    for text in (single.text, listed.text):
        assert secret not in text and "BEGIN KEY" not in text
    account = single.json()["userAccounts"][0]
    assert account == {"name": "alice", "elevationLevel": "admin",
                       "linuxUserConfiguration": {"uid": 4001, "gid": 4001}}
    sdk_account = client.get_pool("p-users").user_accounts[0]
    assert (sdk_account.name, sdk_account.password) == ("alice", None)


KNOWN_BUT_UNSUPPORTED_VALUES = [
    ({"upgradePolicy": {"mode": "automatic"}}, "upgradePolicy.mode"),
    ({"taskSchedulingPolicy": {"nodeFillType": "pack", "jobDefaultOrder": "creationtime"}},
     "taskSchedulingPolicy.jobDefaultOrder"),
]


@pytest.mark.parametrize(("extra", "name"), KNOWN_BUT_UNSUPPORTED_VALUES, ids=[n for _, n in KNOWN_BUT_UNSUPPORTED_VALUES])
def test_a_value_batch_knows_but_shoal_does_not_do_is_refused(shoal: Any, setup: None, extra: dict[str, Any],
                                                              name: str) -> None:
    refused(send(shoal, "POST", "/pools", pool_body("p-values", **extra)), "FeatureNotSupported", name)
    assert rest.call(shoal, "GET", "/pools/p-values").status_code == 404


def test_what_shoal_does_is_accepted_and_shown(shoal: Any, setup: None) -> None:
    """The values that match what Shoal does pass, and GET shows them: manual upgrades, the
    simplified communication mode, no preemption (also as the string `az` may send)."""
    body = pool_body("p-honest", upgradePolicy={"mode": "manual"}, targetNodeCommunicationMode="simplified",
                     taskSchedulingPolicy={"nodeFillType": "pack", "jobDefaultOrder": "none"})
    assert send(shoal, "POST", "/pools", body).status_code == 201
    shown = rest.call(shoal, "GET", "/pools/p-honest").json()
    assert (shown["upgradePolicy"], shown["targetNodeCommunicationMode"]) == ({"mode": "manual"}, "simplified")
    job = {"id": "j-honest", "poolInfo": {"poolId": POOL}, "allowTaskPreemption": "false",
           "usesTaskDependencies": False}
    assert send(shoal, "POST", "/jobs", job).status_code == 201
    assert rest.call(shoal, "GET", "/jobs/j-honest").json()["allowTaskPreemption"] is False


def test_property_table_matches_both_served_api_versions(repo_root: Any) -> None:
    """The table of known properties is what the 2024-02-01.19.0 definition and the installed
    azure-batch (2025-06-01) define, so a valid property is never refused as unknown."""
    from pathlib import Path

    from shoal.model import request_schema

    spec = Path(repo_root).parent / "shared" / "spec" / "batch-data-plane.openapi.json"
    if not spec.exists():
        pytest.skip("the OpenAPI document is kept outside the repository (../shared/spec)")
    assert request_schema.generate(str(spec)) == request_schema.bodies()


def test_node_action_and_autoscale_bodies_refuse_unknown_properties(shoal: Any) -> None:
    bodies = {
        "/pools/nosuchpool/enableautoscale": {"autoScaleFormula": "$TargetDedicatedNodes=0", "bogus": 1},
        "/pools/nosuchpool/evaluateautoscale": {"autoScaleFormula": "$TargetDedicatedNodes=0", "bogus": 1},
        "/pools/nosuchpool/nodes/n1/disablescheduling": {"bogus": 1},
        "/pools/nosuchpool/nodes/n1/reboot": {"bogus": 1},
        "/pools/nosuchpool/nodes/n1/reimage": {"bogus": 1},
    }
    for path, body in bodies.items():
        response = rest.call(shoal, "POST", path, body=json.dumps(body).encode())
        assert response.status_code == 400, (path, response.text)
        assert response.json()["code"] == "InvalidRequestBody", (path, response.text)
