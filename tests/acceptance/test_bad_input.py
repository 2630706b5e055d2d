"""Bad input over raw, correctly signed HTTP: each gets its 400/413 with an Azure error body, and
what is stored stays as it was."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.sharedkey import sign_request
from tests.helpers import pool_options

POOL = "bad-pool"
JOB = "bad-job"
API = "2025-06-01"


@pytest.fixture(scope="module")
def setup(client: Any) -> None:
    """A pool, a job and a few tasks that every bad request must leave alone. The pool's
    nodes are not needed, so it has none and nothing runs."""
    client.create_pool(pool_options(POOL, target_dedicated_nodes=0))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL),
                                                   priority=1))
    client.create_tasks(JOB, [models.BatchTaskCreateOptions(id=f"keep{i}", command_line="true") for i in range(3)])


def send(shoal: Any, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         api_version: str | None = API, query: str = "") -> httpx.Response:
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    params = [] if api_version is None else [f"api-version={api_version}"]
    if query:
        params.append(query)
    url = f"{shoal.endpoint}{path}?{'&'.join(params)}"
    headers = {"Content-Type": "application/json; odata=minimalmetadata", "Content-Length": str(len(content))}
    signed = sign_request(method, url, headers, shoal.account, shoal.primary_key)
    return httpx.request(method, url, content=content, headers=signed, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str, **values: str) -> dict[str, Any]:
    """The Azure error body: odata.metadata, code, message {lang, value}, values naming the property."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["odata.metadata"].endswith(
        "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element")
    assert body["code"] == code, body
    assert body["message"]["lang"] == "en-US"
    assert "RequestId:" in body["message"]["value"] and "Time:" in body["message"]["value"]
    pairs = {item["key"]: item["value"] for item in body.get("values", [])}
    for key, value in values.items():
        assert pairs.get(key) == value, pairs
    assert response.headers["request-id"]
    return pairs


def snapshot(client: Any) -> tuple[Any, ...]:
    jobs = sorted((j.id, j.etag, j.priority, j.state) for j in client.list_jobs())
    tasks = sorted((t.id, t.etag, t.command_line) for t in client.list_tasks(JOB))
    return tuple(jobs), tuple(tasks)


@pytest.fixture
def unchanged(client: Any, setup: None) -> Any:
    """Asserts after the test that no job or task was added, removed or changed."""
    before = snapshot(client)
    yield
    assert snapshot(client) == before


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "new-job", "poolInfo": {"poolId": POOL}}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def task_body(task_id: str = "new-task", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": task_id, "commandLine": "true"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("path", ["/jobs", f"/jobs/{JOB}/tasks", f"/jobs/{JOB}/addtaskcollection"])
@pytest.mark.parametrize("raw", [b"{not json", b'{"id": "x",}', b"\xff\xfe", b'{"id": "x"'])
def test_malformed_json(shoal: Any, unchanged: None, path: str, raw: bytes) -> None:
    assert_error(send(shoal, "POST", path, raw=raw), 400, "InvalidRequestBody")


@pytest.mark.parametrize("path", ["/jobs", f"/jobs/{JOB}/tasks", f"/jobs/{JOB}/addtaskcollection"])
def test_body_not_an_object(shoal: Any, unchanged: None, path: str) -> None:
    assert_error(send(shoal, "POST", path, ["id", "x"]), 400, "InvalidRequestBody")
    assert_error(send(shoal, "POST", path, raw=b""), 400, "InvalidRequestBody")


@pytest.mark.parametrize(("body", "code", "name"), [
    (job_body(id=None), "MissingRequiredProperty", "id"),
    (job_body(poolInfo=None), "MissingRequiredProperty", "poolInfo"),
    (job_body(poolInfo={}), "MissingRequiredProperty", "poolInfo.poolId"),
    (job_body(priority="high"), "InvalidPropertyValue", "priority"),
    (job_body(priority=1.5), "InvalidPropertyValue", "priority"),
    (job_body(priority=True), "InvalidPropertyValue", "priority"),
    (job_body(priority=5000), "InvalidPropertyValue", "priority"),
    (job_body(priority=-1001), "InvalidPropertyValue", "priority"),
    (job_body(id=42), "InvalidPropertyValue", "id"),
    (job_body(id="bad id!"), "InvalidPropertyValue", "id"),
    (job_body(id="a" * 65), "InvalidPropertyValue", "id"),
    (job_body(id=""), "InvalidPropertyValue", "id"),
    (job_body(poolInfo="bad-pool"), "InvalidPropertyValue", "poolInfo"),
    (job_body(maxParallelTasks=0), "InvalidPropertyValue", "maxParallelTasks"),
    (job_body(constraints={"maxTaskRetryCount": -2}), "InvalidPropertyValue", "constraints.maxTaskRetryCount"),
    (job_body(constraints={"maxTaskRetryCount": "three"}), "InvalidPropertyValue", "constraints.maxTaskRetryCount"),
    (job_body(constraints={"maxWallClockTime": "forever"}), "InvalidPropertyValue",
     "constraints.maxWallClockTime"),
    (job_body(onAllTasksComplete="sometimes"), "InvalidPropertyValue", "onAllTasksComplete"),
    (job_body(metadata={"a": "b"}), "InvalidPropertyValue", "metadata"),
    (job_body(metadata=[{"name": "a", "value": 1}]), "InvalidPropertyValue", "metadata[0].value"),
    (job_body(commonEnvironmentSettings=[{"value": "x"}]), "MissingRequiredProperty",
     "commonEnvironmentSettings[0].name"),
    (job_body(displayName="x" * 1025), "InvalidPropertyValue", "displayName"),
])
def test_bad_job_create(shoal: Any, unchanged: None, body: dict[str, Any], code: str, name: str) -> None:
    assert_error(send(shoal, "POST", "/jobs", body), 400, code, PropertyName=name)


def test_longest_id_is_accepted(client: Any, shoal: Any, setup: None) -> None:
    longest = "J-_" + "a" * 61
    assert send(shoal, "POST", "/jobs", job_body(id=longest)).status_code == 201
    assert client.get_job(longest.lower()).id == longest  # ids keep their case, match without it


@pytest.mark.parametrize(("body", "code", "name"), [
    (task_body(id=None), "MissingRequiredProperty", "id"),
    (task_body(commandLine=None), "MissingRequiredProperty", "commandLine"),
    (task_body(commandLine=7), "InvalidPropertyValue", "commandLine"),
    (task_body(commandLine="   "), "InvalidPropertyValue", "commandLine"),
    (task_body("bad/id"), "InvalidPropertyValue", "id"),
    (task_body("t" * 65), "InvalidPropertyValue", "id"),
    (task_body(requiredSlots=0), "InvalidPropertyValue", "requiredSlots"),
    (task_body(requiredSlots="two"), "InvalidPropertyValue", "requiredSlots"),
    (task_body(constraints={"maxTaskRetryCount": -2}), "InvalidPropertyValue", "constraints.maxTaskRetryCount"),
    (task_body(constraints={"maxWallClockTime": 30}), "InvalidPropertyValue", "constraints.maxWallClockTime"),
    (task_body(constraints={"retentionTime": "P1X"}), "InvalidPropertyValue", "constraints.retentionTime"),
    (task_body(environmentSettings="A=B"), "InvalidPropertyValue", "environmentSettings"),
    (task_body(environmentSettings=[{"name": 5}]), "InvalidPropertyValue", "environmentSettings[0].name"),
])
def test_bad_task_create(shoal: Any, unchanged: None, body: dict[str, Any], code: str, name: str) -> None:
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/tasks", body), 400, code, PropertyName=name)
    # The same task inside a collection fails the whole collection: nothing of it is stored.
    collection = {"value": [task_body("fine-one"), body]}
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", collection), 400, code, PropertyName=name)


def test_duplicate_ids_in_one_collection(shoal: Any, unchanged: None) -> None:
    collection = {"value": [task_body("dup"), task_body("other"), task_body("DUP")]}
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", collection), 400, "InvalidPropertyValue")


def test_collection_value_missing_or_wrong(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", {}), 400, "MissingRequiredProperty",
                 PropertyName="value")
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", {"value": "t1"}), 400,
                 "InvalidPropertyValue", PropertyName="value")
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", {"value": ["t1"]}), 400,
                 "InvalidRequestBody")


def test_more_than_100_tasks(shoal: Any, unchanged: None) -> None:
    collection = {"value": [task_body(f"many{i}") for i in range(101)]}
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", collection), 413, "RequestBodyTooLarge")


def test_collection_over_one_megabyte(shoal: Any, unchanged: None) -> None:
    collection = {"value": [task_body(f"big{i}", commandLine="echo " + "x" * 12_000) for i in range(90)]}
    assert len(json.dumps(collection)) > 1024 * 1024
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/addtaskcollection", collection), 413, "RequestBodyTooLarge")


def test_sdk_halves_a_collection_that_is_too_large(client: Any, setup: None) -> None:
    """The 413's code is what makes the SDK split its chunk: 100 tasks of 15 KB all get added.
    (The bulk is an environment value: a command line may not be longer than 8,191 characters.)"""
    client.create_job(models.BatchJobCreateOptions(id="big-collection", pool_info=models.BatchPoolInfo(
        pool_id=POOL)))
    padding = [models.EnvironmentSetting(name="PADDING", value="y" * 15_000)]
    tasks = [models.BatchTaskCreateOptions(id=f"b{i}", command_line="true", environment_settings=padding)
             for i in range(100)]
    result = client.create_tasks("big-collection", tasks)
    assert sorted(r.status for r in result.result_values) == ["success"] * 100
    assert len(list(client.list_tasks("big-collection", select=["id"]))) == 100


@pytest.mark.parametrize("version", ["2099-01-01", "banana", ""])
def test_unknown_api_version(shoal: Any, unchanged: None, version: str) -> None:
    response = send(shoal, "POST", "/jobs", job_body(), api_version=version)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] in ("InvalidApiVersion", "MissingRequiredQueryParameter")
    assert {"key": "QueryParameterName", "value": "api-version"} in body["values"]
    assert send(shoal, "GET", "/jobs", api_version=version).status_code == 400


def test_missing_api_version(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "GET", "/jobs", api_version=None), 400, "MissingRequiredQueryParameter",
                 QueryParameterName="api-version")


@pytest.mark.parametrize(("body", "name"), [
    ({"priority": "urgent"}, "priority"),
    ({"priority": 1001}, "priority"),
    ({"maxParallelTasks": -5}, "maxParallelTasks"),
    ({"constraints": {"maxTaskRetryCount": -2}}, "constraints.maxTaskRetryCount"),
    ({"onAllTasksComplete": 3}, "onAllTasksComplete"),
    ({"metadata": [{"value": "no-name"}]}, "metadata[0].name"),
])
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_bad_job_update(shoal: Any, unchanged: None, body: dict[str, Any], name: str, method: str) -> None:
    if method == "PUT":
        body = {"poolInfo": {"poolId": POOL}, **body}
    pairs = assert_error(send(shoal, method, f"/jobs/{JOB}", body), 400, "InvalidPropertyValue"
                         if name != "metadata[0].name" else "MissingRequiredProperty")
    assert pairs["PropertyName"] == name


def test_replace_job_needs_pool_info(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "PUT", f"/jobs/{JOB}", {"priority": 3}), 400, "MissingRequiredProperty",
                 PropertyName="poolInfo")


def test_bad_job_actions(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/disable", {"disableTasks": "later"}), 400,
                 "InvalidPropertyValue", PropertyName="disableTasks")
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/disable", {}), 400, "MissingRequiredProperty",
                 PropertyName="disableTasks")
    assert_error(send(shoal, "POST", f"/jobs/{JOB}/terminate", {"terminateReason": 5}), 400,
                 "InvalidPropertyValue", PropertyName="terminateReason")


def test_bad_task_update(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "PUT", f"/jobs/{JOB}/tasks/keep0", {"constraints": {"maxTaskRetryCount": -3}}),
                 400, "InvalidPropertyValue", PropertyName="constraints.maxTaskRetryCount")
    assert_error(send(shoal, "PUT", f"/jobs/{JOB}/tasks/keep0", {"constraints": "none"}),
                 400, "InvalidPropertyValue", PropertyName="constraints")


def test_bad_query_parameters(shoal: Any, unchanged: None) -> None:
    assert_error(send(shoal, "GET", f"/jobs/{JOB}/tasks", query="maxresults=0"), 400, "InvalidQueryParameterValue",
                 QueryParameterName="maxresults")
    assert_error(send(shoal, "GET", f"/jobs/{JOB}/tasks", query="maxresults=1001"), 400,
                 "InvalidQueryParameterValue")
    assert_error(send(shoal, "GET", "/jobs", query="$filter=state%20eq"), 400, "InvalidQueryParameterValue",
                 QueryParameterName="$filter")
    assert_error(send(shoal, "GET", f"/jobs/{JOB}/tasks", query="$skiptoken=garbage"), 400,
                 "InvalidQueryParameterValue")


def test_oversized_body(shoal: Any, unchanged: None) -> None:
    huge = job_body(displayName="z" * (5 * 1024 * 1024))
    assert_error(send(shoal, "POST", "/jobs", huge), 413, "RequestBodyTooLarge")


def test_integers_written_as_strings_are_taken_as_batch_does(shoal: Any, client: Any, setup: None) -> None:
    """`az batch` sends integer options as JSON strings; Batch accepts them, and so does Shoal,
    storing and answering them as integers."""
    body = {"id": "quoted", "commandLine": "true", "requiredSlots": "1",
            "constraints": {"maxTaskRetryCount": "2"}}
    assert send(shoal, "POST", f"/jobs/{JOB}/tasks", body).status_code == 201
    task = client.get_task(JOB, "quoted")
    assert task.required_slots == 1 and task.constraints.max_task_retry_count == 2
    client.delete_task(JOB, "quoted")
