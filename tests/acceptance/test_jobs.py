"""Jobs through the official SDK: CRUD, listing, the job state machine and task counts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from azure.batch import models
from azure.batch.models._models import BatchJobTerminateOptions as TerminateOptions  # not re-exported
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError

from shoal.sharedkey import sign_request
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "jobs-pool"
POLL_S = 0.1


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, POOL, 2)
    return POOL


def new_job(client: Any, job_id: str, **kwargs: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL),
                                                   **kwargs))


def add_task(client: Any, job_id: str, task_id: str, command: str, **kwargs: Any) -> None:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs))


def raw_post(shoal: Any, path: str, body: bytes = b"") -> httpx.Response:
    url = f"{shoal.endpoint}{path}?api-version=2025-06-01"
    headers = sign_request("POST", url, {"Content-Length": str(len(body))}, shoal.account, shoal.primary_key)
    return httpx.post(url, content=body, headers=headers)


def wait_job(client: Any, job_id: str, state: str, timeout: float = 20.0) -> Any:
    def reached() -> Any:
        job = client.get_job(job_id)
        return job if job.state == state else None

    return wait_for(reached, timeout, interval=POLL_S, message=f"{job_id} {state}")


def end_job(client: Any, job_id: str) -> Any:
    # The SDK cannot send a terminate without a reason (an empty options model is falsy and it
    # then fails to build the request), so tests always name one.
    return client.begin_terminate_job(job_id, TerminateOptions(termination_reason="Cleanup"),
                                      polling_interval=POLL_S)


def test_create_get_and_conflicts(client: Any, pool: str, shoal: Any) -> None:
    created = client.create_job(
        models.BatchJobCreateOptions(id="crud-job", pool_info=models.BatchPoolInfo(pool_id=pool),
                                     display_name="CRUD", priority=10,
                                     metadata=[models.BatchMetadataItem(name="k", value="v")]),
        cls=lambda response, _body, _headers: (response.http_response.status_code, response.http_response.headers))
    status, headers = created
    assert status == 201
    assert headers["ETag"] and headers["Last-Modified"] and headers["request-id"]
    assert headers["DataServiceId"] == headers["Location"] == f"{shoal.endpoint}/jobs/crud-job"
    job = client.get_job("crud-job")
    assert (job.id, job.state, job.priority, job.display_name) == ("crud-job", "active", 10, "CRUD")
    assert job.pool_info.pool_id == pool
    assert job.metadata[0].name == "k" and job.metadata[0].value == "v"
    assert job.etag == headers["ETag"]
    assert job.all_tasks_complete_mode == "noaction"
    assert job.execution_info.pool_id == pool and job.execution_info.start_time is not None
    # Ids are unique regardless of case.
    assert error_of(lambda: new_job(client, "CRUD-JOB")) == (409, "JobExists")
    assert error_of(lambda: client.get_job("no-such-job")) == (404, "JobNotFound")
    assert error_of(lambda: client.update_job("no-such-job", models.BatchJobUpdateOptions(priority=1))) == (
        404, "JobNotFound")
    assert error_of(lambda: client.terminate_task("no-such-job", "t")) == (404, "JobNotFound")


def test_list_paging_filter_select(client: Any, pool: str) -> None:
    for i in range(5):
        new_job(client, f"lst-{i}", priority=i * 100)
    pages = list(client.list_jobs(max_results=2, filter="startswith(id, 'lst-')").by_page())
    assert [len(list(page)) for page in pages] == [2, 2, 1]
    high = [j.id for j in client.list_jobs(filter="startswith(id, 'lst-') and priority ge 300")]
    assert sorted(high) == ["lst-3", "lst-4"]
    selected = [j for j in client.list_jobs(filter="startswith(id, 'lst-')", select=["id", "priority"])]
    assert sorted(j.priority for j in selected) == [0, 100, 200, 300, 400]
    assert all(j.state is None and j.pool_info is None for j in selected)


def test_update_and_replace(client: Any, pool: str) -> None:
    new_job(client, "upd-job", priority=5, metadata=[models.BatchMetadataItem(name="a", value="1")])
    # A task no node can hold keeps the job unfinished: with no tasks at all, terminatejob
    # (set below) would end the job at once, racing the rest of the test.
    add_task(client, "upd-job", "parked", "/bin/true", required_slots=1000)
    client.update_job("upd-job", models.BatchJobUpdateOptions(
        priority=-20, max_parallel_tasks=3, all_tasks_complete_mode="terminatejob",
        constraints=models.BatchJobConstraints(max_wall_clock_time="PT1H", max_task_retry_count=2)))
    job = client.get_job("upd-job")
    assert (job.priority, job.max_parallel_tasks, job.all_tasks_complete_mode) == (-20, 3, "terminatejob")
    assert job.constraints.max_task_retry_count == 2
    assert job.constraints.max_wall_clock_time.total_seconds() == 3600
    # PATCH leaves out what it does not name.
    assert [(m.name, m.value) for m in job.metadata] == [("a", "1")]

    # PUT replaces: whatever is left out goes back to its default.
    client.replace_job("upd-job", models.BatchJob(pool_info=models.BatchPoolInfo(pool_id=pool), priority=7,
                                                  metadata=[models.BatchMetadataItem(name="b", value="2")]))
    job = client.get_job("upd-job")
    assert (job.priority, job.max_parallel_tasks, job.all_tasks_complete_mode) == (7, -1, "noaction")
    assert job.constraints.max_task_retry_count == 0
    assert [(m.name, m.value) for m in job.metadata] == [("b", "2")]

    # Stale ETags are refused, current ones accepted.
    stale = job.etag
    client.update_job("upd-job", models.BatchJobUpdateOptions(priority=8), etag=stale,
                      match_condition=MatchConditions.IfNotModified)
    assert error_of(lambda: client.update_job("upd-job", models.BatchJobUpdateOptions(priority=9), etag=stale,
                                              match_condition=MatchConditions.IfNotModified)) == (
        412, "ConditionNotMet")
    assert client.get_job("upd-job").priority == 8


def test_delete_job_removes_tasks_and_folders(client: Any, pool: str, shoal: Any) -> None:
    new_job(client, "del-job")
    add_task(client, "del-job", "sleeper", "sleep 60")
    task = wait_task_state(client, "del-job", "sleeper", "running")
    folder = shoal.nodes_dir / task.node_info.node_id / "batch" / "tasks" / "workitems" / "del-job"
    wait_for(lambda: (folder / "job-1" / "sleeper" / "stdout.txt").exists(), 10, message="task folder")
    poller = client.begin_delete_job("del-job", polling_interval=POLL_S)
    try:
        assert client.get_job("del-job").state == "deleting"
    except HttpResponseError as exc:  # already reaped: deleting is brief
        assert exc.status_code == 404
    assert error_of(lambda: add_task(client, "del-job", "late", "true"))[0] in (404, 409)
    poller.result()
    assert error_of(lambda: client.get_job("del-job")) == (404, "JobNotFound")
    assert error_of(lambda: client.get_task("del-job", "sleeper")) == (404, "JobNotFound")
    wait_for(lambda: not folder.exists(), 10, message="job folder removed from the node")
    # The id is free again.
    new_job(client, "del-job")
    assert list(client.list_tasks("del-job")) == []
    client.begin_delete_job("del-job", polling_interval=POLL_S).result()


def test_disable_requeue_then_enable(client: Any, pool: str) -> None:
    new_job(client, "dis-requeue")
    add_task(client, "dis-requeue", "t", "sleep 60")
    first = wait_task_state(client, "dis-requeue", "t", "running")
    client.begin_disable_job("dis-requeue", models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=POLL_S).result()
    assert client.get_job("dis-requeue").state == "disabled"
    task = client.get_task("dis-requeue", "t")
    assert task.state == "active"
    assert task.execution_info.requeue_count == 1 and task.execution_info.retry_count == 0
    # Disabled jobs start nothing; disabling again is harmless.
    client.begin_disable_job("dis-requeue", models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=POLL_S).result()
    assert client.get_task("dis-requeue", "t").state == "active"
    client.begin_enable_job("dis-requeue", polling_interval=POLL_S).result()
    assert client.get_job("dis-requeue").state == "active"
    again = wait_task_state(client, "dis-requeue", "t", "running")
    assert again.execution_info.start_time >= first.execution_info.start_time
    end_job(client, "dis-requeue").result()


def test_disable_terminate(client: Any, pool: str) -> None:
    new_job(client, "dis-term")
    add_task(client, "dis-term", "t", "sleep 60")
    wait_task_state(client, "dis-term", "t", "running")
    client.begin_disable_job("dis-term", models.BatchJobDisableOptions(disable_tasks="terminate"),
                             polling_interval=POLL_S).result()
    job = client.get_job("dis-term")
    assert job.state == "disabled" and job.previous_state in ("active", "disabling")
    task = client.get_task("dis-term", "t")
    assert task.state == "completed"
    assert task.execution_info.result == "failure" and task.execution_info.failure_info is not None
    end_job(client, "dis-term").result()


def test_disable_wait(client: Any, pool: str) -> None:
    new_job(client, "dis-wait")
    add_task(client, "dis-wait", "t", "sleep 2")
    wait_task_state(client, "dis-wait", "t", "running")
    client.begin_disable_job("dis-wait", models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=60).result(timeout=0)  # returns at once; we poll below
    assert client.get_job("dis-wait").state == "disabling"
    assert client.get_task("dis-wait", "t").state == "running"
    wait_job(client, "dis-wait", "disabled")
    task = client.get_task("dis-wait", "t")
    assert task.state == "completed" and task.execution_info.result == "success"
    end_job(client, "dis-wait").result()


def test_terminate_job(client: Any, pool: str) -> None:
    new_job(client, "term-job")
    add_task(client, "term-job", "t", "sleep 60")
    wait_task_state(client, "term-job", "t", "running")
    client.begin_terminate_job("term-job", TerminateOptions(termination_reason="StopNow"),
                               polling_interval=POLL_S).result()
    job = client.get_job("term-job")
    assert job.state == "completed"
    assert job.execution_info.termination_reason == "StopNow" and job.execution_info.end_time is not None
    task = client.get_task("term-job", "t")
    assert task.state == "completed" and task.execution_info.failure_info is not None
    assert error_of(lambda: add_task(client, "term-job", "late", "true")) == (409, "JobCompleted")
    with pytest.raises(models.CreateTasksError) as caught:
        client.create_tasks("term-job", [models.BatchTaskCreateOptions(id="late", command_line="true")])
    assert [e.status_code for e in caught.value.errors] == [409]
    # A completed job can be neither updated, disabled, enabled nor terminated again.
    assert error_of(lambda: client.update_job("term-job", models.BatchJobUpdateOptions(priority=1))) == (
        409, "JobCompleted")
    assert error_of(lambda: client.begin_disable_job(
        "term-job", models.BatchJobDisableOptions(disable_tasks="requeue"))) == (409, "JobNotActive")
    assert error_of(lambda: client.begin_enable_job("term-job"))[0] == 409
    assert error_of(lambda: client.begin_terminate_job(
        "term-job", TerminateOptions(termination_reason="x"))) == (409, "JobCompleted")


def test_default_terminate_reason(client: Any, pool: str, shoal: Any) -> None:
    new_job(client, "term-default")
    # What `az batch job stop` and older SDKs send: no body at all.
    response = raw_post(shoal, "/jobs/term-default/terminate")
    assert response.status_code == 202, response.text
    assert client.get_job("term-default").execution_info.termination_reason == "UserTerminate"


def test_on_all_tasks_complete_terminates_job(client: Any, pool: str) -> None:
    new_job(client, "auto-end")
    client.create_tasks("auto-end", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 1")
                                     for i in range(3)])
    client.update_job("auto-end", models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    assert client.get_job("auto-end").state == "active"
    job = wait_job(client, "auto-end", "completed")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert all(t.state == "completed" and t.execution_info.result == "success"
               for t in client.list_tasks("auto-end"))


def test_common_environment_settings(client: Any, pool: str) -> None:
    new_job(client, "env-job", common_environment_settings=[
        models.EnvironmentSetting(name="FROM_JOB", value="job"),
        models.EnvironmentSetting(name="SHARED", value="job")])
    add_task(client, "env-job", "t", "printenv FROM_JOB SHARED",
             environment_settings=[models.EnvironmentSetting(name="SHARED", value="task")])
    wait_task_state(client, "env-job", "t", "completed")
    assert b"".join(client.download_task_file("env-job", "t", "stdout.txt")) == b"job\ntask\n"


def test_task_counts_count_slots(client: Any, pool: str) -> None:
    new_job(client, "counts")
    add_task(client, "counts", "big", "sleep 60", required_slots=3)
    add_task(client, "counts", "ok", "true", required_slots=2)
    add_task(client, "counts", "bad", "false")
    wait_for(lambda: client.get_task("counts", "ok").state == "completed"
             and client.get_task("counts", "bad").state == "completed"
             and client.get_task("counts", "big").state == "running", 20, message="counts tasks")
    result = client.get_job_task_counts("counts")
    tasks, slots = result.task_counts, result.task_slot_counts
    assert (tasks.active, tasks.running, tasks.completed, tasks.succeeded, tasks.failed) == (0, 1, 2, 1, 1)
    assert (slots.active, slots.running, slots.completed, slots.succeeded, slots.failed) == (0, 3, 3, 2, 1)
    end_job(client, "counts").result()
    assert error_of(lambda: client.get_job_task_counts("no-such-job")) == (404, "JobNotFound")


def test_enum_values_match_without_case(client: Any, pool: str, shoal: Any) -> None:
    new_job(client, "enum-case")
    add_task(client, "enum-case", "t", "true")
    body = b'{"onAllTasksComplete": "TerminateJob"}'
    url = f"{shoal.endpoint}/jobs/enum-case?api-version=2025-06-01"
    headers = sign_request("PATCH", url, {"Content-Length": str(len(body)), "Content-Type": "application/json"},
                           shoal.account, shoal.primary_key)
    assert httpx.patch(url, content=body, headers=headers).status_code == 200
    assert client.get_job("enum-case").all_tasks_complete_mode == "terminatejob"
    assert wait_job(client, "enum-case", "completed").execution_info.termination_reason == "AllTasksComplete"


def test_task_terminated_before_running_is_not_a_success(client: Any, pool: str) -> None:
    new_job(client, "never-ran")
    client.begin_disable_job("never-ran", models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=POLL_S).result()
    add_task(client, "never-ran", "t", "true")
    client.terminate_task("never-ran", "t")
    assert client.get_task("never-ran", "t").state == "completed"
    counts = client.get_job_task_counts("never-ran").task_counts
    assert (counts.completed, counts.succeeded) == (1, 0)
    end_job(client, "never-ran").result()


def test_change_pool_of_disabled_job(client: Any, pool: str) -> None:
    new_job(client, "move-job")
    other = models.BatchPoolInfo(pool_id="other-pool")
    assert error_of(lambda: client.update_job("move-job", models.BatchJobUpdateOptions(pool_info=other)))[0] == 409
    client.begin_disable_job("move-job", models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=POLL_S).result()
    client.update_job("move-job", models.BatchJobUpdateOptions(pool_info=other))
    job = client.get_job("move-job")
    assert job.pool_info.pool_id == "other-pool" and job.execution_info.pool_id == "other-pool"
    end_job(client, "move-job").result()
