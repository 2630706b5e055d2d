"""Impossible job schedules get Azure-style 400s, never a 500 or a schedule that silently never
runs. Errors as Azure words them for a job body (InvalidPropertyValue naming the property,
MissingRequiredProperty, InvalidRequestBody for NUL and unknown properties)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.acceptance import rest


def post(shoal: Any, body: Any) -> Any:
    return rest.call(shoal, "POST", "/jobschedules", body=json.dumps(body).encode())


def schedule_body(schedule: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": "bad-schedule", "schedule": {} if schedule is None else schedule,
            "jobSpecification": {"poolInfo": {"poolId": "p"}}, **extra}


@pytest.mark.parametrize(("schedule", "name"), [
    ({"recurrenceInterval": "-PT1M"}, "schedule.recurrenceInterval"),
    ({"recurrenceInterval": "PT0S"}, "schedule.recurrenceInterval"),
    ({"recurrenceInterval": "PT59S"}, "schedule.recurrenceInterval"),
    ({"recurrenceInterval": "P99999999999D"}, "schedule.recurrenceInterval"),
    ({"recurrenceInterval": "P" + "9" * 400 + "D"}, "schedule.recurrenceInterval"),
    ({"recurrenceInterval": "every minute"}, "schedule.recurrenceInterval"),
    ({"startWindow": "PT10S"}, "schedule.startWindow"),
    ({"doNotRunUntil": "tomorrow"}, "schedule.doNotRunUntil"),
    ({"doNotRunUntil": "2027-01-02T00:00:00Z", "doNotRunAfter": "2027-01-01T00:00:00Z"}, "schedule.doNotRunAfter"),
    ({"doNotRunUntil": "2027-01-01T00:00:00Z", "doNotRunAfter": "2027-01-01T00:00:00Z"}, "schedule.doNotRunAfter"),
])
def test_impossible_schedules_are_refused(shoal: Any, schedule: dict[str, Any], name: str) -> None:
    error = rest.assert_batch_error(post(shoal, schedule_body(schedule)), 400, "InvalidPropertyValue")
    assert error["values"][0] == {"key": "PropertyName", "value": name}


@pytest.mark.parametrize("schedule_id", ["a" * 65, "nul\x00id", "has:colon", "../up", "", "spaced id"])
def test_bad_ids_are_refused(shoal: Any, schedule_id: str) -> None:
    answer = post(shoal, {**schedule_body(), "id": schedule_id})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] in ("InvalidPropertyValue", "InvalidRequestBody")


def test_a_nul_in_the_schedule_is_refused(shoal: Any) -> None:
    answer = post(shoal, schedule_body({"recurrenceInterval": "PT1M\x00"}))
    assert answer.status_code == 400 and answer.json()["code"] in ("InvalidPropertyValue", "InvalidRequestBody")


@pytest.mark.parametrize(("body", "code"), [
    ({"id": "no-schedule", "jobSpecification": {"poolInfo": {"poolId": "p"}}}, "MissingRequiredProperty"),
    ({"id": "no-spec", "schedule": {}}, "MissingRequiredProperty"),
    ({"id": "no-pool", "schedule": {}, "jobSpecification": {}}, "MissingRequiredProperty"),
    ({"id": "bad-prio", "schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "p"}, "priority": 5000}},
     "InvalidPropertyValue"),
    ({"id": "bad-type", "schedule": "PT1M", "jobSpecification": {"poolInfo": {"poolId": "p"}}}, "InvalidPropertyValue"),
    ({"id": "unknown", "schedule": {"cron": "* * * * *"}, "jobSpecification": {"poolInfo": {"poolId": "p"}}},
     "InvalidRequestBody"),
    ({"id": "jm", "schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "p"},
                                                       "jobManagerTask": {"id": "m", "commandLine": "x"}}},
     "FeatureNotSupported"),
])
def test_the_job_specification_is_validated_as_a_job(shoal: Any, body: dict[str, Any], code: str) -> None:
    rest.assert_batch_error(post(shoal, body), 400, code)


@pytest.mark.parametrize("depth", [200, 20000])
def test_a_deeply_nested_job_specification_is_refused_cleanly(shoal: Any, depth: int) -> None:
    for nested in ('{"x":' * depth + '"leaf"' + "}" * depth, "[" * depth + "]" * depth):
        text = ('{"id": "deep", "schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "p"}, '
                '"metadata": [{"name": "deep", "value": ' + nested + "}]}}")
        answer = rest.call(shoal, "POST", "/jobschedules", body=text.encode())
        assert answer.status_code == 400, answer.text
    rest.assert_batch_error(rest.call(shoal, "GET", "/jobschedules/deep"), 404, "JobScheduleNotFound")


def test_a_bad_patch_leaves_the_schedule_as_it_was(shoal: Any) -> None:
    assert post(shoal, {**schedule_body({"doNotRunUntil": "2100-01-01T00:00:00Z"}), "id": "kept"}).status_code == 201
    before = rest.call(shoal, "GET", "/jobschedules/kept").json()
    answer = rest.call(shoal, "PATCH", "/jobschedules/kept", body=b'{"schedule": {"recurrenceInterval": "PT0S"}}')
    rest.assert_batch_error(answer, 400, "InvalidPropertyValue")
    answer = rest.call(shoal, "PATCH", "/jobschedules/kept",
                       body=b'{"jobSpecification": {"poolInfo": {"poolId": "p"}, "priority": "high"}}')
    rest.assert_batch_error(answer, 400, "InvalidPropertyValue")
    after = rest.call(shoal, "GET", "/jobschedules/kept").json()
    assert after["eTag"] == before["eTag"] and after["schedule"] == before["schedule"]
    for method, path in (("GET", "/jobschedules/nope"), ("POST", "/jobschedules/nope/disable"),
                         ("DELETE", "/jobschedules/nope"), ("GET", "/jobschedules/nope/jobs")):
        rest.assert_batch_error(rest.call(shoal, method, path, body=b"" if method != "GET" else None), 404,
                                "JobScheduleNotFound")


def test_schedules_count_against_the_active_job_and_schedule_quota(tmp_path: Any) -> None:
    """Active jobs and job schedules share one quota (semantics §6.1): a schedule at the limit is
    refused as a job is, and a schedule whose job would pass it skips that run."""
    from shoal.testing.server import kill_agents, start_shoal, stop_shoal

    shoal = start_shoal(tmp_path / "quota", env={"SHOAL_QUOTA_ACTIVE_JOBS": "2"})
    try:
        far = {"doNotRunUntil": "2100-01-01T00:00:00Z"}
        assert post(shoal, {**schedule_body(far), "id": "first"}).status_code == 201
        # Due at once and every minute: its job would be the third active record.
        assert post(shoal, {**schedule_body({"recurrenceInterval": "PT1M"}), "id": "second"}).status_code == 201
        rest.assert_batch_error(post(shoal, {**schedule_body(far), "id": "third"}), 409,
                                "ActiveJobAndScheduleQuotaReached")
        job = rest.call(shoal, "POST", "/jobs", body=b'{"id": "a-job", "poolInfo": {"poolId": "p"}}')
        rest.assert_batch_error(job, 409, "ActiveJobAndScheduleQuotaReached")
        import time

        time.sleep(1.5)
        assert rest.call(shoal, "GET", "/jobschedules/second/jobs").json()["value"] == []
        assert rest.call(shoal, "GET", "/jobschedules/second").json()["state"] == "active"
        assert rest.call(shoal, "DELETE", "/jobschedules/first").status_code == 202
        time.sleep(1.5)
        third = post(shoal, {**schedule_body(far), "id": "third"})
        assert third.status_code == 201, third.text
        # The quota is full again: a schedule asked to run once, now, skips that run and so completes.
        assert rest.call(shoal, "PUT", "/jobschedules/third", body=json.dumps(
            {"schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "p"}}}).encode()).status_code == 200
        time.sleep(1.5)
        assert rest.call(shoal, "GET", "/jobschedules/third").json()["state"] == "completed"
        assert rest.call(shoal, "GET", "/jobschedules/third/jobs").json()["value"] == []
    finally:
        stop_shoal(shoal)
        kill_agents(shoal.data_dir)
