"""A node's recentTasks (issue 10 item 4): the tasks whose attempts ended there lately, not only
the ones running now, each once, newest first, at most ten; kept across retries and requeues."""

from __future__ import annotations

from typing import Any

import pytest
from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle, wait_task_state, wait_tasks_done

POOL = "history"
JOB = "history-job"


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=1))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return wait_pool_idle(client, POOL, 1)[0]


def _recent(client: Any, node: Any) -> list[Any]:
    return client.get_node(POOL, node.id).recent_tasks or []


def test_finished_tasks_stay_in_recent_tasks_once_each_newest_first(client, node):
    client.create_task(JOB, models.BatchTaskCreateOptions(id="first", command_line="/bin/true"))
    wait_task_state(client, JOB, "first", "completed")
    # Fails, is retried on the same node, fails again: two attempts, one entry.
    client.create_task(JOB, models.BatchTaskCreateOptions(
        id="flaky", command_line="/bin/sh -c 'exit 3'", constraints=models.BatchTaskConstraints(max_task_retry_count=1)))
    wait_task_state(client, JOB, "flaky", "completed")
    client.create_task(JOB, models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 30"))
    wait_task_state(client, JOB, "long", "running")
    recent = _recent(client, node)
    assert [t.task_id for t in recent] == ["long", "flaky", "first"]
    assert [t.task_state for t in recent] == ["running", "completed", "completed"]
    assert recent[1].execution_info.exit_code == 3 and recent[1].execution_info.retry_count == 1
    assert recent[2].task_url.endswith(f"/jobs/{JOB}/tasks/first") and recent[2].job_id == JOB
    listed = next(n for n in client.list_nodes(POOL) if n.id == node.id)
    assert [t.task_id for t in listed.recent_tasks] == ["long", "flaky", "first"]
    client.terminate_task(JOB, "long")
    wait_task_state(client, JOB, "long", "completed")
    assert [t.task_id for t in _recent(client, node)][:1] == ["long"]


def test_recent_tasks_are_the_ten_newest_and_a_deleted_task_leaves_them(client, node):
    client.create_tasks(JOB, [models.BatchTaskCreateOptions(id=f"quick{i:02d}", command_line="/bin/true")
                              for i in range(12)])
    wait_tasks_done(client, JOB)
    recent = [t.task_id for t in _recent(client, node)]
    # One slot, so they ran one after another (in the order the SDK sent them): the newest ten
    # are the last ten to end, last first.
    ended = sorted((t for t in client.list_tasks(JOB) if t.id.startswith("quick")),
                   key=lambda t: t.execution_info.end_time, reverse=True)
    assert recent == [t.id for t in ended[:10]]
    newest = recent[0]
    client.delete_task(JOB, newest)
    assert newest not in [t.task_id for t in _recent(client, node)]
