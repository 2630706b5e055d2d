"""Task dependencies and exit conditions through the official SDK against a real `shoal up` with
local nodes (semantics §3.6, §3.7, §2.4 onTaskFailure)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance import rest
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "deps-pool"
POLL_S = 0.1
# How long a blocked task is watched to stay active: many scheduling passes (each report wakes one).
BLOCKED_WATCH_S = 2.0


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, POOL, 2)
    return POOL


def _job(client: Any, job_id: str, **kwargs: Any) -> str:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL),
                                                   **kwargs))
    return job_id


@pytest.fixture
def job(client: Any, pool: str, request: pytest.FixtureRequest) -> Any:
    """A job using task dependencies, named after the test; terminated afterwards."""
    from azure.batch.models._models import BatchJobTerminateOptions

    job_id = _job(client, re.sub(r"[^A-Za-z0-9-]", "-", request.node.name.removeprefix("test_"))[:64],
                  uses_task_dependencies=True)
    yield job_id
    try:
        client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="TestDone"),
                                   polling_interval=POLL_S).result()
    except HttpResponseError:
        pass


def add(client: Any, job_id: str, task_id: str, command: str, **kwargs: Any) -> None:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs))


def on(*ids: str, ranges: tuple[tuple[int, int], ...] = ()) -> models.BatchTaskDependencies:
    return models.BatchTaskDependencies(task_ids=list(ids) or None, task_id_ranges=[
        models.BatchTaskIdRange(start=start, end=end) for start, end in ranges] or None)


def exit_codes(*mappings: tuple[int, str | None, str | None]) -> models.ExitConditions:
    return models.ExitConditions(exit_codes=[
        models.ExitCodeMapping(code=code, exit_options=models.ExitOptions(job_action=job, dependency_action=dep))
        for code, job, dep in mappings])


def stays_active(client: Any, job_id: str, task_id: str) -> None:
    deadline = time.monotonic() + BLOCKED_WATCH_S
    while time.monotonic() < deadline:
        task = client.get_task(job_id, task_id)
        assert task.state == "active" and task.execution_info.start_time is None, task.state
        time.sleep(POLL_S)


def test_fan_in_merge_runs_only_after_all_five_succeed(client, job):
    # The merge is added before its prerequisites exist (Azure allows it), with ids padded as
    # "01".."05": a range matches ids by their integer value.
    add(client, job, "merge", "true", depends_on=on(ranges=((1, 5),)))
    shown = client.get_task(job, "merge")
    assert shown.depends_on.task_id_ranges[0].start == 1 and shown.depends_on.task_id_ranges[0].end == 5
    client.create_task_collection(job, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id=f"0{n}", command_line="sleep 1") for n in range(1, 6)]))
    assert client.get_task(job, "merge").state == "active"
    assert client.get_job_task_counts(job).task_counts.active >= 1  # blocked counts as active
    merge = wait_task_state(client, job, "merge", "completed", timeout=30)
    ends = [client.get_task(job, f"0{n}").execution_info.end_time for n in range(1, 6)]
    assert all(end is not None for end in ends)
    assert merge.execution_info.start_time >= max(ends)
    assert merge.execution_info.result == "success"


def test_a_failed_prerequisite_blocks_and_satisfy_unblocks(client, job):
    add(client, job, "fails", "/bin/sh -c 'exit 3'")
    add(client, job, "fails-but-satisfies", "/bin/sh -c 'exit 3'", exit_conditions=exit_codes((3, None, "satisfy")))
    add(client, job, "blocked", "true", depends_on=on("fails"))
    add(client, job, "unblocked", "true", depends_on=on("fails-but-satisfies"))
    assert wait_task_state(client, job, "fails", "completed").execution_info.result == "failure"
    wait_task_state(client, job, "unblocked", "completed", timeout=20)
    stays_active(client, job, "blocked")
    # The exit options are shown as given.
    shown = client.get_task(job, "fails-but-satisfies").exit_conditions.exit_codes[0]
    assert (shown.code, shown.exit_options.dependency_action) == (3, "satisfy")


def test_a_dependent_of_a_task_that_never_comes_stays_active(client, job):
    add(client, job, "waits", "true", depends_on=on("never-added"))
    stays_active(client, job, "waits")
    add(client, job, "never-added", "true")
    wait_task_state(client, job, "waits", "completed", timeout=20)


def test_a_prerequisite_already_done_when_the_dependent_is_added(client, job):
    add(client, job, "7", "true")
    wait_task_state(client, job, "7", "completed")
    add(client, job, "after", "true", depends_on=on("7", ranges=((7, 7),)))
    wait_task_state(client, job, "after", "completed", timeout=20)


def test_depends_on_in_a_job_without_task_dependencies_is_refused(client, pool):
    job_id = _job(client, "deps-not-enabled")
    assert client.get_job(job_id).uses_task_dependencies is False
    assert error_of(lambda: add(client, job_id, "t", "true", depends_on=on("x"))) == \
        (409, "TaskDependenciesNotSpecifiedOnJob")
    results = client.create_task_collection(job_id, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id="plain", command_line="true"),
        models.BatchTaskCreateOptions(id="dependent", command_line="true", depends_on=on("plain"))])).result_values
    by_id = {r.task_id: r for r in results}
    assert by_id["plain"].status == "success"
    assert by_id["dependent"].status == "clienterror"
    assert by_id["dependent"].error.code == "TaskDependenciesNotSpecifiedOnJob"


def test_job_action_on_a_noaction_job_is_refused(client, pool):
    job_id = _job(client, "deps-noaction")
    assert error_of(lambda: add(client, job_id, "t", "/bin/sh -c 'exit 1'",
                                exit_conditions=exit_codes((1, "terminate", None)))) == (400, "InvalidPropertyValue")
    # A dependencyAction alone is fine there.
    add(client, job_id, "t", "/bin/sh -c 'exit 1'", exit_conditions=exit_codes((1, None, "satisfy")))


def test_a_failure_terminates_the_job_by_default_under_performexitoptionsjobaction(client, pool):
    job_id = _job(client, "deps-terminate", task_failure_mode="performexitoptionsjobaction")
    add(client, job_id, "fails", "/bin/sh -c 'exit 2'")
    job = wait_for(lambda: (j := client.get_job(job_id)).state == "completed" and j, 20, POLL_S,
                   "job terminated by its task's failure")
    assert job.execution_info.termination_reason == "TaskFailed"


def test_exit_options_disable_the_job_and_none_leaves_it(client, pool):
    job_id = _job(client, "deps-disable", task_failure_mode="performexitoptionsjobaction")
    add(client, job_id, "shrugs", "/bin/sh -c 'exit 5'", exit_conditions=exit_codes((5, "none", None)))
    wait_task_state(client, job_id, "shrugs", "completed")
    assert client.get_job(job_id).state == "active"
    # Ranges: 10..20 disables; the exact code 4 is listed too, and wins over the range.
    conditions = models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=14, exit_options=models.ExitOptions(job_action="none"))],
        exit_code_ranges=[models.ExitCodeRangeMapping(start=10, end=20,
                                                      exit_options=models.ExitOptions(job_action="disable"))])
    add(client, job_id, "exact-wins", "/bin/sh -c 'exit 14'", exit_conditions=conditions)
    wait_task_state(client, job_id, "exact-wins", "completed")
    assert client.get_job(job_id).state == "active"
    add(client, job_id, "in-range", "/bin/sh -c 'exit 12'", exit_conditions=conditions)
    wait_for(lambda: client.get_job(job_id).state == "disabled", 20, POLL_S, "job disabled")


def test_a_failure_leaves_a_noaction_job_active(client, pool):
    job_id = _job(client, "deps-noaction-fails")
    add(client, job_id, "fails", "/bin/sh -c 'exit 2'")
    wait_task_state(client, job_id, "fails", "completed")
    assert client.get_job(job_id).state == "active"


BAD_TASKS = [
    ({"dependsOn": {"taskIds": "a"}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIds": [1]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIds": ["a\x00b"]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIds": ["../x"]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIds": ["bad"]}}, "InvalidPropertyValue"),  # itself
    ({"dependsOn": {"taskIdRanges": [{"start": 5, "end": 1}]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIdRanges": [{"start": 1}]}}, "MissingRequiredProperty"),
    ({"dependsOn": {"taskIdRanges": [{"start": "x", "end": 2}]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIdRanges": [{"start": 0, "end": 2**31}]}}, "InvalidPropertyValue"),
    ({"dependsOn": {"taskIdRanges": [{"start": 0, "end": 999_999}]}}, "TaskDependencyRangesTooLong"),
    ({"dependsOn": {"taskIdRanges": [{"start": -2**31, "end": 2**31 - 1}]}}, "TaskDependencyRangesTooLong"),
    ({"dependsOn": {"taskIds": [f"t{n:06d}" for n in range(10_000)]}}, "TaskDependencyListTooLong"),
    ({"dependsOn": {"taskIds": [[["deep"]]]}}, "InvalidPropertyValue"),
    ({"exitConditions": {"exitCodes": [{"code": 1}]}}, "MissingRequiredProperty"),
    ({"exitConditions": {"exitCodes": [{"code": "one", "exitOptions": {}}]}}, "InvalidPropertyValue"),
    ({"exitConditions": {"exitCodes": [{"code": 1, "exitOptions": {"dependencyAction": "cancel"}}]}},
     "InvalidPropertyValue"),
    ({"exitConditions": {"exitCodeRanges": [{"start": 9, "end": 1, "exitOptions": {}}]}}, "InvalidPropertyValue"),
    ({"exitConditions": {"default": {"jobAction": "requeue"}}}, "InvalidPropertyValue"),
    ({"exitConditions": {"default": "satisfy"}}, "InvalidPropertyValue"),
    ({"exitConditions": {"exitCodes": [{"code": n, "exitOptions": {}} for n in range(5000)]}},
     "InvalidPropertyValue"),
]


@pytest.mark.parametrize(("extra", "code"), BAD_TASKS, ids=range(len(BAD_TASKS)))
def test_bad_dependencies_and_exit_conditions_are_400(shoal, client, job, extra, code):
    body = json.dumps({"id": "bad", "commandLine": "true", **extra}).encode()
    started = time.monotonic()
    response = rest.call(shoal, "POST", f"/jobs/{job}/tasks", body=body)
    assert time.monotonic() - started < 5
    rest.assert_batch_error(response, 400, code)
    assert error_of(lambda: client.get_task(job, "bad"))[0] == 404


def test_a_collection_whose_tasks_together_name_too_many_is_refused(shoal, job):
    tasks = [{"id": f"m{n}", "commandLine": "true", "dependsOn": {"taskIdRanges": [{"start": 0, "end": 60_000}]}}
             for n in range(2)]
    response = rest.call(shoal, "POST", f"/jobs/{job}/addtaskcollection", body=json.dumps({"value": tasks}).encode())
    rest.assert_batch_error(response, 400, "TaskDependencyRangesTooLong")


def test_a_wide_fan_in_is_stored_and_released(client, job):
    # 50,000 range members: stored within the add call, and still blocked by the one that is missing.
    started = time.monotonic()
    add(client, job, "wide", "true", depends_on=on(ranges=((1, 50_000),)))
    assert time.monotonic() - started < 10
    add(client, job, "1", "true")
    wait_task_state(client, job, "1", "completed")
    stays_active(client, job, "wide")


def test_a_pre_processing_error_takes_its_own_exit_options(client, job):
    # A program that does not exist never runs: a pre-processing error (CommandProgramNotFound),
    # which the exit code mappings do not see.
    satisfy_on_start_error = models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=0, exit_options=models.ExitOptions(dependency_action="block"))],
        pre_processing_error=models.ExitOptions(dependency_action="satisfy"))
    add(client, job, "cannot-start", "/no/such/program", exit_conditions=satisfy_on_start_error)
    add(client, job, "after-start-error", "true", depends_on=on("cannot-start"))
    failed = wait_task_state(client, job, "cannot-start", "completed")
    assert failed.execution_info.failure_info.code == "CommandProgramNotFound"
    wait_task_state(client, job, "after-start-error", "completed", timeout=20)


def test_exit_code_zero_listed_as_block_blocks(client, job):
    add(client, job, "ok-but-blocks", "true", exit_conditions=exit_codes((0, None, "block")))
    add(client, job, "behind-zero", "true", depends_on=on("ok-but-blocks"))
    assert wait_task_state(client, job, "ok-but-blocks", "completed").execution_info.result == "success"
    stays_active(client, job, "behind-zero")


def test_a_dependency_cycle_is_refused(client, job):
    add(client, job, "first", "true", depends_on=on("second"))
    assert error_of(lambda: add(client, job, "second", "true", depends_on=on("first"))) == \
        (400, "InvalidPropertyValue")
    assert error_of(lambda: client.get_task(job, "second"))[0] == 404
    stays_active(client, job, "first")
    add(client, job, "second", "true")
    wait_task_state(client, job, "first", "completed", timeout=20)


@pytest.mark.parametrize("api_version", ["2020-03-01.11.0", "2023-05-01.17.0", rest.API_VERSION])
def test_every_api_version_shows_dependencies_and_exit_conditions(shoal, client, job, api_version):
    task_id = f"shown-{api_version.replace('.', '-')}"
    body = {"id": task_id, "commandLine": "true", "dependsOn": {"taskIds": ["gate"],
                                                                "taskIdRanges": [{"start": "1", "end": 2}]},
            "exitConditions": {"exitCodes": [{"code": 3, "exitOptions": {"dependencyAction": "Satisfy"}}],
                               "default": {"dependencyAction": "block"}}}
    assert rest.call(shoal, "POST", f"/jobs/{job}/tasks", body=json.dumps(body).encode(),
                     api_version=api_version).status_code == 201
    shown = rest.call(shoal, "GET", f"/jobs/{job}/tasks/{task_id}", api_version=api_version).json()
    # As the Node SDK recording shows Azure echoing them: as given, enums in lower case.
    assert shown["dependsOn"] == {"taskIds": ["gate"], "taskIdRanges": [{"start": 1, "end": 2}]}
    assert shown["exitConditions"] == {"exitCodes": [{"code": 3, "exitOptions": {"dependencyAction": "satisfy"}}],
                                       "default": {"dependencyAction": "block"}}
    assert rest.call(shoal, "GET", f"/jobs/{job}", api_version=api_version).json()["usesTaskDependencies"] is True


@pytest.mark.parametrize("value", ["yes", 1, [], {"a": 1}])
def test_a_job_with_a_bad_uses_task_dependencies_is_400(shoal, pool, value):
    body = {"id": "deps-bad-flag", "poolInfo": {"poolId": POOL}, "usesTaskDependencies": value}
    response = rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode())
    rest.assert_batch_error(response, 400, "InvalidPropertyValue")


def test_a_job_action_in_a_collection_of_a_noaction_job_fails_that_task_only(client, pool):
    job_id = _job(client, "deps-noaction-collection")
    results = client.create_task_collection(job_id, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id="fine", command_line="true"),
        models.BatchTaskCreateOptions(id="acts", command_line="true",
                                      exit_conditions=models.ExitConditions(
                                          default=models.ExitOptions(job_action="disable")))])).result_values
    by_id = {r.task_id: r for r in results}
    assert by_id["fine"].status == "success"
    assert (by_id["acts"].status, by_id["acts"].error.code) == ("clienterror", "InvalidPropertyValue")
    assert error_of(lambda: client.get_task(job_id, "acts"))[0] == 404
