"""What the server says about itself: request logs, /health, /ready, /metrics, and a stop that
logs no error (issue 12, item 2)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from azure.batch import models
from prometheus_client.parser import text_string_to_metric_families

from shoal.sharedkey import sign_request
from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done


def _metrics(shoal, headers: dict[str, str] | None = None) -> httpx.Response:
    if headers is None:
        headers = {"Authorization": f"Bearer {(shoal.data_dir / 'metrics-token').read_text().strip()}"}
    return httpx.get(f"{shoal.endpoint}/metrics", headers=headers, timeout=10)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_health_and_ready_answer_without_credentials_and_say_nothing_else(shoal):
    for path, expected in (("/health", "ok"), ("/ready", "ready")):
        answer = httpx.get(f"{shoal.endpoint}{path}", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": expected}


def test_metrics_refuse_anyone_without_the_scrape_token_or_the_key(shoal):
    assert _metrics(shoal, {}).status_code == 401
    assert _metrics(shoal, {"Authorization": "Bearer wrong"}).status_code == 401
    assert _metrics(shoal, {"Authorization": "Bearer " + "x" * 100_000}).status_code in (400, 401, 431)
    assert _metrics(shoal, {"Authorization": f"SharedKey {shoal.account}:AAAA"}).status_code in (401, 403)
    body = _metrics(shoal, {}).json()
    assert body["code"] == "AuthenticationFailed" and body["message"]["lang"] == "en-US"
    # The account's Shared Key works too, as for any Batch call.
    url = f"{shoal.endpoint}/metrics"
    signed = sign_request("GET", url, {}, shoal.account, shoal.primary_key)
    assert httpx.get(url, headers=signed, timeout=10).status_code == 200


def test_metrics_count_requests_tasks_nodes_placements_and_syncs(shoal, client):
    client.create_pool(pool_options("obs-pool", target_dedicated_nodes=1))
    wait_pool_idle(client, "obs-pool", 1)
    client.create_job(models.BatchJobCreateOptions(id="obs-job", pool_info=models.BatchPoolInfo(pool_id="obs-pool")))
    client.create_tasks("obs-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                    for i in range(4)] + [models.BatchTaskCreateOptions(id="f", command_line="/bin/false")])
    wait_tasks_done(client, "obs-job")
    answer = _metrics(shoal)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.text)
    assert samples[("shoal_tasks", (("state", "completed"),))] == 5
    assert samples[("shoal_tasks", (("state", "active"),))] == 0
    assert samples[("shoal_completed_tasks", (("result", "failed"),))] == 1
    assert samples[("shoal_nodes", (("kind", "dedicated"), ("pool", "obs-pool"), ("state", "idle")))] == 1
    assert samples[("shoal_task_placements_total", ())] >= 5
    assert samples[("shoal_agent_syncs_total", ())] >= 5
    assert samples[("shoal_requests_total", (("operation", "create_pool"), ("status", "201")))] >= 1
    assert samples[("shoal_request_duration_seconds_count", (("operation", "add_collection"),))] >= 1
    assert samples[("shoal_store_call_duration_seconds_count", (("lane", "writer"),))] > 0
    assert samples[("shoal_scheduler_pass_duration_seconds_count", ())] > 0
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_what_a_client_sends_never_becomes_a_label(shoal):
    for path in ("/no/such/" + uuid.uuid4().hex, "/pools/" + uuid.uuid4().hex + "/bogus"):
        httpx.get(f"{shoal.endpoint}{path}?api-version=2024-07-01.20.0", timeout=10)
    text = _metrics(shoal).text
    operations = {s.labels.get("operation") for family in text_string_to_metric_families(text)
                  for s in family.samples if "operation" in s.labels}
    assert "unmatched" in operations
    assert not any(len(op) == 32 or "/" in op for op in operations if op)


def test_each_batch_request_is_one_log_line_with_its_ids(shoal, client):
    client_request_id = str(uuid.uuid4())
    url = f"{shoal.endpoint}/pools?api-version=2024-07-01.20.0"
    headers = sign_request("GET", url, {"client-request-id": client_request_id}, shoal.account, shoal.primary_key)
    answer = httpx.get(url, headers=headers, timeout=10)
    assert answer.headers["client-request-id"] == client_request_id
    request_id = answer.headers["request-id"]
    line = wait_for(lambda: next((line for line in shoal.log().splitlines() if request_id in line), None),
                    timeout=5, message="the request's log line")
    assert "GET /pools 200" in line and "list_pools" in line and f"client-request-id={client_request_id}" in line
    assert "ms" in line


def test_a_path_with_control_characters_cannot_forge_a_log_line(shoal):
    forged = "x%0A2026-01-01 00:00:00,000 INFO    shoal.requests FORGED%00"
    httpx.get(f"{shoal.endpoint}/pools/{forged}?api-version=2024-07-01.20.0", timeout=10)
    # The line is written once the answer is sent: wait for it.
    wait_for(lambda: any("\\n2026-01-01" in line and "\\x00" in line for line in shoal.log().splitlines()),
             timeout=5, message="the escaped line")
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in shoal.log().splitlines())


@pytest.fixture(scope="module")
def json_logged(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("json-logs")
    shoal = start_shoal(data_dir, extra_args=["--log-format", "json", "--log-level", "debug"])
    try:
        yield shoal
    finally:
        stop_shoal(shoal)
        kill_agents(data_dir)


def test_json_logs_are_one_object_per_line_and_debug_adds_agent_calls(json_logged):
    client = json_logged.client()
    client.create_pool(pool_options("json-pool", target_dedicated_nodes=1))
    wait_pool_idle(client, "json-pool", 1)
    client.get_pool("json-pool")
    records = wait_for(lambda: [json.loads(line) for line in json_logged.log().splitlines()
                                if line.startswith("{") and '"operation"' in line and "agent_sync" in line],
                       timeout=10, message="an agent sync at debug")
    assert records[0]["level"] == "DEBUG" and records[0]["method"] == "POST"
    # A request's line is written once its answer is sent: the client may read the log first.
    requests = wait_for(lambda: [json.loads(line) for line in json_logged.log().splitlines()
                                 if line.startswith("{") and '"get_pool"' in line],
                        timeout=10, message="the get_pool line")
    assert requests[0]["status"] == 200 and requests[0]["path"] == "/pools/json-pool"
    assert isinstance(requests[0]["duration_ms"], float) and requests[0]["request_id"]
    log = json_logged.log()
    assert json_logged.primary_key not in log.replace(f"key:      {json_logged.primary_key}", "")
    assert json_logged.secondary_key not in log


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_normal_stop_with_agents_long_polling_logs_no_error(tmp_path, tls):
    """Issue 12: a stop answers the agents' held long-polls and stops the agents before the HTTP
    server closes its connections; an idle client's TLS connection does not hold it up."""
    shoal = start_shoal(tmp_path / "data", extra_args=["--tls"] if tls else [])
    try:
        client = shoal.client()  # it keeps its connection open, idle, through the stop
        client.create_pool(pool_options("stop-pool", target_dedicated_nodes=2))
        wait_pool_idle(client, "stop-pool", 2)
        assert [node.state for node in client.list_nodes("stop-pool")] == ["idle", "idle"]
        shoal.process.send_signal(signal.SIGTERM)
        assert shoal.process.wait(20) == 0
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path / "data")
    log = shoal.log()
    assert "Shutting down" in log
    assert "ERROR" not in log and "Cancel" not in log and "Traceback" not in log, log[-2000:]


def test_a_stop_while_a_task_runs_ends_in_seconds(tmp_path):
    """A stop with a task running ends: its agents have a few seconds to kill their tasks, and no
    duty can hold the process (one stop in a loop of them once hung for minutes)."""
    shoal = start_shoal(tmp_path / "data")
    try:
        client = shoal.client()
        client.create_pool(pool_options("busy-pool", target_dedicated_nodes=1))
        wait_pool_idle(client, "busy-pool", 1)
        client.create_job(models.BatchJobCreateOptions(id="busy", pool_info=models.BatchPoolInfo(pool_id="busy-pool")))
        client.create_task("busy", models.BatchTaskCreateOptions(id="sleeper", command_line="sleep 60"))
        wait_for(lambda: client.get_task("busy", "sleeper").state == "running", timeout=20, message="running")
        began = time.monotonic()
        shoal.process.send_signal(signal.SIGTERM)
        assert shoal.process.wait(15) == 0
        assert time.monotonic() - began < 12
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path / "data")
    assert "Traceback" not in shoal.log(), shoal.log()[-2000:]


def test_log_level_and_format_are_validated(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "up", "--data-dir", str(tmp_path),
                             "--log-level", "loud"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "'loud' is not one of" in result.stderr
