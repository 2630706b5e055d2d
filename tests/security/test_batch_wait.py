"""`batch-wait` (the long-poll of many nodes in one call, for a process hosting many nodes)
grants no more than single long-polls: it names nodes as they are woken and nothing else, judges
every entry on its own token, and gives way to any newer call of a node. A real `shoal server`
with nodes joined by hand (tests/hand_agent.py), so no real agent competes for the nodes' calls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal, start_shoal, stop_shoal
from tests.hand_agent import ConnectionCounter, HandAgent, join_by_hand
from tests.helpers import wait_for

POOL = "waiting"
SECRET = "s3cr3t-of-the-waiting-job"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir: Path = tmp_path_factory.mktemp("batch-wait")
    shoal = start_shoal(data_dir, command="server")
    counter = ConnectionCounter()
    try:
        agents = join_by_hand(shoal, POOL, 2, counter.port)
        client = shoal.client()
        client.create_job(models.BatchJobCreateOptions(
            id="wjob", pool_info=models.BatchPoolInfo(pool_id=POOL),
            common_environment_settings=[models.EnvironmentSetting(name="SECRET", value=SECRET)]))
        yield {"shoal": shoal, "agents": agents, "client": client}
    finally:
        counter.close()
        stop_shoal(shoal)


class Stream:
    """A batch-wait call read line by line in a thread."""

    def __init__(self, shoal: RunningShoal, carrier: HandAgent, entries: list[dict[str, Any]]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw = b""
        self.status: int | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, args=(shoal, carrier, entries), daemon=True)
        self._thread.start()

    def _read(self, shoal: RunningShoal, carrier: HandAgent, entries: list[dict[str, Any]]) -> None:
        try:
            self._read_lines(shoal, carrier, entries)
        except httpx.HTTPError as error:  # the server stopped under an open wait (teardown)
            self.error = error

    def _read_lines(self, shoal: RunningShoal, carrier: HandAgent, entries: list[dict[str, Any]]) -> None:
        with httpx.stream("POST", f"{shoal.endpoint}/agent/v1/nodes/{carrier.node_id}/batch-wait",
                          json={"nodes": entries}, timeout=60,
                          headers={"Authorization": f"ShoalNode {carrier.token}"}) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                self.raw += line.encode() + b"\n"
                if line.strip():
                    self.lines.append(json.loads(line))

    def woken(self) -> list[str]:
        return [node_id for line in self.lines for node_id in line.get("woken", [])]

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _entry(agent: HandAgent, token: str | None = None) -> dict[str, Any]:
    return {"nodeId": agent.node_id, "token": token or agent.token, "incarnation": agent.incarnation}


def test_without_a_node_token_a_wait_is_refused_before_its_body_is_read(cluster: dict[str, Any]) -> None:
    shoal, first = cluster["shoal"], cluster["agents"][0]
    for token in ("not-a-token", cluster["agents"][1].token):
        response = httpx.post(f"{shoal.endpoint}/agent/v1/nodes/{first.node_id}/batch-wait",
                              content=b"x" * (1024 * 1024), timeout=30,
                              headers={"Authorization": f"ShoalNode {token}"})
        assert response.status_code == 401, response.text


@pytest.mark.parametrize("body", [
    b"[]", b"\xff", {"nodes": "all"}, {"nodes": []}, {"nodes": [1]}, {"nodes": [{"nodeId": "x"}]},
    {"nodes": [{"nodeId": "x", "token": "t", "incarnation": 5}]},
    {"nodes": [{"nodeId": "x", "token": "t", "incarnation": "i" * 65}]},
    {"nodes": [{"nodeId": "x\x00", "token": "t"}]}, {"nodes": [{"nodeId": "x", "token": "t"}] * 2},
    {"nodes": [{"nodeId": f"n{i}", "token": "t"} for i in range(1001)]},
], ids=lambda b: repr(b)[:50])
def test_a_malformed_wait_is_400_never_500(cluster: dict[str, Any], body: Any) -> None:
    shoal, first = cluster["shoal"], cluster["agents"][0]
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    response = httpx.post(f"{shoal.endpoint}/agent/v1/nodes/{first.node_id}/batch-wait", content=content,
                          timeout=30, headers={"Authorization": f"ShoalNode {first.token}",
                                               "Content-Type": "application/json"})
    assert response.status_code == 400, response.text


def test_each_entry_is_judged_on_its_own_token(cluster: dict[str, Any]) -> None:
    shoal, (first, other) = cluster["shoal"], cluster["agents"]
    # Nothing left to watch once both entries fail: the call ends at once.
    stream = Stream(shoal, first, [_entry(other, token=first.token),
                                   {"nodeId": "tvmps_nonexistent_d", "token": first.token}])
    assert stream.join(10)
    assert stream.status == 200
    errors = {e["nodeId"]: e["status"] for line in stream.lines for e in line.get("errors", [])}
    assert errors == {other.node_id: 401, "tvmps_nonexistent_d": 410}
    assert stream.lines[-1] == {"end": True}
    assert stream.woken() == []


def test_a_node_is_named_when_woken_and_only_ids_travel(cluster: dict[str, Any]) -> None:
    shoal, client, (first, other) = cluster["shoal"], cluster["client"], cluster["agents"]
    for agent in (first, other):
        agent.sync()  # each has just synced: nothing is pending for either
    stream = Stream(shoal, first, [_entry(first), _entry(other)])
    time.sleep(0.5)
    assert stream.woken() == []
    client.create_task("wjob", models.BatchTaskCreateOptions(id="w1", command_line="/bin/true"))
    wait_for(lambda: stream.woken(), 10, message="a woken line")
    (woken,) = stream.woken()
    assert woken in (first.node_id, other.node_id)
    assert SECRET.encode() not in stream.raw and b"commandLine" not in stream.raw
    # The woken node syncs, as after a long-poll, and gets its task.
    agent = first if woken == first.node_id else other
    answer = agent.sync()
    assert [(r["jobId"], r["taskId"]) for r in answer["run"]] == [("wjob", "w1")]
    agent.finish_all()


def test_a_node_woken_before_the_wait_is_named_at_once(cluster: dict[str, Any]) -> None:
    shoal, client, (first, other) = cluster["shoal"], cluster["client"], cluster["agents"]
    for agent in (first, other):
        agent.sync()
    client.create_task("wjob", models.BatchTaskCreateOptions(id="w2", command_line="/bin/true"))
    task = wait_for(lambda: (t := client.get_task("wjob", "w2")).state == "running" and t, 10,
                    message="the task placed")
    stream = Stream(shoal, first, [_entry(first), _entry(other)])
    wait_for(lambda: stream.woken(), 5, message="the woken line")
    assert stream.woken() == [task.node_info.node_id]
    agent = first if task.node_info.node_id == first.node_id else other
    agent.sync()
    agent.finish_all()


def test_a_newer_call_of_a_node_takes_it_out_of_the_wait(cluster: dict[str, Any]) -> None:
    shoal, client, (first, other) = cluster["shoal"], cluster["client"], cluster["agents"]
    for agent in (first, other):
        agent.sync()
    stream = Stream(shoal, first, [_entry(first), _entry(other)])
    time.sleep(0.5)
    for agent in (first, other):
        agent.sync()  # both moved on: the wait no longer speaks for them
    client.create_task("wjob", models.BatchTaskCreateOptions(id="w3", command_line="/bin/true"))
    wait_for(lambda: client.get_task("wjob", "w3").state == "running", 10, message="the task placed")
    time.sleep(1.0)
    assert stream.woken() == []
    for agent in (first, other):
        if agent.sync()["run"]:
            agent.finish_all()
