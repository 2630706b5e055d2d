"""The `shoal` CLI against a real server: every command calls the REST API like any client."""

from __future__ import annotations

import json
import subprocess
import sys

from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle


def shoal_cli(shoal, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args, "--data-dir", str(shoal.data_dir)],
                          capture_output=True, text=True, timeout=120, check=check,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"})


def test_account_show_prints_endpoint_and_keys(shoal):
    info = json.loads(shoal_cli(shoal, "account", "show", "--json").stdout)
    assert info == {"name": shoal.account, "endpoint": shoal.endpoint, "primaryKey": shoal.primary_key,
                    "secondaryKey": shoal.secondary_key}


def test_pool_job_and_task_lists_and_wait(shoal, client):
    client.create_pool(pool_options("cli-pool", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "cli-pool", 1)
    client.create_job(models.BatchJobCreateOptions(id="cli-job", pool_info=models.BatchPoolInfo(pool_id="cli-pool")))
    client.create_tasks("cli-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/sleep 0.2")
                                    for i in range(6)] +
                        [models.BatchTaskCreateOptions(id="fails", command_line="/bin/false")])

    pools = json.loads(shoal_cli(shoal, "pool", "list", "--json").stdout)
    assert [p["id"] for p in pools] == ["cli-pool"]
    assert "cli-pool" in shoal_cli(shoal, "pool", "list").stdout

    jobs = json.loads(shoal_cli(shoal, "job", "list", "--json").stdout)
    assert [(j["id"], j["poolInfo"]["poolId"]) for j in jobs] == [("cli-job", "cli-pool")]

    waited = shoal_cli(shoal, "task", "wait", "cli-job", check=False)
    assert waited.returncode == 1  # one task failed
    assert "cli-job" in waited.stdout and "7/7" in waited.stdout

    tasks = json.loads(shoal_cli(shoal, "task", "list", "cli-job", "--json").stdout)
    assert sorted(t["id"] for t in tasks) == sorted([f"t{i}" for i in range(6)] + ["fails"])
    failed = json.loads(shoal_cli(shoal, "task", "list", "cli-job", "--state", "completed", "--json").stdout)
    assert len(failed) == 7
    table = shoal_cli(shoal, "task", "list", "cli-job").stdout
    assert "fails" in table and "failure" in table


def test_cli_reports_a_missing_job_as_an_error(shoal):
    result = shoal_cli(shoal, "task", "list", "no-such-job", check=False)
    assert result.returncode == 1
    assert "JobNotFound" in result.stdout


def test_a_second_server_on_the_same_data_dir_is_refused(shoal):
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "up", "--port", "0", "--data-dir", str(shoal.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "already using" in result.stdout
    # The running server is untouched.
    assert json.loads(shoal_cli(shoal, "account", "show", "--json").stdout)["endpoint"] == shoal.endpoint
