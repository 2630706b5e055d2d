"""The job manager task through the official SDK against a real `shoal up` with local nodes
(semantics §3.3, §3.2, §2.4 terminate reason `JMComplete`)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance import rest
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "jm-pool"
POLL_S = 0.1
# How long a job that must stay active is watched (many scheduling passes).
STAYS_ACTIVE_WATCH_S = 2.0


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=2))
    wait_pool_idle(client, POOL, 2)
    return POOL


def _terminate(client: Any, job_id: str) -> None:
    from azure.batch.models._models import BatchJobTerminateOptions

    try:
        client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="TestDone"),
                                   polling_interval=POLL_S).result()
    except HttpResponseError:
        pass


def _job(client: Any, job_id: str, pool_id: str, manager: models.BatchJobManagerTask) -> str:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                   job_manager_task=manager))
    return job_id


def _job_state(client: Any, job_id: str, state: str, timeout: float = 30.0) -> Any:
    return wait_for(lambda: (job := client.get_job(job_id)).state == state and job, timeout,
                    message=f"job {job_id} {state}")


def test_job_manager_completion_terminates_the_job_and_kills_its_other_tasks(client: Any, pool: str) -> None:
    command = "/bin/sh -c 'sleep 1; echo manager=$AZ_BATCH_TASK_ID token=${AZ_BATCH_AUTHENTICATION_TOKEN:-none}'"
    job_id = _job(client, "jm-kill", pool, models.BatchJobManagerTask(id="manager", command_line=command))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 60"))
    wait_task_state(client, job_id, "long", "running")
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "JMComplete"
    manager = client.get_task(job_id, "manager")
    assert manager.state == "completed" and manager.execution_info.exit_code == 0
    out = b"".join(client.download_task_file(job_id, "manager", "stdout.txt"))
    # The manager is a task of the job (its own id) and gets no token without authenticationTokenSettings.
    assert out == b"manager=manager token=none\n"
    long = client.get_task(job_id, "long")
    assert long.state == "completed" and long.execution_info.result == "failure"
    assert sorted(t.id for t in client.list_tasks(job_id)) == ["long", "manager"]


def test_job_shows_its_job_manager_with_defaults(client: Any, pool: str) -> None:
    # A manager that outlives the test: one that ended would complete the job (killJobOnCompletion)
    # before the update below, on a slow machine.
    job_id = _job(client, "jm-shown", pool, models.BatchJobManagerTask(
        id="mgr", command_line="/bin/sleep 60", display_name="the manager",
        environment_settings=[models.EnvironmentSetting(name="A", value="1")]))
    try:
        shown = client.get_job(job_id).job_manager_task
        assert (shown.id, shown.command_line, shown.display_name) == ("mgr", "/bin/sleep 60", "the manager")
        assert shown.kill_job_on_completion is True and shown.run_exclusive is True
        assert shown.allow_low_priority_node is True
        assert [(e.name, e.value) for e in shown.environment_settings] == [("A", "1")]
        # The manager is a task of the job: its id is taken.
        status, code = error_of(lambda: client.create_task(
            job_id, models.BatchTaskCreateOptions(id="MGR", command_line="/bin/true")))
        assert (status, code) == (409, "TaskExists")
        # Updating the job keeps its manager (JobUpdateParameter has none to replace it with).
        client.update_job(job_id, models.BatchJobUpdateOptions(priority=5))
        assert client.get_job(job_id).job_manager_task.id == "mgr"
    finally:
        _terminate(client, job_id)


def test_kill_job_on_completion_false_leaves_the_job_active(client: Any, pool: str) -> None:
    job_id = _job(client, "jm-keep", pool, models.BatchJobManagerTask(
        id="manager", command_line="/bin/true", kill_job_on_completion=False))
    try:
        wait_task_state(client, job_id, "manager", "completed")
        assert client.get_job(job_id).job_manager_task.kill_job_on_completion is False
        time.sleep(STAYS_ACTIVE_WATCH_S)
        assert client.get_job(job_id).state == "active"
    finally:
        _terminate(client, job_id)


def test_a_failing_manager_is_retried_then_terminates_the_job(client: Any, pool: str) -> None:
    job_id = _job(client, "jm-fails", pool, models.BatchJobManagerTask(
        id="manager", command_line="/bin/sh -c 'exit 3'",
        constraints=models.BatchTaskConstraints(max_task_retry_count=1)))
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "JMComplete"
    manager = client.get_task(job_id, "manager")
    assert manager.execution_info.retry_count == 1 and manager.execution_info.exit_code == 3


BAD_MANAGERS = [
    ({"commandLine": "/bin/true"}, "MissingRequiredProperty"),
    ({"id": "m"}, "MissingRequiredProperty"),
    ({"id": "bad id!", "commandLine": "/bin/true"}, "InvalidPropertyValue"),
    ({"id": "m" * 65, "commandLine": "/bin/true"}, "InvalidPropertyValue"),
    ({"id": 7, "commandLine": "/bin/true"}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": ["/bin/true"]}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true\u0000"}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true", "killJobOnCompletion": "maybe"}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true", "runExclusive": 1}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true", "requiredSlots": 0}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["a"]}}, "InvalidRequestBody"),
    ({"id": "m", "commandLine": "/bin/true", "shoal": 1}, "InvalidRequestBody"),
    ({"id": "m", "commandLine": "/bin/true",
      "applicationPackageReferences": [{"applicationId": 7}]}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true",
      "authenticationTokenSettings": {"access": ["pool"]}}, "InvalidPropertyValue"),
    ({"id": "m", "commandLine": "/bin/true",
      "resourceFiles": [{"httpUrl": "http://x/y", "filePath": "../up"}]}, "InvalidPropertyValue"),
    ("not an object", "InvalidPropertyValue"),
]


@pytest.mark.parametrize(("manager", "code"), BAD_MANAGERS)
def test_bad_job_manager_is_refused_and_creates_no_job(shoal: Any, client: Any, pool: str, manager: Any,
                                                       code: str) -> None:
    body = {"id": "jm-bad", "poolInfo": {"poolId": pool}, "jobManagerTask": manager}
    response = rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode())
    rest.assert_batch_error(response, 400, code)
    assert "jm-bad" not in {job.id for job in client.list_jobs()}


@pytest.fixture(scope="module")
def one_node_pool(client: Any) -> str:
    client.create_pool(pool_options("jm-one", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "jm-one", 1)
    return "jm-one"


def test_run_exclusive_keeps_other_tasks_off_its_node_while_it_runs(shoal: Any, client: Any,
                                                                   one_node_pool: str) -> None:
    job_id = _job(client, "jm-exclusive", one_node_pool, models.BatchJobManagerTask(
        id="manager", command_line="/bin/sleep 3", kill_job_on_completion=False))
    try:
        wait_task_state(client, job_id, "manager", "running")
        client.create_task(job_id, models.BatchTaskCreateOptions(id="other", command_line="/bin/true"))
        # The node has a free slot, yet the manager wants it to itself.
        time.sleep(STAYS_ACTIVE_WATCH_S)
        assert client.get_task(job_id, "manager").state == "running"
        assert client.get_task(job_id, "other").state == "active"
        manager = wait_task_state(client, job_id, "manager", "completed", timeout=30)
        other = wait_task_state(client, job_id, "other", "completed", timeout=30)
        assert other.execution_info.start_time >= manager.execution_info.end_time
    finally:
        _terminate(client, job_id)


def test_an_exclusive_manager_waits_for_an_idle_node(client: Any, one_node_pool: str) -> None:
    client.create_job(models.BatchJobCreateOptions(id="jm-first", pool_info=models.BatchPoolInfo(pool_id=one_node_pool)))
    client.create_task("jm-first", models.BatchTaskCreateOptions(id="busy", command_line="/bin/sleep 3"))
    try:
        wait_task_state(client, "jm-first", "busy", "running")
        job_id = _job(client, "jm-waits", one_node_pool, models.BatchJobManagerTask(
            id="manager", command_line="/bin/true", kill_job_on_completion=False))
        time.sleep(1.0)
        assert client.get_task(job_id, "manager").state == "active"
        manager = wait_task_state(client, job_id, "manager", "completed", timeout=30)
        assert manager.execution_info.start_time >= client.get_task("jm-first", "busy").execution_info.end_time
    finally:
        _terminate(client, "jm-first")
        _terminate(client, "jm-waits")


def test_without_run_exclusive_other_tasks_share_its_node(client: Any, one_node_pool: str) -> None:
    job_id = _job(client, "jm-shared", one_node_pool, models.BatchJobManagerTask(
        id="manager", command_line="/bin/sleep 3", kill_job_on_completion=False, run_exclusive=False))
    try:
        wait_task_state(client, job_id, "manager", "running")
        client.create_task(job_id, models.BatchTaskCreateOptions(id="other", command_line="/bin/true"))
        wait_task_state(client, job_id, "other", "completed", timeout=10)
        assert client.get_task(job_id, "manager").state == "running"
    finally:
        _terminate(client, job_id)


def test_a_dedicated_only_manager_never_runs_on_spot_nodes(client: Any) -> None:
    client.create_pool(pool_options("jm-spot", target_low_priority_nodes=1, task_slots_per_node=1))
    wait_pool_idle(client, "jm-spot", 1)
    job_id = _job(client, "jm-dedicated", "jm-spot", models.BatchJobManagerTask(
        id="manager", command_line="/bin/true", allow_low_priority_node=False))
    try:
        client.create_task(job_id, models.BatchTaskCreateOptions(id="ordinary", command_line="/bin/true"))
        wait_task_state(client, job_id, "ordinary", "completed", timeout=20)
        time.sleep(STAYS_ACTIVE_WATCH_S)
        assert client.get_task(job_id, "manager").state == "active"
        job = client.get_job(job_id)
        assert job.state == "active" and job.job_manager_task.allow_low_priority_node is False
    finally:
        _terminate(client, job_id)


def test_required_slots_of_a_job_manager_is_not_defined_before_2020_09(shoal: Any, client: Any, pool: str) -> None:
    old = "2020-03-01.11.0"
    body = {"id": "jm-old", "poolInfo": {"poolId": pool},
            "jobManagerTask": {"id": "m", "commandLine": "/bin/true", "requiredSlots": 1}}
    response = rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode(), api_version=old)
    rest.assert_batch_error(response, 400, "InvalidRequestBody")
    body["jobManagerTask"] = {"id": "m", "commandLine": "/bin/true", "killJobOnCompletion": False}
    assert rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode(), api_version=old).status_code == 201
    try:
        client.create_job(models.BatchJobCreateOptions(
            id="jm-new", pool_info=models.BatchPoolInfo(pool_id=pool), job_manager_task=models.BatchJobManagerTask(
                id="m", command_line="/bin/true", required_slots=2, kill_job_on_completion=False)))
        assert client.get_job("jm-new").job_manager_task.required_slots == 2
        shown = rest.call(shoal, "GET", "/jobs/jm-new", api_version=old).json()["jobManagerTask"]
        assert "requiredSlots" not in shown and shown["id"] == "m"
    finally:
        _terminate(client, "jm-old")
        _terminate(client, "jm-new")


def test_a_deleted_manager_leaves_no_rule_behind(client: Any, one_node_pool: str) -> None:
    """SQLite gives a deleted row's number (the newest task's) to the next task: a task of another
    job must not inherit the deleted manager's runExclusive through it."""
    job_id = _job(client, "jm-deleted", one_node_pool, models.BatchJobManagerTask(
        id="manager", command_line="/bin/sleep 30", kill_job_on_completion=False))
    client.create_job(models.BatchJobCreateOptions(id="jm-after", pool_info=models.BatchPoolInfo(pool_id=one_node_pool)))
    try:
        wait_task_state(client, job_id, "manager", "running")
        client.delete_task(job_id, "manager")
        wait_for(lambda: not [n for n in client.list_nodes(one_node_pool) if n.running_tasks_count], 20,
                 message="the node freed")
        client.create_task("jm-after", models.BatchTaskCreateOptions(id="first", command_line="/bin/sleep 5"))
        wait_task_state(client, "jm-after", "first", "running")
        client.create_task("jm-after", models.BatchTaskCreateOptions(id="second", command_line="/bin/true"))
        wait_task_state(client, "jm-after", "second", "completed", timeout=4)
    finally:
        _terminate(client, job_id)
        _terminate(client, "jm-after")


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="task users are real Linux users: needs a root agent")
def test_the_job_manager_runs_as_the_user_its_identity_names(client: Any) -> None:
    # Issue 9 item 4: every kind of task runs as its userIdentity, the job manager too.
    client.create_pool(pool_options("jm-users", target_dedicated_nodes=1, task_slots_per_node=2, user_accounts=[
        models.UserAccount(name="jmuser", password="jm-password-1")]))
    wait_pool_idle(client, "jm-users", 1)
    cases = {
        "named": (models.UserIdentity(username="jmuser"), "jmuser_"),
        "default": (None, "shl_"),
        "admin": (models.UserIdentity(auto_user=models.AutoUserSpecification(elevation_level="admin")), "root"),
    }
    for case, (identity, expected) in cases.items():
        job_id = _job(client, f"jm-as-{case}", "jm-users", models.BatchJobManagerTask(
            id="manager", command_line="/bin/sh -c 'id -un'", user_identity=identity))
        _job_state(client, job_id, "completed")
        out = b"".join(client.download_task_file(job_id, "manager", "stdout.txt")).decode().strip()
        assert out.startswith(expected), (case, out)
        if case == "default":
            assert out.endswith("_pool")  # the pool-scope non-admin auto-user
