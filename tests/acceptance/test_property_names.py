"""Batch reads request bodies with property names in any case (shoal/service/request_body.py
`fold_names`).

From a recording: azure-sdk-for-node's batchservice-tests.json, "should add a task with a user
identity" (2020-03-01.11.0), sends `{"userIdentity": {"userName": "nonAdminUser"}}` and Azure
answers 201, although every api-version spells the property `username`.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.api.versions import VERSIONS
from tests.acceptance import rest

V11 = VERSIONS[0]
VM_CONFIGURATION = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy",
                                       "sku": "22_04-lts"},
                    "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


def _send(shoal: Any, method: str, path: str, body: Any = None, version: str = V11) -> Any:
    return rest.call(shoal, method, path, api_version=version,
                     body=None if body is None else json.dumps(body).encode())


def test_a_property_in_another_case_is_read_as_its_definition(shoal: Any) -> None:
    pool = {"ID": "names-pool", "VmSize": "standard_d2s_v3", "virtualMachineConfiguration": VM_CONFIGURATION,
            "userAccounts": [{"name": "nonAdminUser", "password": "p4ss-word", "ElevationLevel": "nonadmin"}]}
    assert _send(shoal, "POST", "/pools", pool).status_code == 201
    assert _send(shoal, "POST", "/jobs", {"id": "names-job", "POOLINFO": {"poolId": "names-pool"}}).status_code == 201
    task = {"id": "with-identity", "commandLine": "/bin/true", "userIdentity": {"userName": "nonAdminUser"}}
    assert _send(shoal, "POST", "/jobs/names-job/tasks", task).status_code == 201
    shown = _send(shoal, "GET", "/jobs/names-job/tasks/with-identity").json()
    assert shown["userIdentity"] == {"username": "nonAdminUser"}
    assert _send(shoal, "GET", "/pools/names-pool").json()["userAccounts"][0]["elevationLevel"] == "nonadmin"


def test_one_property_in_two_spellings_is_refused(shoal: Any) -> None:
    task = {"id": "twice", "commandLine": "/bin/true", "commandline": "/bin/false"}
    response = _send(shoal, "POST", "/jobs/names-job/tasks", task)
    error = rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert {"key": "PropertyName", "value": "commandline"} in error["values"], error
    assert _send(shoal, "GET", "/jobs/names-job/tasks/twice").status_code == 404


def test_a_name_no_definition_has_in_any_case_is_still_refused(shoal: Any) -> None:
    task = {"id": "unknown", "commandLine": "/bin/true", "CommandLines": "x"}
    response = _send(shoal, "POST", "/jobs/names-job/tasks", task)
    error = rest.assert_batch_error(response, 400, "InvalidRequestBody")
    assert {"key": "PropertyName", "value": "CommandLines"} in error["values"], error
