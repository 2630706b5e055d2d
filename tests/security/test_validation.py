"""Values an agent cannot start (NUL bytes, `=` in an environment name, a 3.9 MB command line, an
id ending in a newline) are refused at the API with Batch's 400 and the property's name, nothing
is stored, and the pool's agent keeps running tasks afterwards."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models

from tests.acceptance import rest
from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done

POOL = "val-pool"
JOB = "val-job"
NUL = "\x00"


@pytest.fixture(scope="module")
def setup(client: Any) -> None:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    wait_pool_idle(client, POOL, 1)


def post(shoal: Any, path: str, body: Any) -> Any:
    return rest.call(shoal, "POST", path, body=json.dumps(body).encode())


def values_of(response: Any) -> dict[str, str]:
    return {item["key"]: item["value"] for item in response.json().get("values", [])}


def stored(client: Any) -> tuple[Any, ...]:
    jobs = sorted((j.id, j.etag) for j in client.list_jobs())
    tasks = sorted((t.id, t.etag) for t in client.list_tasks(JOB))
    pools = sorted((p.id, p.etag) for p in client.list_pools())
    return tuple(jobs), tuple(tasks), tuple(pools)


@pytest.fixture
def unchanged(client: Any, setup: None) -> Any:
    before = stored(client)
    yield
    assert stored(client) == before


def task(**overrides: Any) -> dict[str, Any]:
    return {"id": "t-new", "commandLine": "/bin/true", **overrides}


# (Values Shoal refused already, such as a NUL in an id, are covered in tests/acceptance.)
BAD_TASKS = [
    (task(commandLine="echo a" + NUL + "b"), "commandLine"),
    (task(commandLine="x" * 8192), "commandLine"),
    # Over the 8,191-character cap, under the 1 MB body cap.
    (task(commandLine="echo " + "y" * 900_000), "commandLine"),
    (task(id="t-newline\n"), "id"),
    (task(displayName="name" + NUL), "displayName"),
    (task(environmentSettings=[{"name": "A=B", "value": "x"}]), "environmentSettings[0].name"),
    (task(environmentSettings=[{"name": "A" + NUL, "value": "x"}]), "environmentSettings[0].name"),
    (task(environmentSettings=[{"name": "A", "value": "x" + NUL}]), "environmentSettings[0].value"),
    (task(userIdentity={"username": "bob" + NUL}), "userIdentity.username"),
    (task(userIdentity={"autoUser": {"scope": "everywhere"}}), "userIdentity.autoUser.scope"),
    (task(userIdentity={"autoUser": {"elevationLevel": "root"}}), "userIdentity.autoUser.elevationLevel"),
    (task(constraints={"retentionTime": "P99999999999999D"}), "constraints.retentionTime"),
    (task(requiredSlots=2**40), "requiredSlots"),
    (task(affinityInfo={"affinityId": NUL}), "affinityInfo.affinityId"),
]


@pytest.mark.parametrize(("body", "name"), BAD_TASKS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_TASKS)])
def test_bad_task_value_is_refused(shoal: Any, unchanged: None, body: dict[str, Any], name: str) -> None:
    response = post(shoal, f"/jobs/{JOB}/tasks", body)
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert values_of(response)["PropertyName"] == name


def test_a_3_9_mb_command_line_is_a_body_too_large(shoal: Any, unchanged: None) -> None:
    response = post(shoal, f"/jobs/{JOB}/tasks", task(commandLine="echo " + "y" * 3_900_000))
    rest.assert_batch_error(response, 413, "RequestBodyTooLarge")


def test_nul_in_a_property_name_is_refused(shoal: Any, unchanged: None) -> None:
    response = post(shoal, f"/jobs/{JOB}/tasks", task(**{"comm\x00andLine": "true"}))
    assert response.status_code == 400, response.text


def test_bad_task_in_a_collection_refuses_the_whole_collection(shoal: Any, unchanged: None) -> None:
    body = {"value": [task(id="c-ok"), task(id="c-bad", commandLine="a" + NUL)]}
    response = post(shoal, f"/jobs/{JOB}/addtaskcollection", body)
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert values_of(response) | {"Reason": ""} == {"PropertyName": "commandLine", "TaskIndex": "1",
                                                     "PropertyValue": "a\\0", "Reason": ""}


BAD_JOBS = [
    ({"id": "j-newline\n", "poolInfo": {"poolId": POOL}}, "id"),
    ({"id": "j1", "poolInfo": {"poolId": POOL + NUL}}, "poolInfo.poolId"),
    ({"id": "j1", "poolInfo": {"poolId": POOL}, "metadata": [{"name": "m", "value": NUL}]}, "metadata[0].value"),
    ({"id": "j1", "poolInfo": {"poolId": POOL}, "commonEnvironmentSettings": [{"name": "X=1"}]},
     "commonEnvironmentSettings[0].name"),
    ({"id": "j1", "poolInfo": {"poolId": POOL}, "maxParallelTasks": 2**31}, "maxParallelTasks"),
]


@pytest.mark.parametrize(("body", "name"), BAD_JOBS, ids=[n for _, n in BAD_JOBS])
def test_bad_job_value_is_refused(shoal: Any, unchanged: None, body: dict[str, Any], name: str) -> None:
    response = post(shoal, "/jobs", body)
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert values_of(response)["PropertyName"] == name


def pool_body(**overrides: Any) -> dict[str, Any]:
    return {"id": "p-new", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy",
                                   "sku": "22_04-lts", "version": "latest"},
                "nodeAgentSKUId": "batch.node.ubuntu 22.04"}, **overrides}


BAD_POOLS = [
    (pool_body(startTask={"commandLine": "true" + NUL}), "startTask.commandLine"),
    (pool_body(startTask={"commandLine": "x" * 8192}), "startTask.commandLine"),
    (pool_body(startTask={"commandLine": "true", "environmentSettings": [{"name": "A=B"}]}),
     "startTask.environmentSettings[0].name"),
    (pool_body(startTask={"commandLine": "true", "userIdentity": {"username": "u" + NUL}}),
     "startTask.userIdentity.username"),
    (pool_body(userAccounts=[{"name": "u" + NUL, "password": "p"}]), "userAccounts[0].name"),
    (pool_body(userAccounts=[{"name": "u" * 21, "password": "p"}]), "userAccounts[0].name"),
    (pool_body(userAccounts=[{"name": "u", "password": "p", "elevationLevel": "root"}]),
     "userAccounts[0].elevationLevel"),
    (pool_body(userAccounts=[{"name": "u", "password": "p"}, {"name": "U", "password": "q"}]),
     "userAccounts[1].name"),
    (pool_body(userAccounts=[{"name": "u", "password": "p", "linuxUserConfiguration": {"uid": -1}}]),
     "userAccounts[0].linuxUserConfiguration.uid"),
    (pool_body(displayName="d" + NUL), "displayName"),
    (pool_body(id="p\n"), "id"),
    (pool_body(targetDedicatedNodes=2**31), "targetDedicatedNodes"),
    (pool_body(resizeTimeout="P99999999D"), "resizeTimeout"),
]


@pytest.mark.parametrize(("body", "name"), BAD_POOLS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_POOLS)])
def test_bad_pool_value_is_refused(shoal: Any, unchanged: None, body: dict[str, Any], name: str) -> None:
    response = post(shoal, "/pools", body)
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")
    assert values_of(response)["PropertyName"] == name


def test_limits_themselves_are_accepted(client: Any, shoal: Any, setup: None) -> None:
    """8,191 characters of command line, Batch's longest timeout: accepted, and a resize with
    that timeout does not overflow the clock."""
    longest = "true " + "#" * (8191 - 5)
    assert post(shoal, f"/jobs/{JOB}/tasks", task(id="t-longest", commandLine=longest)).status_code == 201
    assert client.get_task(JOB, "t-longest").command_line == longest
    timeout = "P10675199DT2H48M5S"
    assert post(shoal, "/pools", pool_body(id="p-long-timeout", resizeTimeout=timeout)).status_code == 201
    response = post(shoal, "/pools/p-long-timeout/resize", {"targetDedicatedNodes": 0, "resizeTimeout": timeout})
    assert response.status_code in (202, 409), response.text  # 409: the create's resize still running
    assert rest.call(shoal, "GET", "/pools/p-long-timeout").status_code == 200


def test_agent_still_runs_tasks_after_bad_input(client: Any, shoal: Any, setup: None) -> None:
    """Nothing above reached the node: a normal task added afterwards completes there."""
    for body, _name in BAD_TASKS:
        post(shoal, f"/jobs/{JOB}/tasks", body)
    client.create_task(JOB, models.BatchTaskCreateOptions(id="t-after", command_line="/bin/sh -c 'exit 0'"))
    wait_tasks_done(client, JOB)
    done = client.get_task(JOB, "t-after")
    assert (done.state, done.execution_info.exit_code) == ("completed", 0)
    assert all(n.state in ("idle", "running") for n in client.list_nodes(POOL))


ODD_VALUES = [2**31, NUL, {}, [1], "P99999999999D"]
BODIES = {
    "pool.create": ("/pools", pool_body(id="p-odd")),
    "job.create": ("/jobs", {"id": "j-odd", "poolInfo": {"poolId": POOL}}),
    "task.create": (f"/jobs/{JOB}/tasks", task(id="t-odd")),
}


def _property_paths(tree: Any, depth: int = 2) -> list[tuple[str, ...]]:
    """Paths of the body's properties, and of the properties of its object-valued ones."""
    out: list[tuple[str, ...]] = []
    for name, sub in tree["p"].items():
        out.append((name,))
        if depth > 1 and isinstance(sub, dict) and "p" in sub:
            out.extend((name, *rest) for rest in _property_paths(sub, depth - 1))
    return out


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    holder = out
    for part in path[:-1]:
        holder = holder.setdefault(part, {})
        if not isinstance(holder, dict):
            return out
    holder[path[-1]] = value
    return out


@pytest.mark.parametrize("body_name", list(BODIES))
def test_no_value_in_any_property_gives_a_5xx(shoal: Any, setup: None, body_name: str) -> None:
    """Every property of the body (two levels deep), given each odd value: a 4xx (or a success),
    never a 5xx, and every list still reads afterwards."""
    from shoal.model import request_schema

    path, base = BODIES[body_name]
    for where in _property_paths(request_schema.bodies()[body_name]):
        for value in ODD_VALUES:
            response = post(shoal, path, _with(base, where, value))
            assert response.status_code < 500, (where, value, response.text)
            if response.status_code == 201:
                rest.call(shoal, "DELETE", f"{path}/{base['id']}")
    for listing in ("/pools", "/jobs", f"/jobs/{JOB}/tasks"):
        assert rest.call(shoal, "GET", listing).status_code == 200
