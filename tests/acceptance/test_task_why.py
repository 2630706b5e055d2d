"""`shoal task why` (issue 10 item 7, beyond Azure): why an active task has not started, in plain
words, from the state the scheduler reads; through the CLI and the REST extension."""

from __future__ import annotations

import json
from typing import Any

from azure.batch import models

from tests.acceptance import rest
from tests.acceptance.test_cli import shoal_cli
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_task_state


def _why(shoal: Any, job_id: str, task_id: str) -> dict[str, Any]:
    response = rest.call(shoal, "GET", f"/shoal/v1/jobs/{job_id}/tasks/{task_id}/why")
    assert response.status_code == 200, response.text
    return response.json()


def _codes(shoal: Any, job_id: str, task_id: str) -> list[str]:
    return [r["code"] for r in _why(shoal, job_id, task_id)["reasons"]]


def _job(client: Any, job_id: str, pool_id: str, **kwargs: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                   **kwargs))


def test_a_task_of_a_job_whose_pool_does_not_exist(shoal, client):
    _job(client, "nowhere-job", "no-such-pool")
    client.create_task("nowhere-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert _codes(shoal, "nowhere-job", "t") == ["PoolNotFound"]
    out = shoal_cli(shoal, "task", "why", "nowhere-job", "t").stdout
    assert "PoolNotFound" in out and "no-such-pool" in out


def test_an_empty_pool_a_disabled_job_and_a_task_too_large(shoal, client):
    client.create_pool(pool_options("empty", target_dedicated_nodes=0, task_slots_per_node=2))
    _job(client, "empty-job", "empty")
    client.create_task("empty-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    client.create_task("empty-job", models.BatchTaskCreateOptions(id="big", command_line="/bin/true",
                                                                  required_slots=3))
    assert _codes(shoal, "empty-job", "t") == ["PoolHasNoNodes"]
    assert _codes(shoal, "empty-job", "big") == ["TaskLargerThanNode"]
    client.begin_disable_job("empty-job", models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=0.2).result()
    wait_for(lambda: client.get_job("empty-job").state == "disabled", 10)
    assert _codes(shoal, "empty-job", "t") == ["JobDisabled", "PoolHasNoNodes"]


def test_dependencies_full_nodes_parallel_limits_and_the_queue(shoal, client):
    client.create_pool(pool_options("busy", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "busy", 1)
    _job(client, "busy-job", "busy", uses_task_dependencies=True, max_parallel_tasks=1)
    client.create_task("busy-job", models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 30"))
    wait_task_state(client, "busy-job", "long", "running")
    client.create_task("busy-job", models.BatchTaskCreateOptions(id="next", command_line="/bin/true"))
    client.create_task("busy-job", models.BatchTaskCreateOptions(
        id="after", command_line="/bin/true", depends_on=models.BatchTaskDependencies(task_ids=["long"])))
    assert _why(shoal, "busy-job", "long")["reasons"][0]["code"] == "Running"
    assert _codes(shoal, "busy-job", "next") == ["JobMaxParallelTasksReached"]
    waiting = _why(shoal, "busy-job", "after")["reasons"]
    assert waiting[0]["code"] == "WaitingForDependencies" and waiting[0]["details"]["waitingFor"] == ["long"]
    # Lift the job's limit: now the full node is what holds a 2-slot task back.
    client.update_job("busy-job", models.BatchJobUpdateOptions(max_parallel_tasks=-1))
    wait_task_state(client, "busy-job", "next", "completed")
    client.create_task("busy-job", models.BatchTaskCreateOptions(id="wide", command_line="/bin/true",
                                                                 required_slots=2))
    assert _codes(shoal, "busy-job", "wide") == ["NoFreeSlot"]
    client.terminate_task("busy-job", "long")
    wait_task_state(client, "busy-job", "wide", "completed")
    assert _codes(shoal, "busy-job", "wide") == ["Completed"]


def test_a_start_task_that_fails_everywhere_is_named(shoal, client):
    client.create_pool(pool_options("broken", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'exit 9'", wait_for_success=True)))
    wait_for(lambda: [n.state for n in client.list_nodes("broken")] == ["starttaskfailed"], 30)
    _job(client, "broken-job", "broken")
    client.create_task("broken-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    reasons = _why(shoal, "broken-job", "t")["reasons"]
    assert [r["code"] for r in reasons] == ["StartTaskFailedOnEveryNode"]
    listed = json.loads(shoal_cli(shoal, "task", "why", "broken-job", "t", "--json").stdout)
    assert listed["reasons"] == reasons


def test_a_missing_task_is_404(shoal, client):
    rest.assert_batch_error(rest.call(shoal, "GET", "/shoal/v1/jobs/nowhere-job/tasks/nope/why"), 404, "TaskNotFound")
    rest.assert_batch_error(rest.call(shoal, "GET", "/shoal/v1/jobs/no-job/tasks/nope/why"), 404, "JobNotFound")
