"""Job schedules through the SDK against `shoal up --time-scale 60` (a one-minute recurrence
passes in a second).

Status codes, error codes and shapes follow recorded Azure traffic:
azure-sdk-for-python/test_batch.pyTestBatchtest_batch_job_schedules[sync].json (add 201, list,
get, HEAD 200, jobs of the schedule named `<id>:job-1`, disable/enable 204, PUT/PATCH 200,
terminate/delete 202) and azure-sdk-for-node/batchservice-tests.json (a schedule waiting for its
doNotRunUntil shows it as nextRunTime and has no jobs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models
from azure.batch.models._models import BatchJobTerminateOptions as TerminateOptions  # not re-exported
from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from shoal.testing.server import RunningShoal, running_shoal
from tests.acceptance import rest
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

TIME_SCALE = 60
POOL = "schedules-pool"
POLL_S = 0.1


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("schedules"), extra_args=["--time-scale", str(TIME_SCALE)]) as running:
        yield running


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1))
    wait_pool_idle(client, POOL, 1)
    return POOL


def job_spec(**kwargs: Any) -> Any:
    return models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=POOL), **kwargs)


def add_schedule(client: Any, schedule_id: str, *, spec: Any = None, **schedule: Any) -> None:
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=models.BatchJobScheduleConfiguration(**schedule),
        job_specification=spec or job_spec()))


def job_ids(client: Any, schedule_id: str) -> list[str]:
    return [job.id for job in client.list_jobs_from_schedule(schedule_id)]


def wait_jobs(client: Any, schedule_id: str, count: int, timeout: float = 20.0) -> list[str]:
    return wait_for(lambda: (ids if len(ids := job_ids(client, schedule_id)) >= count else None), timeout,
                    interval=POLL_S, message=f"{count} jobs of {schedule_id}")


def end_job(client: Any, job_id: str) -> None:
    client.begin_terminate_job(job_id, TerminateOptions(termination_reason="Done"), polling_interval=POLL_S).result()


def schedule_missing(client: Any, schedule_id: str) -> bool:
    """SDK 15.1.0's error policy raises on the 404 `job_schedule_exists` means as False."""
    try:
        return client.job_schedule_exists(schedule_id) is False
    except ResourceNotFoundError as exc:
        return exc.status_code == 404


def virtual_now(client: Any) -> datetime:
    """The server's scaled time: a schedule's first run is its creation, and the next one a
    day later, so nextRunTime − 1 day is when the probe was made."""
    probe = f"clock-probe-{time.monotonic_ns()}"
    add_schedule(client, probe, recurrence_interval="P1D")
    made = time.monotonic()
    info = wait_for(lambda: (e if (e := client.get_job_schedule(probe).execution_info).recent_job else None), 10,
                    interval=POLL_S, message="the probe's first job")
    client.begin_delete_job_schedule(probe, polling_interval=POLL_S).result()
    return info.next_run_time - timedelta(days=1) + timedelta(seconds=(time.monotonic() - made) * TIME_SCALE)


def test_a_recurring_schedule_runs_its_jobs_one_at_a_time(client: Any, pool: str) -> None:
    add_schedule(client, "every-minute", recurrence_interval="PT1M")
    assert wait_jobs(client, "every-minute", 1) == ["every-minute:job-1"]
    schedule = client.get_job_schedule("every-minute")
    assert schedule.state == "active"
    assert schedule.execution_info.recent_job.id == "every-minute:job-1"
    assert schedule.execution_info.recent_job.url.endswith("/jobs/every-minute:job-1")
    assert schedule.execution_info.next_run_time is not None
    job = client.get_job("every-minute:job-1")
    assert job.pool_info.pool_id == POOL and job.execution_info.pool_id == POOL
    client.create_task("every-minute:job-1", models.BatchTaskCreateOptions(id="t", command_line="/bin/echo hi"))
    task = wait_task_state(client, "every-minute:job-1", "t", "completed")
    assert task.execution_info.exit_code == 0
    # Its files are served from the node like any task's (kept under workitems/every-minute/job-1).
    stdout = b"".join(client.download_task_file("every-minute:job-1", "t", "stdout.txt"))
    assert stdout == b"hi\n"
    # Three recurrences (three virtual minutes) pass while job-1 is still active: no job-2.
    time.sleep(3 * 60 / TIME_SCALE)
    assert job_ids(client, "every-minute") == ["every-minute:job-1"]
    end_job(client, "every-minute:job-1")
    assert wait_jobs(client, "every-minute", 2) == ["every-minute:job-1", "every-minute:job-2"]
    assert client.get_job_schedule("every-minute").execution_info.recent_job.id == "every-minute:job-2"


def test_do_not_run_until_waits_and_do_not_run_after_completes(client: Any, pool: str) -> None:
    far = datetime(2100, 1, 1, tzinfo=UTC)
    add_schedule(client, "later", do_not_run_until=far, recurrence_interval="PT1M")
    time.sleep(2 * 60 / TIME_SCALE)
    assert job_ids(client, "later") == []
    assert client.get_job_schedule("later").execution_info.next_run_time == far

    soon = virtual_now(client) + timedelta(minutes=3)
    add_schedule(client, "soon", do_not_run_until=soon, do_not_run_after=soon + timedelta(minutes=2, seconds=30),
                 recurrence_interval="PT1M", spec=job_spec(all_tasks_complete_mode="terminatejob"))
    assert job_ids(client, "soon") == []
    # Runs at soon, soon+1, soon+2 (each job ends at once: no tasks), then doNotRunAfter: completed.
    wait_for(lambda: client.get_job_schedule("soon").state == "completed", 20, interval=POLL_S,
             message="soon completed")
    # At most those three; on a loaded machine a job may end after the next occurrence and one
    # start later than its time, but none after doNotRunAfter.
    made = job_ids(client, "soon")
    assert 2 <= len(made) <= 3 and made == ["soon:job-1", "soon:job-2", "soon:job-3"][:len(made)], made
    completed = client.get_job_schedule("soon")
    assert completed.execution_info.end_time is not None
    assert completed.execution_info.next_run_time is None


def test_disable_stops_new_jobs_and_enable_resumes(client: Any, pool: str) -> None:
    add_schedule(client, "pausable", recurrence_interval="PT1M", spec=job_spec(all_tasks_complete_mode="terminatejob"))
    wait_jobs(client, "pausable", 2)
    client.disable_job_schedule("pausable")
    assert client.get_job_schedule("pausable").state == "disabled"
    count = len(job_ids(client, "pausable"))
    time.sleep(3 * 60 / TIME_SCALE)
    assert len(job_ids(client, "pausable")) == count
    client.enable_job_schedule("pausable")
    assert client.get_job_schedule("pausable").state == "active"
    wait_jobs(client, "pausable", count + 1)


def test_terminate_ends_its_active_job(client: Any, pool: str) -> None:
    add_schedule(client, "ending", recurrence_interval="PT1M")
    wait_jobs(client, "ending", 1)
    client.begin_terminate_job_schedule("ending", polling_interval=POLL_S).result()
    schedule = client.get_job_schedule("ending")
    assert schedule.state == "completed" and schedule.execution_info.end_time is not None
    job = client.get_job("ending:job-1")
    assert job.state == "completed" and job.execution_info.termination_reason == "TerminateJobSchedule"
    # A completed schedule cannot be changed or run again.
    assert error_of(lambda: client.disable_job_schedule("ending")) == (409, "JobScheduleCompleted")
    time.sleep(2 * 60 / TIME_SCALE)
    assert job_ids(client, "ending") == ["ending:job-1"]


def test_delete_removes_the_schedule_and_its_jobs(client: Any, pool: str) -> None:
    add_schedule(client, "doomed", recurrence_interval="PT1M", spec=job_spec(all_tasks_complete_mode="terminatejob"))
    jobs = wait_jobs(client, "doomed", 2)
    client.begin_delete_job_schedule("doomed", polling_interval=POLL_S).result()
    wait_for(lambda: schedule_missing(client, "doomed"), 20, message="doomed gone")
    listed = {job.id for job in client.list_jobs()}
    for job_id in jobs:
        assert job_id not in listed
    assert error_of(lambda: client.get_job_schedule("doomed")) == (404, "JobScheduleNotFound")


def test_list_filter_select_exists_and_etags(client: Any, shoal: Any, pool: str) -> None:
    far = datetime(2100, 1, 1, tzinfo=UTC)
    add_schedule(client, "listed-a", do_not_run_until=far)
    add_schedule(client, "listed-b", do_not_run_until=far)
    client.disable_job_schedule("listed-b")
    assert error_of(lambda: add_schedule(client, "LISTED-A", do_not_run_until=far)) == (409, "JobScheduleExists")
    listed = {s.id: s.state for s in client.list_job_schedules(filter="startswith(id, 'listed-')")}
    assert listed == {"listed-a": "active", "listed-b": "disabled"}
    active = [s.id for s in client.list_job_schedules(filter="state eq 'disabled' and startswith(id, 'listed-')")]
    assert active == ["listed-b"]
    selected = list(client.list_job_schedules(filter="id eq 'listed-a'", select=["id", "state"]))
    assert [s.as_dict() for s in selected] == [{"id": "listed-a", "state": "active"}]
    paged = rest.call(shoal, "GET", "/jobschedules", params={"maxresults": "1", "$filter": "startswith(id,'listed-')"})
    assert len(paged.json()["value"]) == 1 and "odata.nextLink" in paged.json()
    assert client.job_schedule_exists("listed-a") is True
    assert schedule_missing(client, "never-made")

    etag = client.get_job_schedule("listed-a").etag
    client.update_job_schedule("listed-a", models.BatchJobScheduleUpdateOptions(
        schedule=models.BatchJobScheduleConfiguration(do_not_run_until=far, recurrence_interval="PT5H")),
        etag=etag, match_condition=MatchConditions.IfNotModified)
    patched = client.get_job_schedule("listed-a")
    assert patched.schedule.recurrence_interval == timedelta(hours=5) and patched.etag != etag
    assert error_of(lambda: client.update_job_schedule(
        "listed-a", models.BatchJobScheduleUpdateOptions(metadata=[]), etag=etag,
        match_condition=MatchConditions.IfNotModified)) == (412, "ConditionNotMet")
    # PUT replaces: metadata not given is cleared, and both schedule and jobSpecification are required.
    client.update_job_schedule("listed-a", models.BatchJobScheduleUpdateOptions(
        metadata=[models.BatchMetadataItem(name="k", value="v")]))
    client.replace_job_schedule("listed-a", models.BatchJobSchedule(
        schedule=models.BatchJobScheduleConfiguration(do_not_run_until=far), job_specification=job_spec()))
    assert client.get_job_schedule("listed-a").metadata is None
    missing = rest.call(shoal, "PUT", "/jobschedules/listed-a", body=json.dumps({"schedule": {}}).encode())
    rest.assert_batch_error(missing, 400, "MissingRequiredProperty")


def test_status_codes_are_azures(shoal: Any, pool: str) -> None:
    """As recorded (test_batch.pyTestBatchtest_batch_job_schedules[sync].json)."""
    body = {"id": "codes", "schedule": {"startWindow": "PT01H00M00S", "recurrenceInterval": "P1D"},
            "jobSpecification": {"poolInfo": {"poolId": POOL}, "constraints": {"maxTaskRetryCount": 2},
                                 "onAllTasksComplete": "terminatejob"}}
    assert rest.call(shoal, "POST", "/jobschedules", body=json.dumps(body).encode()).status_code == 201
    got = rest.call(shoal, "GET", "/jobschedules/codes").json()
    assert got["schedule"] == {"startWindow": "PT1H", "recurrenceInterval": "P1D"}
    assert got["jobSpecification"]["constraints"] == {"maxWallClockTime": "P10675199DT2H48M5.4775807S",
                                                      "maxTaskRetryCount": 2}
    assert got["odata.metadata"].endswith("$metadata#jobschedules/@Element")
    assert rest.call(shoal, "HEAD", "/jobschedules/codes").status_code == 200
    for path, status in (("/jobschedules/codes/disable", 204), ("/jobschedules/codes/enable", 204)):
        assert rest.call(shoal, "POST", path, body=b"").status_code == status
    assert rest.call(shoal, "PATCH", "/jobschedules/codes",
                     body=b'{"schedule": {"recurrenceInterval": "PT05H00M00S"}}').status_code == 200
    assert rest.call(shoal, "POST", "/jobschedules/codes/terminate", body=b"").status_code == 202
    assert rest.call(shoal, "DELETE", "/jobschedules/codes").status_code == 202
    assert rest.call(shoal, "GET", "/jobschedules/codes/jobs").status_code in (200, 404)


def test_jobs_and_schedules_share_ids_and_the_active_quota(client: Any, shoal: Any, pool: str) -> None:
    far = datetime(2100, 1, 1, tzinfo=UTC)
    add_schedule(client, "shared-name", do_not_run_until=far)
    clash = rest.call(shoal, "POST", "/jobs", body=json.dumps({"id": "shared-name",
                                                                "poolInfo": {"poolId": POOL}}).encode())
    rest.assert_batch_error(clash, 409, "JobScheduleWithSameIdExists")


def test_the_job_specification_is_stored_as_validated(shoal: Any, pool: str) -> None:
    """Integers sent as strings (as `az` sends them) and enum spellings come back normalised,
    as they do for a job."""
    body = {"id": "normalised", "schedule": {"doNotRunUntil": "2100-01-01T00:00:00Z"},
            "jobSpecification": {"poolInfo": {"poolId": POOL}, "priority": "5", "onAllTasksComplete": "TerminateJob"}}
    assert rest.call(shoal, "POST", "/jobschedules", body=json.dumps(body).encode()).status_code == 201
    spec = rest.call(shoal, "GET", "/jobschedules/normalised").json()["jobSpecification"]
    assert spec["priority"] == 5 and spec["onAllTasksComplete"] == "terminatejob"
    assert rest.call(shoal, "GET", "/jobschedules/normalised").json()["schedule"] == {
        "doNotRunUntil": "2100-01-01T00:00:00.000000Z"}
