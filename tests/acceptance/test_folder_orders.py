"""Folder deletions travel to nodes in sync answers (`deleteTaskDirs`, `deleteJobDirs`), never as
calls to a node's file server, and are recorded only once the agent acknowledges them.

A real `shoal server` and a node driven by hand over the agent protocol (as
tests/security/test_batch_sync.py does), whose file server address is a socket that counts the
connections it gets: any call the control plane made to the node would show there.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.batch import models
from azure.core.exceptions import ResourceNotFoundError

from shoal.testing.server import RunningShoal, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for

POOL = "orders"


class ConnectionCounter:
    """A listening socket standing in for the node's file server: it only counts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class HandAgent:
    """One node's agent, as the protocol document describes it, driven step by step."""

    def __init__(self, shoal: RunningShoal, node_id: str, token: str) -> None:
        self.shoal, self.node_id, self.token = shoal, node_id, token
        self.incarnation = "hand-agent-1"
        self.known: list[list[Any]] = []

    def call(self, route: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.shoal.endpoint}/agent/v1/nodes/{self.node_id}/{route}", json=body, timeout=30,
                          headers={"Authorization": f"ShoalNode {self.token}"})

    def hello(self, file_server_port: int) -> None:
        response = self.call("hello", {"pid": os.getpid(), "incarnation": self.incarnation, "ipAddress": "127.0.0.1",
                                       "fileServerUrl": f"http://127.0.0.1:{file_server_port}"})
        assert response.status_code == 200, response.text

    def sync(self, **extra: Any) -> dict[str, Any]:
        response = self.call("sync", {"incarnation": self.incarnation, "known": self.known, "wait": False, **extra})
        assert response.status_code == 200, response.text
        answer = response.json()
        for assignment in answer["run"]:
            self.known.append([assignment["jobId"], assignment["taskId"], assignment["attempt"]])
        return answer

    def finish_all(self) -> None:
        now = datetime.now(UTC)
        reports = [{"jobId": j, "taskId": t, "attempt": a, "exitCode": 0,
                    "startTime": _iso(now - timedelta(seconds=1)), "endTime": _iso(now)} for j, t, a in self.known]
        answer = self.sync(reports=reports)
        assert len(answer["ack"]) == len(reports)
        self.known = []

    def until(self, predicate: Any, message: str, timeout: float = 30.0, **extra: Any) -> dict[str, Any]:
        """Sync until an answer satisfies ``predicate`` (each sync is a heartbeat too)."""
        def satisfied() -> dict[str, Any] | None:
            answer = self.sync(**extra)
            return answer if predicate(answer) else None

        return wait_for(satisfied, timeout, interval=0.2, message=message)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _retention_deadline(shoal: RunningShoal, job_id: str, task_id: str) -> Any:
    with sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT t.retention_deadline FROM tasks t JOIN jobs j ON j.seq = t.job_seq "
                            "WHERE j.id = ? AND t.id = ?", (job_id, task_id)).fetchone()[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    shoal = start_shoal(tmp_path / "server", command="server")
    counter = ConnectionCounter()
    state: dict[str, Any] = {"shoal": shoal, "counter": counter, "dir": tmp_path / "server"}
    try:
        yield state
    finally:
        counter.close()
        stop_shoal(state["shoal"])


def _join(shoal: RunningShoal, counter: ConnectionCounter) -> HandAgent:
    client = shoal.client()
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=4))
    wait_for(lambda: [n.state for n in client.list_nodes(POOL)] == ["creating"], 30, message="a node record")
    joined = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "join-token", POOL,
                             "--data-dir", str(shoal.data_dir)], capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    response = httpx.post(f"{shoal.endpoint}/agent/v1/register", json={"poolId": POOL}, timeout=30,
                          headers={"Authorization": f"ShoalJoin {joined.stdout.strip()}"})
    assert response.status_code == 200, response.text
    agent = HandAgent(shoal, response.json()["nodeId"], response.json()["token"])
    agent.hello(counter.port)
    agent.sync()
    wait_for(lambda: [n.state for n in client.list_nodes(POOL)] == ["idle"], 30, message="the node idle")
    return agent


def _run_tasks(client: Any, agent: HandAgent, job_id: str, tasks: dict[str, float | None]) -> None:
    """Add the tasks (id -> retention seconds) and complete them all on the hand agent."""
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    for task_id, retention in tasks.items():
        constraints = models.BatchTaskConstraints(retention_time=timedelta(seconds=retention)) if retention else None
        client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true",
                                                                 constraints=constraints))
    agent.until(lambda _answer: len(agent.known) == len(tasks), "the tasks to be assigned")
    agent.finish_all()
    wait_for(lambda: all(t.state == "completed" for t in client.list_tasks(job_id)), 30, message="tasks completed")


def test_an_expired_task_folder_is_ordered_until_acknowledged_even_across_a_restart(server: dict[str, Any]) -> None:
    shoal, counter = server["shoal"], server["counter"]
    agent = _join(shoal, counter)
    client = shoal.client()
    _run_tasks(client, agent, "kept", {"brief": 1.0, "stays": None})

    answer = agent.until(lambda a: a["deleteTaskDirs"], "the folder order")
    assert answer["deleteTaskDirs"] == [["kept", "brief"]]
    assert answer["deleteJobDirs"] == []
    # Not yet acknowledged: the store still says the folder is due, and no order went elsewhere.
    assert _retention_deadline(shoal, "kept", "brief") is not None
    # Sent once; a sync right after does not repeat it (it is resent only after 30 s unanswered).
    assert agent.sync()["deleteTaskDirs"] == []

    # The server restarts before the agent acknowledges: the order comes again.
    stop_shoal(shoal)
    shoal = server["shoal"] = start_shoal(server["dir"], command="server")
    agent.shoal = shoal
    again = agent.until(lambda a: a["deleteTaskDirs"], "the order resent after a restart")
    assert again["deleteTaskDirs"] == [["kept", "brief"]]

    agent.sync(deletedTaskDirs=[["kept", "brief"]])
    wait_for(lambda: _retention_deadline(shoal, "kept", "brief") is None, 30, message="the removal recorded")
    client = shoal.client()
    assert client.get_task("kept", "brief").execution_info.result == "success"
    assert _retention_deadline(shoal, "kept", "stays") is not None
    assert counter.connections == 0


def test_a_deleted_job_waits_for_its_folder_and_a_deleted_task_orders_its_own(server: dict[str, Any]) -> None:
    shoal, counter = server["shoal"], server["counter"]
    agent = _join(shoal, counter)
    client = shoal.client()
    _run_tasks(client, agent, "gone", {"one": None, "two": None})

    client.delete_task("gone", "one")
    answer = agent.until(lambda a: a["deleteTaskDirs"], "the deleted task's folder order")
    assert answer["deleteTaskDirs"] == [["gone", "one"]]
    agent.sync(deletedTaskDirs=[["gone", "one"]])

    client.begin_delete_job("gone", polling_interval=0.5)
    answer = agent.until(lambda a: a["deleteJobDirs"], "the job folder order")
    assert answer["deleteJobDirs"] == ["gone"]
    # The job stays `deleting` until its folder is acknowledged.
    assert client.get_job("gone").state == "deleting"
    # An acknowledgement for something never ordered (or another job) changes nothing.
    agent.sync(deletedJobDirs=["other"], deletedTaskDirs=[["gone", "two"]])
    assert client.get_job("gone").state == "deleting"
    agent.sync(deletedJobDirs=["gone"])

    def job_gone() -> bool:
        try:
            client.get_job("gone")
            return False
        except ResourceNotFoundError:
            return True

    wait_for(job_gone, 30, message="the job record removed")
    assert counter.connections == 0


MALFORMED_ACKNOWLEDGEMENTS = [
    {"deletedTaskDirs": "kept/brief"},
    {"deletedTaskDirs": [["kept"]]},
    {"deletedTaskDirs": [["kept", "brief", 1]]},
    {"deletedTaskDirs": [[1, 2]]},
    {"deletedTaskDirs": [["kept", "x" * 65]]},
    {"deletedTaskDirs": [["kept", "a\x00b"]]},
    {"deletedTaskDirs": [["kept", ""]]},
    {"deletedTaskDirs": [["j", "t"]] * 1001},
    {"deletedJobDirs": {"kept": True}},
    {"deletedJobDirs": [["kept"]]},
    {"deletedJobDirs": [None]},
    {"deletedJobDirs": ["j"] * 1001},
]


def test_malformed_acknowledgements_are_refused(server: dict[str, Any]) -> None:
    shoal, counter = server["shoal"], server["counter"]
    agent = _join(shoal, counter)
    for extra in MALFORMED_ACKNOWLEDGEMENTS:
        response = agent.call("sync", {"incarnation": agent.incarnation, "known": [], "wait": False, **extra})
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["code"] == "InvalidPropertyValue"
    # The node is still fine: a good sync goes through.
    agent.sync()


def test_a_long_poll_dropped_for_a_newer_sync_ends_at_once_and_takes_nothing(server: dict[str, Any]) -> None:
    """An agent with news drops its long-poll and syncs again. The dropped poll must not live on
    until its timeout, and must not take what a wake-up brings (an order sent into a closed
    connection would wait 30 s to be resent)."""
    shoal, counter = server["shoal"], server["counter"]
    agent = _join(shoal, counter)
    client = shoal.client()
    _run_tasks(client, agent, "polls", {"first": None})
    held: dict[str, Any] = {}

    def long_poll() -> None:
        began = time.monotonic()
        held["response"] = agent.call("sync", {"incarnation": agent.incarnation, "known": [], "wait": True})
        held["seconds"] = time.monotonic() - began

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)  # the poll is held (nothing is due for the node)
    assert poller.is_alive()
    agent.sync()  # the newer sync, as after news
    poller.join(10)
    assert not poller.is_alive()
    assert held["response"].status_code == 499
    assert held["seconds"] < 5
    # The order a deletion brings goes to a live sync, not to the superseded one.
    client.delete_task("polls", "first")
    answer = agent.until(lambda a: a["deleteTaskDirs"], "the order", timeout=10)
    assert answer["deleteTaskDirs"] == [["polls", "first"]]
