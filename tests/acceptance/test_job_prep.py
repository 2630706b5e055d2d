"""Job preparation and release tasks through the official SDK against a real `shoal up` with
local nodes (semantics §3.4, §4.1, §4.2)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance import rest
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_tasks_done

POOL = "prep-pool"
# How long tasks that must stay off a node are watched (many scheduling passes).
WATCH_S = 2.0


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=2))
    wait_pool_idle(client, POOL, 2)
    return POOL


def _sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


def _job(client: Any, job_id: str, pool_id: str, prep: models.BatchJobPreparationTask | None,
         release: models.BatchJobReleaseTask | None = None) -> str:
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), job_preparation_task=prep,
        job_release_task=release))
    return job_id


def _tasks(client: Any, job_id: str, count: int, command: str) -> None:
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{i}", command_line=command)
                                 for i in range(count)])


def _terminate(client: Any, job_id: str, *, wait: bool = True) -> None:
    """Terminate the job; with `wait`, until the SDK's poller sees it completed."""
    from azure.batch.models._models import BatchJobTerminateOptions

    poller = client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="UserTerminate"), polling_interval=0.1)
    if wait:
        poller.result()


def _job_state(client: Any, job_id: str, state: str, timeout: float = 30.0) -> Any:
    return wait_for(lambda: (job := client.get_job(job_id)).state == state and job, timeout,
                    message=f"job {job_id} {state}")


def _statuses(client: Any, job_id: str, **kwargs: Any) -> list[Any]:
    return list(client.list_job_preparation_and_release_task_status(job_id, **kwargs))


def _get(shoal: Any, path: str, **params: str) -> dict[str, Any]:
    answer = rest.call(shoal, "GET", path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _post(shoal: Any, path: str, body: Any) -> Any:
    return rest.call(shoal, "POST", path, body=json.dumps(body).encode())


def _gone(client: Any, job_id: str) -> bool:
    try:
        client.get_job(job_id)
    except HttpResponseError as error:
        return error.status_code == 404
    return False


def _node_file(client: Any, node_id: str, path: str) -> bytes:
    return b"".join(client.download_node_file(POOL, node_id, path))


def test_prep_runs_once_per_node_before_the_tasks_which_see_its_folder(client: Any, pool: str) -> None:
    prep = models.BatchJobPreparationTask(command_line=_sh(
        "sleep 0.5; echo $AZ_BATCH_NODE_ID > $AZ_BATCH_TASK_WORKING_DIR/ready; "
        "echo run >> $AZ_BATCH_NODE_SHARED_DIR/prep-once.log"))
    job_id = _job(client, "prep-once", pool, prep)
    _tasks(client, job_id, 8, _sh("cat $AZ_BATCH_JOB_PREP_WORKING_DIR/ready; echo $AZ_BATCH_JOB_PREP_DIR"))
    wait_tasks_done(client, job_id)
    tasks = list(client.list_tasks(job_id))
    assert all(t.execution_info.result == "success" for t in tasks), [t.execution_info for t in tasks]
    used = set()
    for task in tasks:
        out = b"".join(client.download_task_file(job_id, task.id, "stdout.txt")).decode().split("\n")
        # The prep ran on the task's own node before it, and its folder is Batch's.
        assert out[0] == task.node_info.node_id
        assert out[1].endswith(f"/workitems/{job_id}/job-1/jobpreparation")
        used.add(task.node_info.node_id)
    statuses = _statuses(client, job_id)
    assert {s.node_id for s in statuses} == used
    for status in statuses:
        info = status.job_preparation_task_execution_info
        assert (status.pool_id, info.state, info.exit_code, info.result, info.retry_count) == (
            POOL, "completed", 0, "success", 0)
        assert info.task_root_directory == f"workitems/{job_id}/job-1/jobpreparation"
        assert status.node_url.endswith(f"/pools/{POOL}/nodes/{status.node_id}")
        assert status.job_release_task_execution_info is None
        # Once per node, whatever the number of tasks it ran.
        assert _node_file(client, status.node_id, "shared/prep-once.log") == b"run\n"
    shown = client.get_job(job_id).job_preparation_task
    assert (shown.id, shown.wait_for_success, shown.rerun_on_node_reboot_after_success) == (
        "jobpreparation", True, True)
    assert shown.constraints.max_task_retry_count == 0
    assert shown.user_identity.auto_user.scope == "pool"
    _terminate(client, job_id)
    _job_state(client, job_id, "completed")


def test_job_shows_prep_and_release_as_azure_does(client: Any, pool: str, shoal: Any) -> None:
    job_id = _job(client, "prep-shown", pool, models.BatchJobPreparationTask(command_line="/bin/true"),
                  models.BatchJobReleaseTask(command_line="/bin/true"))
    body = _get(shoal, f"/jobs/{job_id}")
    assert body["jobPreparationTask"] == {
        "id": "jobpreparation", "commandLine": "/bin/true",
        "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "retentionTime": "P7D",
                        "maxTaskRetryCount": 0},
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
        "waitForSuccess": True, "rerunOnNodeRebootAfterSuccess": True}
    assert body["jobReleaseTask"] == {
        "id": "jobrelease", "commandLine": "/bin/true", "maxWallClockTime": "PT15M", "retentionTime": "P7D",
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}}
    custom = _post(shoal, "/jobs", {
        "id": "prep-custom", "poolInfo": {"poolId": POOL},
        "commonEnvironmentSettings": [{"name": "C", "value": "1"}],
        "jobPreparationTask": {"id": "setup", "commandLine": "/bin/true", "waitForSuccess": False,
                               "rerunOnNodeRebootAfterSuccess": False,
                               "constraints": {"maxWallClockTime": "PT1H", "maxTaskRetryCount": 2},
                               "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "admin"}},
                               "environmentSettings": [{"name": "A", "value": "b"}]},
        "jobReleaseTask": {"id": "teardown", "commandLine": "/bin/true", "maxWallClockTime": "PT5M",
                           "retentionTime": "PT1H"}})
    assert custom.status_code == 201, custom.text
    shown = _get(shoal, "/jobs/prep-custom")
    assert shown["jobPreparationTask"] == {
        "id": "setup", "commandLine": "/bin/true", "environmentSettings": [{"name": "A", "value": "b"}],
        "constraints": {"maxWallClockTime": "PT1H", "retentionTime": "P7D", "maxTaskRetryCount": 2},
        "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "admin"}},
        "waitForSuccess": False, "rerunOnNodeRebootAfterSuccess": False}
    assert shown["jobReleaseTask"] == {
        "id": "teardown", "commandLine": "/bin/true", "maxWallClockTime": "PT5M", "retentionTime": "PT1H",
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}}
    # The default ids are free for tasks when the job's own tasks are named otherwise.
    client.create_task("prep-custom", models.BatchTaskCreateOptions(id="jobpreparation", command_line="/bin/true"))
    client.begin_delete_job("prep-custom", polling_interval=0.1)
    # No node has run anything yet: an empty list, as Azure answers.
    assert _statuses(client, job_id) == []
    # Task ids of the prep and release are taken.
    for task_id, code in (("JobPreparation", "TaskIdSameAsJobPreparationTask"),
                          ("jobrelease", "TaskIdSameAsJobReleaseTask")):
        assert error_of(lambda task_id=task_id: client.create_task(
            job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true"))) == (409, code)
    # In a collection it is that task's error.
    answer = _post(shoal, f"/jobs/{job_id}/addtaskcollection",
                   {"value": [{"id": "jobrelease", "commandLine": "/bin/true"}]})
    assert [r["error"]["code"] for r in answer.json()["value"]] == ["TaskIdSameAsJobReleaseTask"]
    client.begin_delete_job(job_id, polling_interval=0.1)


def test_a_failing_prep_keeps_the_tasks_off_its_node(client: Any, pool: str) -> None:
    # The prep fails (twice: one retry) on one node and succeeds on the other.
    doomed = sorted(n.id for n in client.list_nodes(pool))[0]
    prep = models.BatchJobPreparationTask(command_line=_sh(f"test $AZ_BATCH_NODE_ID != {doomed} || exit 3"),
                                          constraints=models.BatchTaskConstraints(max_task_retry_count=1))
    job_id = _job(client, "prep-fail", pool, prep)
    _tasks(client, job_id, 6, "/bin/true")
    wait_tasks_done(client, job_id)
    statuses = {s.node_id: s.job_preparation_task_execution_info for s in _statuses(client, job_id)}
    failed = [node for node, info in statuses.items() if info.result == "failure"]
    assert failed == [doomed], statuses
    info = statuses[failed[0]]
    assert (info.exit_code, info.retry_count, info.failure_info.code) == (3, 1, "FailureExitCode")
    tasks = list(client.list_tasks(job_id))
    # Every task ran on the other node, and none ran (or sits) on the failed one.
    assert all(t.execution_info.result == "success" for t in tasks)
    assert {t.node_info.node_id for t in tasks} == set(statuses) - set(failed)
    # The failed node still serves other jobs.
    other = _job(client, "prep-fail-other", pool, None)
    client.create_tasks(other, [models.BatchTaskCreateOptions(
        id=f"o{i}", command_line="/bin/sleep 0.5") for i in range(4)])
    wait_tasks_done(client, other)
    assert failed[0] in {t.node_info.node_id for t in client.list_tasks(other)}
    _terminate(client, job_id)
    _terminate(client, other)


def test_a_prep_failing_everywhere_leaves_the_tasks_active(client: Any, pool: str) -> None:
    job_id = _job(client, "prep-stuck", pool, models.BatchJobPreparationTask(command_line="/bin/false"))
    _tasks(client, job_id, 3, "/bin/true")
    wait_for(lambda: len([s for s in _statuses(client, job_id)
                          if s.job_preparation_task_execution_info.state == "completed"]) == 2,
             message="prep to fail on both nodes")
    time.sleep(WATCH_S)
    counts = client.get_job_task_counts(job_id).task_counts
    assert (counts.active, counts.running, counts.completed) == (3, 0, 0)
    assert {t.state for t in client.list_tasks(job_id)} == {"active"}
    _terminate(client, job_id)
    _job_state(client, job_id, "completed")


def test_without_wait_for_success_tasks_run_alongside_and_despite_a_failure(client: Any, pool: str) -> None:
    prep = models.BatchJobPreparationTask(command_line=_sh("sleep 3; exit 1"), wait_for_success=False)
    job_id = _job(client, "prep-nowait", pool, prep)
    _tasks(client, job_id, 2, _sh("test -e $AZ_BATCH_JOB_PREP_DIR/stdout.txt"))
    started = time.monotonic()
    wait_tasks_done(client, job_id)
    assert time.monotonic() - started < 3
    assert all(t.execution_info.result == "success" for t in client.list_tasks(job_id))
    wait_for(lambda: all(s.job_preparation_task_execution_info.state == "completed"
                         for s in _statuses(client, job_id)), message="prep to end")
    assert {s.job_preparation_task_execution_info.result for s in _statuses(client, job_id)} == {"failure"}
    _terminate(client, job_id)


def test_release_runs_on_terminate_and_the_job_completes_after_it(client: Any, pool: str) -> None:
    prep = models.BatchJobPreparationTask(command_line="/bin/true")
    release = models.BatchJobReleaseTask(command_line=_sh(
        "sleep 1.5; echo released $AZ_BATCH_JOB_ID >> $AZ_BATCH_NODE_SHARED_DIR/release-term.log"))
    job_id = _job(client, "rel-term", pool, prep, release)
    _tasks(client, job_id, 4, "/bin/true")
    wait_tasks_done(client, job_id)
    _terminate(client, job_id, wait=False)
    # Terminating while the releases run, completed once they have.
    assert client.get_job(job_id).state == "terminating"
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "UserTerminate"
    statuses = _statuses(client, job_id)
    assert statuses
    for status in statuses:
        info = status.job_release_task_execution_info
        assert (info.state, info.exit_code, info.result) == ("completed", 0, "success")
        assert info.task_root_directory == f"workitems/{job_id}/job-1/jobrelease"
        assert _node_file(client, status.node_id, "shared/release-term.log") == f"released {job_id}\n".encode()


def test_release_runs_when_an_active_job_is_deleted(client: Any, pool: str) -> None:
    prep = models.BatchJobPreparationTask(command_line="/bin/true")
    release = models.BatchJobReleaseTask(command_line=_sh(
        "sleep 1; echo deleted >> $AZ_BATCH_NODE_SHARED_DIR/release-del.log"))
    job_id = _job(client, "rel-del", pool, prep, release)
    _tasks(client, job_id, 1, "/bin/sleep 30")
    # (A task waiting for its job's preparation shows running too: wait for the preparation.)
    wait_for(lambda: [s for s in _statuses(client, job_id)
                      if s.job_preparation_task_execution_info.state == "completed"], message="prep done")
    wait_for(lambda: client.get_task(job_id, "t0").state == "running", message="task running")
    node_id = client.get_task(job_id, "t0").node_info.node_id
    client.begin_delete_job(job_id, polling_interval=0.1)
    wait_for(lambda: _gone(client, job_id), 30,
             message="job gone")
    assert _node_file(client, node_id, "shared/release-del.log") == b"deleted\n"


def test_a_failing_release_does_not_block_completion(client: Any, pool: str) -> None:
    job_id = _job(client, "rel-fail", pool, models.BatchJobPreparationTask(command_line="/bin/true"),
                  models.BatchJobReleaseTask(command_line="/bin/false"))
    _tasks(client, job_id, 1, "/bin/true")
    wait_tasks_done(client, job_id)
    _terminate(client, job_id)
    _job_state(client, job_id, "completed")
    [status] = _statuses(client, job_id)
    assert status.job_release_task_execution_info.result == "failure"
    assert status.job_release_task_execution_info.exit_code == 1


def test_status_list_pages_and_filters(client: Any, pool: str, shoal: Any) -> None:
    job_id = _job(client, "prep-list", pool, models.BatchJobPreparationTask(command_line="/bin/true"))
    _tasks(client, job_id, 8, "/bin/sleep 0.3")
    wait_tasks_done(client, job_id)
    everything = _statuses(client, job_id)
    assert len(everything) == 2
    first = _get(shoal, f"/jobs/{job_id}/jobpreparationandreleasetaskstatus", maxresults="1")
    assert len(first["value"]) == 1 and "odata.nextLink" in first
    assert set(first["value"][0]) == {"poolId", "nodeId", "nodeUrl", "jobPreparationTaskExecutionInfo"}
    # The SDK follows the continuation.
    assert [s.node_id for s in _statuses(client, job_id, max_results=1)] == [s.node_id for s in everything]
    one = everything[1].node_id
    assert [s.node_id for s in _statuses(client, job_id, filter=f"nodeId eq '{one}'")] == [one]
    assert len(_statuses(client, job_id, filter="jobPreparationTaskExecutionInfo/state eq 'completed'")) == 2
    assert _statuses(client, job_id, filter="jobPreparationTaskExecutionInfo/state eq 'running'") == []
    assert len(_statuses(client, job_id, filter="jobPreparationTaskExecutionInfo/exitCode eq 0")) == 2
    assert error_of(lambda: _statuses(client, job_id, filter="nodeId eq")) == (400, "InvalidQueryParameterValue")
    assert error_of(lambda: _statuses(client, "no-such-job")) == (404, "JobNotFound")
    plain = _job(client, "prep-none", pool, None)
    assert error_of(lambda: _statuses(client, plain)) == (409, "JobPreparationTaskOrReleaseTaskNotSpecified")
    _terminate(client, job_id)
    _terminate(client, plain)


@pytest.mark.parametrize(("body", "status", "code", "name"), [
    ({"jobReleaseTask": {"commandLine": "/bin/true"}}, 400, "MissingRequiredProperty", "jobPreparationTask"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "id": "bad id"}}, 400, "InvalidPropertyValue",
     "jobPreparationTask.id"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "id": "x" * 65}}, 400, "InvalidPropertyValue",
     "jobPreparationTask.id"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "id": "same"},
      "jobReleaseTask": {"commandLine": "/bin/true", "id": "SAME"}}, 400, "InvalidPropertyValue", "jobReleaseTask.id"),
    ({"jobPreparationTask": {}}, 400, "MissingRequiredProperty", "jobPreparationTask.commandLine"),
    ({"jobPreparationTask": {"commandLine": 5}}, 400, "InvalidPropertyValue", "jobPreparationTask.commandLine"),
    ({"jobPreparationTask": {"commandLine": "x" * 9000}}, 400, "InvalidPropertyValue",
     "jobPreparationTask.commandLine"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "waitForSuccess": "yes"}}, 400, "InvalidPropertyValue",
     "jobPreparationTask.waitForSuccess"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "constraints": {"maxTaskRetryCount": -2}}}, 400,
     "InvalidPropertyValue", "jobPreparationTask.constraints.maxTaskRetryCount"),
    ({"jobPreparationTask": {"commandLine": "/bin/true"},
      "jobReleaseTask": {"commandLine": "/bin/true", "maxWallClockTime": "PT16M"}}, 400, "InvalidPropertyValue",
     "jobReleaseTask.maxWallClockTime"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "containerSettings": {"imageName": "x"}}}, 400,
     "FeatureNotSupported", "jobPreparationTask.containerSettings"),
    ({"jobPreparationTask": "not an object"}, 400, "InvalidPropertyValue", "jobPreparationTask"),
    ({"jobPreparationTask": {"commandLine": "/bin/echo a\u0000b"}}, 400, "InvalidPropertyValue",
     "jobPreparationTask.commandLine"),
    ({"jobPreparationTask": {"commandLine": "/bin/true"}, "jobReleaseTask": {"commandLine": "/bin/true\u0000"}},
     400, "InvalidPropertyValue", "jobReleaseTask.commandLine"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "resourceFiles": {"httpUrl": "x"}}}, 400,
     "InvalidPropertyValue", "jobPreparationTask.resourceFiles"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "userIdentity": {"autoUser": {"scope": "galaxy"}}}}, 400,
     "InvalidPropertyValue", "jobPreparationTask.userIdentity.autoUser.scope"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "id": "jm"}, "jobManagerTask": {"id": "JM",
     "commandLine": "/bin/true"}}, 400, "InvalidPropertyValue", "jobManagerTask.id"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "environmentSettings": [{"name": "A=B", "value": "1"}]}},
     400, "InvalidPropertyValue", "jobPreparationTask.environmentSettings[0].name"),
])
def test_bad_prep_and_release_bodies_are_refused(client: Any, shoal: Any, body: dict[str, Any], status: int,
                                                  code: str, name: str) -> None:
    answer = _post(shoal, "/jobs", {"id": "bad-prep", "poolInfo": {"poolId": POOL}, **body})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["code"] == code
    values = {v["key"]: v["value"] for v in error.get("values", [])}
    assert values.get("PropertyName") == name, error
    assert error_of(lambda: client.get_job("bad-prep")) == (404, "JobNotFound")


def test_prep_downloads_its_files_and_a_failed_download_is_final(client: Any, pool: str) -> None:
    prep = models.BatchJobPreparationTask(
        command_line=_sh('test -s passwd && test "$FROM_PREP" = yes'),
        resource_files=[models.ResourceFile(http_url="file:///etc/passwd", file_path="passwd")],
        environment_settings=[models.EnvironmentSetting(name="FROM_PREP", value="yes")])
    job_id = _job(client, "prep-files", pool, prep)
    _tasks(client, job_id, 1, _sh("cmp $AZ_BATCH_JOB_PREP_WORKING_DIR/passwd /etc/passwd"))
    wait_tasks_done(client, job_id)
    assert client.get_task(job_id, "t0").execution_info.exit_code == 0
    # A source the prep's user cannot read: a pre-processing failure, never retried.
    bad = models.BatchJobPreparationTask(
        command_line="/bin/true", constraints=models.BatchTaskConstraints(max_task_retry_count=3),
        resource_files=[models.ResourceFile(http_url="file:///etc/shadow", file_path="shadow")])
    bad_id = _job(client, "prep-bad-file", pool, bad)
    _tasks(client, bad_id, 1, "/bin/true")
    info = wait_for(lambda: [s.job_preparation_task_execution_info for s in _statuses(client, bad_id)
                             if s.job_preparation_task_execution_info.state == "completed"], message="prep failed")[0]
    assert (info.result, info.retry_count, info.failure_info.category) == ("failure", 0, "usererror")
    assert info.exit_code is None
    # It fails on the other node too; the task waits, active.
    wait_for(lambda: len([s for s in _statuses(client, bad_id)
                          if s.job_preparation_task_execution_info.state == "completed"]) == 2, message="both")
    wait_for(lambda: client.get_task(bad_id, "t0").state == "active", message="the task back in the queue")
    _terminate(client, job_id)
    _terminate(client, bad_id)


def test_a_release_is_stopped_at_its_wall_clock_limit_and_the_job_completes(client: Any, pool: str) -> None:
    job_id = _job(client, "rel-slow", pool, models.BatchJobPreparationTask(command_line="/bin/true"),
                  models.BatchJobReleaseTask(command_line="/bin/sleep 60", max_wall_clock_time="PT1S"))
    _tasks(client, job_id, 1, "/bin/true")
    wait_tasks_done(client, job_id)
    started = time.monotonic()
    _terminate(client, job_id)
    assert time.monotonic() - started < 20
    info = _statuses(client, job_id)[0].job_release_task_execution_info
    assert (info.result, info.failure_info.code) == ("failure", "TaskEnded")
