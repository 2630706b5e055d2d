"""ComputeNode_UploadBatchServiceLogs (issue 10 item 5) through the SDK against a real `shoal up`
and a real Azurite: the node's agent uploads its log and its start task's output to the
container, under the folder the answer names."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models

from tests.acceptance import rest
from tests.helpers import pool_options, wait_for, wait_pool_idle
from tests.storage import fixtures
from tests.storage.fixtures import container_sas, upload

azurite, blobs, shoal = fixtures.azurite, fixtures.blobs, fixtures.shoal

POOL = "logs-pool"


@pytest.fixture(scope="module")
def client(shoal: Any) -> Any:
    return shoal.client()


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo started-here; echo complaint >&2'", wait_for_success=True)))
    return wait_pool_idle(client, POOL, 1)[0]


def test_the_agent_log_and_start_task_output_reach_the_container(client, node, blobs, azurite):
    container = upload(blobs, "service-logs", {})
    result = client.upload_node_logs(POOL, node.id, models.UploadBatchServiceLogsOptions(
        container_url=container_sas(azurite, "service-logs", "w"),
        start_time=datetime.now(UTC) - timedelta(hours=1)))
    folder = result.virtual_directory_name
    assert folder.split("/")[1:3] == [POOL, node.id]
    assert result.number_of_files_uploaded == 3
    names = wait_for(lambda: (lambda found: found if len(found) == 3 else None)(
        sorted(b.name for b in container.list_blobs(name_starts_with=folder + "/"))), 20, message="uploads")
    assert names == [f"{folder}/agent.log", f"{folder}/startup/stderr.txt", f"{folder}/startup/stdout.txt"]
    assert container.download_blob(f"{folder}/startup/stdout.txt").readall() == b"started-here\n"
    assert b"hello" in container.download_blob(f"{folder}/agent.log").readall().lower()


def test_logs_older_than_start_time_are_not_sent(client, node, blobs, azurite):
    upload(blobs, "later-logs", {})
    result = client.upload_node_logs(POOL, node.id, models.UploadBatchServiceLogsOptions(
        container_url=container_sas(azurite, "later-logs", "w"), start_time=datetime.now(UTC) + timedelta(hours=1)))
    assert result.number_of_files_uploaded == 0


@pytest.mark.parametrize("body, code", [
    ({"startTime": "2026-01-01T00:00:00Z"}, "MissingRequiredProperty"),
    ({"containerUrl": "https://x.blob.core.windows.net/c"}, "MissingRequiredProperty"),
    ({"containerUrl": "ftp://x/c", "startTime": "2026-01-01T00:00:00Z"}, "InvalidPropertyValue"),
    ({"containerUrl": "file:///etc", "startTime": "2026-01-01T00:00:00Z"}, "InvalidPropertyValue"),
    ({"containerUrl": "https://x.blob.core.windows.net/c", "startTime": "yesterday"}, "InvalidPropertyValue"),
    ({"containerUrl": "https://x.blob.core.windows.net/c", "startTime": "2026-01-02T00:00:00Z",
      "endTime": "2026-01-01T00:00:00Z"}, "InvalidPropertyValue"),
    ({"containerUrl": "https://x.blob.core.windows.net/c", "startTime": "2026-01-01T00:00:00Z",
      "identityReference": {"resourceId": "/subscriptions/x"}}, "FeatureNotSupported"),
    ({"containerUrl": 5, "startTime": "2026-01-01T00:00:00Z"}, "InvalidPropertyValue"),
])
def test_bad_requests_are_refused(shoal, node, body, code):
    response = rest.call(shoal, "POST", f"/pools/{POOL}/nodes/{node.id}/uploadbatchservicelogs",
                         body=json.dumps(body).encode())
    rest.assert_batch_error(response, 400, code)


def test_an_unreachable_container_still_answers_and_the_agent_lives_on(client, node):
    # As on Azure, the answer comes before the upload; a container nobody can reach is the
    # upload's failure (in the agent's log), never the node's.
    result = client.upload_node_logs(POOL, node.id, models.UploadBatchServiceLogsOptions(
        container_url="http://127.0.0.1:9/nowhere?sv=x&sig=y", start_time=datetime.now(UTC) - timedelta(hours=1)))
    assert result.number_of_files_uploaded == 3
    assert client.get_node(POOL, node.id).state == "idle"
