"""Pool_GetAllLifetimeStatistics and Job_GetAllLifetimeStatistics (issue 10 item 8) with the
azure-batch release of the last api-version that has them (13.0.0, 2022-10-01.16.0), from the
account's counters; later api-versions answer 404 InvalidUri, as Batch does."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.acceptance.rest import call
from tests.compat.test_msrest_sdks import SCRIPT, sdk_python

FLOW = SCRIPT.with_name("msrest_lifetime_flow.py")
OLD = "2022-10-01.16.0"


@pytest.fixture(scope="module")
def flow(shoal):
    result = subprocess.run([sdk_python(13), str(FLOW), shoal.endpoint, shoal.account, shoal.primary_key],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_job_statistics_count_the_tasks_their_retries_and_their_time(flow):
    before, after = flow["before"], flow["after"]
    assert (before["succeeded"], before["failed"], before["retries"]) == (0, 0, 0)
    assert (after["succeeded"], after["failed"], after["retries"]) == (2, 1, 2)
    # Two one-second sleeps and three quick failing attempts; no more than the run took.
    assert 2.0 <= after["wall_s"] <= 2.0 + flow["idle_for_s"] * 3
    assert after["wait_s"] >= 0 and after["user_cpu_s"] == 0
    assert after["url"].endswith("/lifetimejobstats")


def test_pool_statistics_count_dedicated_core_time_up_to_now(flow):
    after, later = flow["after"], flow["later"]
    assert flow["before"]["pool_core_s"] == 0
    # One 2-vCPU node held its VM at least while the tasks ran, and its open span keeps counting.
    assert after["pool_core_s"] >= 2 * 1.0
    assert later["pool_core_s"] >= after["pool_core_s"] + 2 * 1.0
    assert later["pool_core_s"] <= 2 * (flow["idle_for_s"] + 120)
    assert after["pool_cpu"] == 0.0


def test_the_answers_have_the_shape_batch_recorded(shoal, flow):
    pool = call(shoal, "GET", "/lifetimepoolstats", api_version=OLD)
    assert pool.status_code == 200
    body = pool.json()
    assert set(body) == {"odata.metadata", "url", "usageStats", "resourceStats"}
    assert body["odata.metadata"].endswith("/$metadata#poolstats/@Element")
    assert set(body["usageStats"]) == {"startTime", "lastUpdateTime", "dedicatedCoreTime"}
    assert body["resourceStats"]["diskReadIOps"] == "0" and body["resourceStats"]["avgMemoryGiB"] == 0.0
    job = call(shoal, "GET", "/lifetimejobstats", api_version=OLD).json()
    assert job["odata.metadata"].endswith("/$metadata#jobstats/@Element")
    assert job["numSucceededTasks"] == "2" and job["numTaskRetries"] == "2" and job["userCPUTime"] == "PT0S"


@pytest.mark.parametrize("version", ["2023-05-01.17.0", "2024-02-01.19.0", "2025-06-01"])
def test_later_api_versions_do_not_serve_them(shoal, version):
    for path in ("/lifetimepoolstats", "/lifetimejobstats"):
        answer = call(shoal, "GET", path, api_version=version)
        assert answer.status_code == 404 and answer.json()["code"] == "InvalidUri", (path, version)


def test_they_want_the_account_key_and_a_known_api_version(shoal):
    assert call(shoal, "GET", "/lifetimepoolstats", api_version=OLD, sign=False).status_code == 401
    assert call(shoal, "GET", "/lifetimejobstats", api_version=OLD, key="d3Jvbmc=").status_code in (401, 403)
    assert call(shoal, "GET", "/lifetimejobstats", api_version="2019-01-01.0\x00").status_code == 400
    assert call(shoal, "GET", "/lifetimejobstats", api_version=None).status_code == 400
    assert call(shoal, "POST", "/lifetimejobstats", api_version=OLD, body=b"{}").status_code in (404, 405)
