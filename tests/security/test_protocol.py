"""The agent protocol against a caller holding a stolen node token, a real `shoal up` with two
real nodes each running a task of a job with a secret. The token comes from where a thief would
find it (the database); what the caller can do with it is checked through the Batch API."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal, kill_agents, start_shoal, stop_shoal
from tests.acceptance import rest
from tests.helpers import pool_options, wait_for, wait_task_state
from tests.security.agents import two_nodes_each_running_a_secret_task

POOL = "victim-pool"
JOB = "secret-job"
SECRET = "s3cr3t-value-of-another-job"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _db(shoal: RunningShoal) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True, timeout=10)


def _node_record(shoal: RunningShoal, node_id: str) -> dict[str, Any]:
    with _db(shoal) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT id, token, incarnation, file_server_url, ip_address, state FROM nodes "
                           "WHERE id = ?", (node_id,)).fetchone()
    return dict(row)


def _agent(shoal: RunningShoal, node_id: str, call: str, body: bytes | dict[str, Any], token: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(f"{shoal.endpoint}/agent/v1/nodes/{node_id}/{call}", content=content, timeout=30,
                      headers={"Authorization": f"ShoalNode {token}", "Content-Type": "application/json"})


@pytest.fixture(scope="module")
def victims(shoal: RunningShoal, client: Any) -> dict[str, Any]:
    """Two nodes, each running one long task of a job whose environment holds a secret."""
    on_node = two_nodes_each_running_a_secret_task(client, POOL, JOB, SECRET)
    first = sorted(on_node)[0]
    other = next(n for n in on_node if n != first)
    return {"node": first, "task": on_node[first], "other_node": other, "other_task": on_node[other]}


def _still_running(client: Any, task_id: str) -> None:
    task = client.get_task(JOB, task_id)
    assert task.state == "running", (task.state, task.execution_info)


def _attempt(shoal: RunningShoal, task_id: str) -> int:
    with _db(shoal) as conn:
        return int(conn.execute("SELECT t.attempt FROM tasks t JOIN jobs j ON j.seq = t.job_seq "
                                "WHERE j.id = ? AND t.id = ?", (JOB, task_id)).fetchone()[0])


def _report(task_id: str, attempt: int, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    report = {"jobId": JOB, "taskId": task_id, "attempt": attempt, "startTime": _iso(now - timedelta(seconds=1)),
              "endTime": _iso(now), "exitCode": 0, "failure": None}
    report.update(fields)
    return report


def test_a_stolen_token_alone_is_given_nothing_to_run(shoal: RunningShoal, victims: dict[str, Any]) -> None:
    record = _node_record(shoal, victims["node"])
    # The thief lists nothing as known, hoping to be sent every attempt the node runs.
    response = _agent(shoal, victims["node"], "sync", {"known": [], "reports": [], "wait": False}, record["token"])
    assert response.status_code == 200, response.text
    assert response.json()["run"] == []
    assert SECRET not in response.text
    # Even the agent itself is sent only its own attempts: another node's, named as known,
    # are to be killed here, never assigned.
    own = [JOB, victims["task"], _attempt(shoal, victims["task"])]
    other = [JOB, victims["other_task"], _attempt(shoal, victims["other_task"])]
    response = _agent(shoal, victims["node"], "sync", {"incarnation": record["incarnation"], "known": [own, other],
                                                        "wait": False}, record["token"])
    assert response.status_code == 200, response.text
    assert SECRET not in response.text and response.json()["run"] == []
    assert response.json()["kill"] == [[*other, "stale"]]


def test_a_stolen_token_alone_cannot_end_the_nodes_attempt(shoal: RunningShoal, client: Any,
                                                            victims: dict[str, Any]) -> None:
    record = _node_record(shoal, victims["node"])
    task_id = victims["task"]
    forged = _report(task_id, _attempt(shoal, task_id))
    for incarnation in (None, "not-the-agents-incarnation"):
        body = {"incarnation": incarnation, "known": [], "reports": [forged], "wait": False}
        response = _agent(shoal, victims["node"], "sync", body, record["token"])
        assert response.status_code == 200, response.text
        _still_running(client, task_id)


@pytest.mark.parametrize("fields", [
    {"startTime": "2000-01-01T00:00:00.000000Z"},
    {"endTime": "2999-01-01T00:00:00.000000Z"},
    {"startTime": "2999-01-01T00:00:00.000000Z", "endTime": "2999-01-01T00:00:01.000000Z"},
    "end-before-start",
])
def test_a_report_with_made_up_times_is_refused(shoal: RunningShoal, client: Any, victims: dict[str, Any],
                                                fields: Any) -> None:
    record = _node_record(shoal, victims["node"])
    task_id = victims["task"]
    if fields == "end-before-start":
        now = datetime.now(UTC)
        fields = {"startTime": _iso(now), "endTime": _iso(now - timedelta(seconds=30))}
    report = _report(task_id, _attempt(shoal, task_id), **fields)
    body = {"incarnation": record["incarnation"], "known": [[JOB, task_id, report["attempt"]]],
            "reports": [report], "wait": False}
    response = _agent(shoal, victims["node"], "sync", body, record["token"])
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "InvalidPropertyValue"
    _still_running(client, task_id)


def test_a_token_cannot_end_another_nodes_attempt(shoal: RunningShoal, client: Any, victims: dict[str, Any]) -> None:
    record = _node_record(shoal, victims["node"])
    other_task = victims["other_task"]
    for attempt in (_attempt(shoal, other_task), _attempt(shoal, other_task) + 1):
        body = {"incarnation": record["incarnation"], "known": [[JOB, victims["task"], _attempt(shoal, victims["task"])]],
                "reports": [_report(other_task, attempt)], "wait": False}
        response = _agent(shoal, victims["node"], "sync", body, record["token"])
        assert response.status_code == 200, response.text
        assert response.json()["run"] == []
        _still_running(client, other_task)
    _still_running(client, victims["task"])


def _deep(levels: int) -> bytes:
    return b'{"a": [' * levels + b"1" + b"]}" * levels


MALFORMED_SYNCS: list[Any] = [
    b"[]", b'"text"', b"\xff\xfe", b'{"known": ', b'{"x": ' + _deep(200) + b"}",
    {"known": "all"}, {"known": [1]}, {"known": [["j", "t"]]}, {"known": [["j", "t", "1"]]},
    {"known": [["j", "t", 1.5]]}, {"known": [[None, "t", 1]]}, {"known": [["j" * 65, "t", 1]]},
    {"coordinated": "all"}, {"coordinated": [["j", "t"]]}, {"coordinated": [["j", "t", -1]]},
    {"coordinated": [[None, "t", 1]]},
    {"reports": "x"}, {"reports": ["x"]}, {"reports": [{"jobId": 1, "taskId": "t", "attempt": 1}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": "1"}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "exitCode": "0"}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "exitCode": 2**40}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "exitCode": True}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "startTime": "yesterday"}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "endTime": 12}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "failure": "bad"}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "failure": {"message": {"nested": 1}}}]},
    {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1}] * 2001},
    {"startTask": []}, {"startTask": {"state": "exploded"}}, {"startTask": {"state": "completed", "exitCode": "1"}},
    {"startTask": {"state": "completed", "retryCount": -1}},
    {"metrics": []}, {"metrics": {"cpuPercent": "hot"}}, {"metrics": {"cpuPercent": None}},
    {"wait": "yes"}, {"incarnation": 7},
    # Job preparation and release runs (docs/agent-protocol.md).
    {"knownJobTasks": "all"}, {"knownJobTasks": [["prep", "j"]]}, {"knownJobTasks": [["cleanup", "j", 1]]},
    {"knownJobTasks": [["prep", "j\u0000", 1]]}, {"knownJobTasks": [["prep", "j", -1]]},
    {"jobTasks": {}}, {"jobTasks": ["x"]}, {"jobTasks": [{"kind": "prep", "jobId": "j", "generation": 1}]},
    {"jobTasks": [{"kind": "prep", "jobId": "j", "generation": "1", "state": "completed"}]},
    {"jobTasks": [{"kind": "release", "jobId": "j", "generation": 1, "state": "completed", "exitCode": "0"}]},
    {"jobTasks": [{"kind": "prep", "jobId": "j", "generation": 1, "state": "running", "startTime": "soon"}]},
    {"jobTasks": [{"kind": "prep", "jobId": "j", "generation": 1, "state": "completed",
                   "endTime": "2999-01-01T00:00:00Z"}]},
    # Copies of output and of the agent's log (docs/agent-protocol.md "Output copies").
    {"agentLog": "text"}, {"agentLog": {"size": 1, "tail": "%%%"}}, {"agentLog": {"size": 0, "tail": "QUJD"}},
    {"agentLog": {"size": 10**30, "tail": ""}}, {"agentLog": {"size": 1, "tail": "A" * 100_000}},
    {"startTask": {"state": "completed", "exitCode": 0, "output": {"stdout": {"size": "1", "tail": ""}}}},
    {"startTask": {"state": "completed", "exitCode": 0, "output": "everything"}},
    {"runningOutputs": {}}, {"runningOutputs": [{"jobId": "j", "taskId": "t", "attempt": 1}]},
    {"runningOutputs": [{"jobId": "..", "taskId": "t\u0000", "attempt": 1, "output": {}}]},
    {"runningOutputs": [{"jobId": "j", "taskId": "t", "attempt": 1, "output": {}}] * 65},
]


@pytest.mark.parametrize("body", MALFORMED_SYNCS, ids=lambda b: repr(b)[:60])
def test_a_malformed_sync_is_400_never_500(shoal: RunningShoal, victims: dict[str, Any], body: Any) -> None:
    record = _node_record(shoal, victims["node"])
    if isinstance(body, dict):
        body = {"incarnation": record["incarnation"], **body}
    response = _agent(shoal, victims["node"], "sync", body, record["token"])
    assert response.status_code == 400, response.text


MALFORMED_HELLOS = [b"[]", b"\xff", {"pid": "1"}, {"pid": 2**40}, {"pid": 0}, {"incarnation": []},
                    {"fileServerUrl": 80}, {"ipAddress": ["127.0.0.1"]}, {"incarnation": "x" * 65}]
MALFORMED_GOODBYES = [b"[]", b"\xff", {"agentLog": "x"}, {"agentLog": {"size": 1, "tail": "!"}},
                      {"agentLog": {"size": 2, "tail": "QUJD"}}]


@pytest.mark.parametrize("call,body", [*(("hello", b) for b in MALFORMED_HELLOS),
                                       *(("goodbye", b) for b in MALFORMED_GOODBYES)], ids=lambda v: repr(v)[:40])
def test_a_malformed_hello_or_goodbye_is_400_and_changes_nothing(shoal: RunningShoal, client: Any,
                                                                 victims: dict[str, Any], call: str, body: Any) -> None:
    record = _node_record(shoal, victims["node"])
    response = _agent(shoal, victims["node"], call, body, record["token"])
    assert response.status_code == 400, response.text
    assert _node_record(shoal, victims["node"]) == record
    _still_running(client, victims["task"])


def test_a_deep_start_task_failure_cannot_wedge_the_node_listing(shoal: RunningShoal, victims: dict[str, Any]) -> None:
    record = _node_record(shoal, victims["node"])
    failure = b'{"category": "usererror", "code": "X", "message": "m", "details": ' + _deep(300) + b"}"
    body = (b'{"incarnation": "' + record["incarnation"].encode() + b'", "startTask": {"state": "completed", '
            b'"exitCode": 1, "failure": ' + failure + b"}}")
    response = _agent(shoal, victims["node"], "sync", body, record["token"])
    assert response.status_code == 400, response.text
    listed = rest.call(shoal, "GET", f"/pools/{POOL}/nodes")
    assert listed.status_code == 200, listed.text


@pytest.mark.parametrize("url", [
    "http://169.254.169.254:80", "http://10.1.2.3:8080", "http://example.com:80", "http://localhost:8080",
    "http://127.0.0.1:8080/elsewhere", "http://user:pw@127.0.0.1:8080", "ftp://127.0.0.1:21",
    "http://127.0.0.1", "http://127.0.0.1:99999", "http://[::ffff:a9fe:a9fe]:80", "//127.0.0.1:80",
])
def test_a_stolen_token_cannot_point_the_file_server_elsewhere(shoal: RunningShoal, client: Any,
                                                               victims: dict[str, Any], url: str) -> None:
    record = _node_record(shoal, victims["node"])
    body = {"pid": 12345, "fileServerUrl": url, "ipAddress": "127.0.0.1", "incarnation": "thief"}
    response = _agent(shoal, victims["node"], "hello", body, record["token"])
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "InvalidPropertyValue"
    assert _node_record(shoal, victims["node"]) == record
    _still_running(client, victims["task"])


def test_a_goodbye_without_the_token_is_refused_before_its_body_is_read(shoal: RunningShoal,
                                                                        victims: dict[str, Any]) -> None:
    record = _node_record(shoal, victims["node"])
    huge = b'{"agentLog": {"size": 1, "tail": "' + b"A" * 200_000 + b'"}}'
    assert _agent(shoal, victims["node"], "goodbye", huge, "not-the-token").status_code == 401
    assert _agent(shoal, victims["node"], "goodbye", huge, record["token"]).status_code == 413
    assert _node_record(shoal, victims["node"]) == record


def test_the_nodes_still_work_and_nothing_reached_the_catch_all(shoal: RunningShoal, client: Any,
                                                                victims: dict[str, Any]) -> None:
    # The file server URL a node recorded is still its own: a task's files come through it.
    client.create_task(JOB, models.BatchTaskCreateOptions(id="after", command_line="/bin/sh -c 'echo alive'"))
    client.terminate_task(JOB, victims["task"])
    wait_task_state(client, JOB, "after", "completed", timeout=60)
    assert client.get_task(JOB, "after").execution_info.exit_code == 0
    out = b"".join(client.download_task_file(JOB, "after", "stdout.txt")).decode()
    assert out.strip() == "alive"
    assert "Traceback" not in shoal.log(), shoal.log()[-4000:]


# --- a node that joined by hand -------------------------------------------------------------

@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `shoal server` (agents join by hand) with one node record claimed through register."""
    data_dir: Path = tmp_path_factory.mktemp("joined")
    server = start_shoal(data_dir, command="server")
    try:
        client = server.client()
        client.create_pool(pool_options("byhand", target_dedicated_nodes=1))
        wait_for(lambda: [n.state for n in client.list_nodes("byhand")] == ["creating"], 30,
                 message="a node record waiting for its agent")
        join_token = rest.call(server, "GET", "/shoal/v1/pools/byhand/join-token").json()["joinToken"]
        answer = httpx.post(f"{server.endpoint}/agent/v1/register", json={"poolId": "byhand"}, timeout=30,
                            headers={"Authorization": f"ShoalJoin {join_token}"})
        assert answer.status_code == 200, answer.text
        yield {"server": server, "join_token": join_token, **answer.json()}
    finally:
        stop_shoal(server)
        kill_agents(data_dir)


def test_register_reads_no_more_than_a_few_kib_before_the_join_token_is_checked(joined: dict[str, Any]) -> None:
    server = joined["server"]
    response = httpx.post(f"{server.endpoint}/agent/v1/register", content=b" " * (1024 * 1024), timeout=30,
                          headers={"Authorization": "ShoalJoin forged", "Content-Type": "application/json"})
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("url", ["http://10.9.9.9:4000", "http://169.254.169.254:80", "http://[::2]:4000"])
def test_a_joined_node_serves_files_only_from_where_it_connects(joined: dict[str, Any], url: str) -> None:
    server = joined["server"]
    body = {"pid": 4242, "fileServerUrl": url, "ipAddress": "127.0.0.1", "incarnation": "inc-1"}
    response = _agent(server, joined["nodeId"], "hello", body, joined["token"])
    assert response.status_code == 400, response.text
    assert _node_record(server, joined["nodeId"])["file_server_url"] is None


def test_a_joined_node_is_recorded_at_its_peer_address(joined: dict[str, Any]) -> None:
    server = joined["server"]
    # A wildcard bind is recorded at the address the hello came from; the claimed ipAddress is not trusted.
    body = {"pid": 4242, "fileServerUrl": "http://0.0.0.0:4567", "ipAddress": "8.8.8.8", "incarnation": "inc-2"}
    response = _agent(server, joined["nodeId"], "hello", body, joined["token"])
    assert response.status_code == 200, response.text
    record = _node_record(server, joined["nodeId"])
    assert record["file_server_url"] == "http://127.0.0.1:4567"
    assert record["ip_address"] == "127.0.0.1"
