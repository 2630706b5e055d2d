"""Folder deletions travel to nodes in sync answers (`deleteTaskDirs`, `deleteJobDirs`), never as
calls to a node's file server, and are recorded only once the agent acknowledges them.

A real `shoal server` and a node driven by hand over the agent protocol (as
tests/security/test_batch_sync.py does), whose file server address is a socket that counts the
connections it gets: any call the control plane made to the node would show there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import ResourceNotFoundError

from shoal.testing.server import RunningShoal, start_shoal, stop_shoal
from tests.hand_agent import ConnectionCounter, HandAgent, join_by_hand
from tests.helpers import wait_for

POOL = "orders"


def _join(shoal: RunningShoal, counter: ConnectionCounter) -> HandAgent:
    return join_by_hand(shoal, POOL, 1, counter.port)[0]


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
