"""`batch-sync` (many nodes' syncs in one call, for a process hosting many nodes) grants no more
than single syncs do: a real `shoal up` with two real nodes, each running a task of a job with a
secret, and a caller holding the nodes' tokens (from where a thief finds them, the database)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal
from tests.helpers import wait_for
from tests.security.agents import two_nodes_each_running_a_secret_task

SHOAL_MODES = ("root",)
POOL = "batch-pool"
JOB = "batch-job"
SECRET = "s3cr3t-of-the-batch-job"


def _records(shoal: RunningShoal) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in conn.execute("SELECT id, token, incarnation FROM nodes")}


def _attempt(shoal: RunningShoal, task_id: str) -> int:
    with sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT t.attempt FROM tasks t JOIN jobs j ON j.seq = t.job_seq "
                                "WHERE j.id = ? AND t.id = ?", (JOB, task_id)).fetchone()[0])


def _batch(shoal: RunningShoal, carrier: str, token: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(f"{shoal.endpoint}/agent/v1/nodes/{carrier}/batch-sync", content=content, timeout=30,
                      headers={"Authorization": f"ShoalNode {token}", "Content-Type": "application/json"})


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def nodes(shoal: RunningShoal, client: Any) -> dict[str, Any]:
    on_node = two_nodes_each_running_a_secret_task(client, POOL, JOB, SECRET)
    first, other = sorted(on_node)
    records = _records(shoal)
    return {"first": first, "other": other, "task": on_node, "records": records}


def _quiet(record: dict[str, Any], known: list[list[Any]]) -> dict[str, Any]:
    return {"incarnation": record["incarnation"], "known": known, "wait": False}


def test_without_a_node_token_a_batch_is_refused_before_its_body_is_read(shoal: RunningShoal,
                                                                         nodes: dict[str, Any]) -> None:
    for token in ("not-a-token", nodes["records"][nodes["other"]]["token"]):
        response = _batch(shoal, nodes["first"], token, b"x" * (4 * 1024 * 1024))
        assert response.status_code == 401, response.text


def test_each_entry_is_judged_on_its_own_token(shoal: RunningShoal, client: Any, nodes: dict[str, Any]) -> None:
    first, other = nodes["first"], nodes["other"]
    mine, theirs = nodes["records"][first], nodes["records"][other]
    own = [JOB, nodes["task"][first], _attempt(shoal, nodes["task"][first])]
    body = {"nodes": [
        {"nodeId": first, "token": mine["token"], "sync": _quiet(mine, [own])},
        # The other node named with the carrier's token: a thief holding one token.
        {"nodeId": other, "token": mine["token"], "sync": _quiet(theirs, [])},
        {"nodeId": "tvmps_nonexistent_d", "token": mine["token"], "sync": {"wait": False}},
    ]}
    response = _batch(shoal, first, mine["token"], body)
    assert response.status_code == 200, response.text
    answers = response.json()["nodes"]
    assert [a["nodeId"] for a in answers] == [first, other, "tvmps_nonexistent_d"]
    assert answers[0]["answer"]["run"] == [] and answers[0]["answer"]["kill"] == []
    assert answers[1]["error"]["status"] == 401
    assert answers[2]["error"]["status"] == 410
    assert SECRET not in response.text
    assert client.get_task(JOB, nodes["task"][other]).state == "running"


def test_a_bad_entry_fails_alone_and_leaves_nothing_behind(shoal: RunningShoal, client: Any,
                                                           nodes: dict[str, Any]) -> None:
    first, other = nodes["first"], nodes["other"]
    mine, theirs = nodes["records"][first], nodes["records"][other]
    task_id = nodes["task"][first]
    attempt = _attempt(shoal, task_id)
    now = datetime.now(UTC)
    # Times made up by decades: refused, and the whole transaction is run again without it.
    forged = {"jobId": JOB, "taskId": task_id, "attempt": attempt, "startTime": "2000-01-01T00:00:00.000000Z",
              "endTime": _iso(now), "exitCode": 0, "failure": None}
    own_other = [JOB, nodes["task"][other], _attempt(shoal, nodes["task"][other])]
    body = {"nodes": [
        {"nodeId": first, "token": mine["token"],
         "sync": {"incarnation": mine["incarnation"], "known": [[JOB, task_id, attempt]], "reports": [forged],
                  "wait": False}},
        {"nodeId": other, "token": theirs["token"], "sync": _quiet(theirs, [own_other])},
    ]}
    response = _batch(shoal, first, mine["token"], body)
    assert response.status_code == 200, response.text
    first_answer, other_answer = response.json()["nodes"]
    assert first_answer["error"]["status"] == 400, first_answer
    assert first_answer["error"]["code"] == "InvalidPropertyValue"
    assert other_answer["answer"]["kill"] == [] and other_answer["answer"]["run"] == []
    for task in ("a", "b"):
        assert client.get_task(JOB, task).state == "running"


def test_a_batch_report_ends_the_attempt_and_the_node_gets_its_next_task(shoal: RunningShoal, client: Any,
                                                                         nodes: dict[str, Any]) -> None:
    # What the simulated provider relies on: a report in a batch is recorded, acknowledged, and
    # the answer carries the next task for that node (scheduled in the same call).
    first = nodes["first"]
    mine = nodes["records"][first]
    task_id = nodes["task"][first]
    attempt = _attempt(shoal, task_id)
    client.create_task(JOB, models.BatchTaskCreateOptions(id="next", command_line="/bin/sleep 600"))
    now = datetime.now(UTC)
    report = {"jobId": JOB, "taskId": task_id, "attempt": attempt, "startTime": _iso(now - timedelta(seconds=1)),
              "endTime": _iso(now), "exitCode": 0, "failure": None}
    body = {"nodes": [{"nodeId": first, "token": mine["token"],
                       "sync": {"incarnation": mine["incarnation"], "known": [[JOB, task_id, attempt]],
                                "reports": [report], "wait": False}}]}
    response = _batch(shoal, first, mine["token"], body)
    assert response.status_code == 200, response.text
    answer = response.json()["nodes"][0]["answer"]
    assert answer["ack"] == [[JOB, task_id, attempt]]
    assert [(r["jobId"], r["taskId"]) for r in answer["run"]] == [(JOB, "next")]
    wait_for(lambda: client.get_task(JOB, task_id).state == "completed", timeout=10, message="the report recorded")
    assert client.get_task(JOB, task_id).execution_info.exit_code == 0


@pytest.mark.parametrize("body", [
    b"[]", b"\xff", {"nodes": "all"}, {"nodes": []}, {"nodes": [1]}, {"nodes": [{"nodeId": "x"}]},
    {"nodes": [{"nodeId": "x", "token": 7}]}, {"nodes": [{"nodeId": "x\x00", "token": "t"}]},
    {"nodes": [{"nodeId": "x", "token": "t"}] * 2},
    {"nodes": [{"nodeId": f"n{i}", "token": "t"} for i in range(1001)]},
], ids=lambda b: repr(b)[:50])
def test_a_malformed_batch_is_400_never_500(shoal: RunningShoal, nodes: dict[str, Any], body: Any) -> None:
    mine = nodes["records"][nodes["first"]]
    response = _batch(shoal, nodes["first"], mine["token"], body)
    assert response.status_code == 400, response.text


def test_a_malformed_entry_is_its_own_400(shoal: RunningShoal, nodes: dict[str, Any]) -> None:
    first = nodes["first"]
    mine = nodes["records"][first]
    for sync in ([], {"known": "all"}, {"reports": [{"jobId": 1}]}, {"wait": "yes"}):
        response = _batch(shoal, first, mine["token"], {"nodes": [{"nodeId": first, "token": mine["token"],
                                                                   "sync": sync}]})
        assert response.status_code == 200, response.text
        assert response.json()["nodes"][0]["error"]["status"] == 400
