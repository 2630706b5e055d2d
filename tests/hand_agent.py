"""A node agent driven by hand over the agent protocol (docs/agent-protocol.md), for tests that
must control each call: what it sends, when, and what it acknowledges. Joined to a real
`shoal server` (which accepts agents joining by hand)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shoal.testing.server import RunningShoal
from tests.helpers import pool_options, wait_for


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
                    "startTime": iso(now - timedelta(seconds=1)), "endTime": iso(now)} for j, t, a in self.known]
        answer = self.sync(reports=reports)
        assert len(answer["ack"]) == len(reports)
        self.known = []

    def until(self, predicate: Any, message: str, timeout: float = 30.0, **extra: Any) -> dict[str, Any]:
        """Sync until an answer satisfies ``predicate`` (each sync is a heartbeat too)."""
        def satisfied() -> dict[str, Any] | None:
            answer = self.sync(**extra)
            return answer if predicate(answer) else None

        return wait_for(satisfied, timeout, interval=0.2, message=message)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")



def join_by_hand(shoal: RunningShoal, pool: str, count: int, file_server_port: int) -> list[HandAgent]:
    """A pool of ``count`` nodes, each joined by a hand agent that has said hello and is idle.
    Its file server address is ``file_server_port`` (a `ConnectionCounter`, as a rule)."""
    client = shoal.client()
    client.create_pool(pool_options(pool, target_dedicated_nodes=count, task_slots_per_node=4))
    wait_for(lambda: [n.state for n in client.list_nodes(pool)] == ["creating"] * count, 30,
             message="the node records")
    joined = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "join-token", pool,
                             "--data-dir", str(shoal.data_dir)], capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    agents = []
    for number in range(count):
        response = httpx.post(f"{shoal.endpoint}/agent/v1/register", json={"poolId": pool}, timeout=30,
                              headers={"Authorization": f"ShoalJoin {joined.stdout.strip()}"})
        assert response.status_code == 200, response.text
        agent = HandAgent(shoal, response.json()["nodeId"], response.json()["token"])
        agent.incarnation = f"hand-agent-{number}"
        agent.hello(file_server_port)
        agent.sync()
        agents.append(agent)
    wait_for(lambda: [n.state for n in client.list_nodes(pool)] == ["idle"] * count, 30, message="the nodes idle")
    return agents
