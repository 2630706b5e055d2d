"""Task retentionTime removes a completed task's folder; job maxWallClockTime ends the job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done


@pytest.fixture(scope="module")
def pool(client):
    client.create_pool(pool_options("limits", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "limits", 1)
    return "limits"


def _stdout_exists(client, job_id: str, task_id: str) -> bool:
    try:
        b"".join(client.download_task_file(job_id, task_id, "stdout.txt"))
        return True
    except HttpResponseError as error:
        assert error.status_code == 404
        return False


def test_retention_time_removes_the_task_folder_but_keeps_the_task(client, pool):
    client.create_job(models.BatchJobCreateOptions(id="kept", pool_info=models.BatchPoolInfo(pool_id=pool)))
    client.create_task("kept", models.BatchTaskCreateOptions(
        id="short", command_line="/bin/echo bye",
        constraints=models.BatchTaskConstraints(retention_time=timedelta(seconds=2))))
    client.create_task("kept", models.BatchTaskCreateOptions(id="default", command_line="/bin/echo stays"))
    wait_tasks_done(client, "kept")
    assert _stdout_exists(client, "kept", "short")
    wait_for(lambda: not _stdout_exists(client, "kept", "short"), 30, message="the folder to be removed")
    assert client.get_task("kept", "short").execution_info.result == "success"
    assert _stdout_exists(client, "kept", "default")  # the default retention is 7 days


def test_job_max_wall_clock_time_terminates_the_job(client, pool):
    client.create_job(models.BatchJobCreateOptions(
        id="bounded", pool_info=models.BatchPoolInfo(pool_id=pool),
        constraints=models.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=3))))
    client.create_task("bounded", models.BatchTaskCreateOptions(id="slow", command_line="/bin/sleep 60"))
    job = wait_for(lambda: (j := client.get_job("bounded")).state == "completed" and j, 30,
                   message="the job to complete")
    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    task = client.get_task("bounded", "slow")
    assert task.state == "completed" and task.execution_info.failure_info.code == "TaskEnded"
