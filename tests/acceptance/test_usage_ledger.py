"""The usage ledger (`shoal usage`, issue 10 item 8, beyond Azure): what every attempt used is
added to its job's row as it ends, the pools' node-hours come from the node spans, and prices
from configuration turn both into a cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from azure.batch import models

from tests.acceptance.rest import call
from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done


def shoal_usage(shoal, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "usage", *args, "--data-dir", str(shoal.data_dir)],
                          capture_output=True, text=True, timeout=60, check=check,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


@pytest.fixture(scope="module")
def ran(shoal, client):
    # standard_d2s_v3: 2 vCPUs; 2 slots a node, so a slot is one core.
    client.create_pool(pool_options("ledger-pool", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "ledger-pool", 1)
    client.create_job(models.BatchJobCreateOptions(id="ledger-job", pool_info=models.BatchPoolInfo(pool_id="ledger-pool")))
    client.create_tasks("ledger-job", [
        models.BatchTaskCreateOptions(id="one", command_line="/bin/sleep 1"),
        models.BatchTaskCreateOptions(id="two", command_line="/bin/sleep 1"),
        models.BatchTaskCreateOptions(id="wide", command_line="/bin/sleep 1", required_slots=2),
        models.BatchTaskCreateOptions(id="retried", command_line="/bin/false",
                                      constraints=models.BatchTaskConstraints(max_task_retry_count=2)),
    ])
    wait_tasks_done(client, "ledger-job")
    return client


def test_each_attempt_adds_its_slot_and_core_time_to_its_job(shoal, ran):
    ledger = json.loads(shoal_usage(shoal, "--json").stdout)
    rows = [j for j in ledger["jobs"] if j["jobId"] == "ledger-job"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["poolId"], row["vmSize"], row["kind"]) == ("ledger-pool", "standard_d2s_v3", "dedicated")
    assert row["attempts"] == 3 + 3  # three tasks once, the failing one three times (two retries)
    seconds = row["taskHours"] * 3600
    # one + two + wide (two slots) sleep a second each: at least 4 slot-seconds, and not much more.
    assert 4.0 <= seconds < 12.0, seconds
    assert row["coreHours"] == pytest.approx(row["taskHours"])  # a slot is one vCPU here
    assert row["cost"] is None  # no prices configured


def test_pools_are_charged_for_the_time_their_nodes_held_a_vm(shoal, ran):
    ledger = json.loads(shoal_usage(shoal, "--json").stdout)
    pool = next(p for p in ledger["pools"] if p["poolId"] == "ledger-pool")
    assert pool["kind"] == "dedicated" and pool["vcpus"] == 2
    assert 0 < pool["nodeHours"] < 1 and pool["coreHours"] == pytest.approx(2 * pool["nodeHours"])


def test_prices_turn_hours_into_a_cost_and_the_ledger_outlives_the_job(shoal, ran, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"Standard_D2s_v3": {"dedicated": 3.6, "spot": 0.72}}))
    before = json.loads(shoal_usage(shoal, "--json", "--prices", str(prices)).stdout)
    job = next(j for j in before["jobs"] if j["jobId"] == "ledger-job")
    assert job["cost"] == pytest.approx(job["coreHours"] * 3.6 / 2)
    pool = next(p for p in before["pools"] if p["poolId"] == "ledger-pool")
    assert pool["cost"] == pytest.approx(pool["nodeHours"] * 3.6, rel=0.5)
    ran.begin_delete_job("ledger-job").result()
    after = json.loads(shoal_usage(shoal, "--json").stdout)
    kept = next(j for j in after["jobs"] if j["jobId"] == "ledger-job")
    assert kept["attempts"] == job["attempts"] and kept["taskHours"] == job["taskHours"]
    table = shoal_usage(shoal, "--prices", str(prices)).stdout
    assert "ledger-job" in table and "ledger-pool" in table


@pytest.mark.parametrize("content", ["not json", "[]", '{"standard_d2s_v3": {"dedicated": -1}}',
                                     '{"standard_d2s_v3": {"weekend": 1}}', '{"standard_d2s_v3": {"spot": true}}'])
def test_a_bad_prices_file_is_refused_with_its_reason(shoal, tmp_path, content):
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    result = shoal_usage(shoal, "--prices", str(prices), check=False)
    assert result.returncode == 2 and "--prices" in result.stderr and "Traceback" not in result.stderr


def test_the_ledger_route_is_authenticated_and_checks_its_cursor(shoal):
    assert call(shoal, "GET", "/shoal/v1/usage", sign=False).status_code == 401
    assert call(shoal, "GET", "/shoal/v1/usage", params={"after": "x" * 65}).status_code == 400
    assert call(shoal, "GET", "/shoal/v1/usage", params={"after": "zzz"}).json()["jobs"] == []


def test_the_dashboard_usage_page_shows_hours_and_the_data_dirs_prices(shoal, ran):
    """Issue 12: the ledger gets its place in the dashboard; prices come from the data dir's
    prices.json, read when the page is shown, and a broken one is named, not a 500."""
    import re

    from tests.acceptance.dashboard import http, signed_in

    with http(shoal) as stranger:
        assert stranger.get("/ui/usage").status_code == 303
    prices = shoal.data_dir / "prices.json"
    try:
        with signed_in(shoal) as browser:
            page = browser.get("/ui/usage")
            assert page.status_code == 200 and "ledger-pool" in page.text and 'id="usage-jobs"' in page.text
            assert "prices.json" in page.text and 'id="price-error"' not in page.text
            row = re.search(r'<tr data-job="ledger-job">(.*?)</tr>', page.text, re.S)
            assert row and row.group(1).endswith("<td></td>")  # no price, no cost
            prices.write_text(json.dumps({"Standard_D2s_v3": {"dedicated": 3600.0}}))
            page = browser.get("/ui/usage").text
            row = re.search(r'<tr data-job="ledger-job">(.*?)</tr>', page, re.S)
            cells = re.findall(r"<td>([^<]*)</td>", row.group(1)) if row else []
            task_hours, core_hours, cost = (float(cell) for cell in cells[-3:])
            # 3,600 an hour for the size's 2 vCPUs: a core-hour costs 1,800 (hours shown to 4 places).
            assert cost == pytest.approx(core_hours * 3600 / 2, abs=0.00005 * 1800) and cost > 0
            assert task_hours == pytest.approx(core_hours, abs=0.0001)
            prices.write_text('{"standard_d2s_v3": {"dedicated": -1}}')
            page = browser.get("/ui/usage")
            assert page.status_code == 200 and 'id="price-error"' in page.text and "at least 0" in page.text
            assert browser.get("/ui/usage", params={"after": "x" * 65}).status_code == 400
            assert browser.get("/ui/usage", params={"after": "\x01"}).status_code == 400
            after = browser.get("/ui/usage", params={"after": "ledger-job"})
            assert after.status_code == 200 and 'data-job="ledger-job"' not in after.text
    finally:
        prices.unlink(missing_ok=True)
