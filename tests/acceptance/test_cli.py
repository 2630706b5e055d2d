"""The `shoal` CLI against a real server: every command calls the REST API like any client."""

from __future__ import annotations

import contextlib
import json
import socket
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
    # It ends by naming the tasks that failed and why.
    assert "failed fails: exit code 1, FailureExitCode" in waited.stdout
    summary = json.loads(shoal_cli(shoal, "task", "wait", "cli-job", "--json", check=False).stdout)
    assert [(f["id"], f["exitCode"]) for f in summary["failures"]] == [("fails", 1)]

    tasks = json.loads(shoal_cli(shoal, "task", "list", "cli-job", "--json").stdout)
    assert sorted(t["id"] for t in tasks) == sorted([f"t{i}" for i in range(6)] + ["fails"])
    failed = json.loads(shoal_cli(shoal, "task", "list", "cli-job", "--state", "completed", "--json").stdout)
    assert len(failed) == 7
    table = shoal_cli(shoal, "task", "list", "cli-job").stdout
    assert "fails" in table and "failure" in table


def test_a_server_that_is_not_running_is_one_line_with_a_hint(shoal, tmp_path):
    record = json.loads((shoal.data_dir / "endpoint.json").read_text())
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    record["endpoint"] = f"http://127.0.0.1:{dead}"
    (tmp_path / "endpoint.json").write_text(json.dumps(record))
    (tmp_path / "endpoint.json").chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "list", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert result.returncode == 1
    assert result.stdout.strip() == (f"error NotRunning: Shoal is not running at http://127.0.0.1:{dead}: "
                                     "start it with `shoal up`.")
    assert "Traceback" not in result.stderr


def test_a_state_that_batch_does_not_have_is_refused_with_the_choices(shoal):
    result = shoal_cli(shoal, "task", "list", "cli-job", "--state", "failed", check=False)
    assert result.returncode == 2
    assert "'failed' is not one of 'active', 'preparing', 'running', 'completed'" in result.stderr


def test_ids_and_keys_are_shown_whole_on_a_narrow_terminal(shoal, client):
    narrow = {"PATH": "/usr/bin:/bin", "COLUMNS": "50"}
    run = [sys.executable, "-m", "shoal.cli"]
    shown = subprocess.run([*run, "account", "show", "--data-dir", str(shoal.data_dir)], capture_output=True,
                           text=True, timeout=60, env=narrow).stdout
    assert any(line.strip() == f"primaryKey: {shoal.primary_key}" for line in shown.splitlines())
    nodes = [n.id for n in client.list_nodes("cli-pool")]
    table = subprocess.run([*run, "node", "list", "cli-pool", "--data-dir", str(shoal.data_dir)],
                           capture_output=True, text=True, timeout=60, env=narrow).stdout
    # The id column's cells, folded over several lines: their pieces, joined, are the whole ids.
    first_column = "".join(line.split("│")[1].strip() for line in table.splitlines() if line.count("│") > 1)
    assert nodes and all(node in first_column for node in nodes), table
    assert "…" not in table


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


# Runs the CLI with an audit hook that records every file it opens and every SQLite connection.
_SPY = """
import json, os, sys
opened, connects = [], []

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.abspath(os.fsdecode(args[0])))
    elif event == "sqlite3.connect":
        connects.append(repr(args))

sys.addaudithook(hook)
from shoal.cli.main import main
try:
    main(sys.argv[1:])
finally:
    sys.stderr.write("\\nSPY " + json.dumps({"opened": opened, "connects": connects,
                                              "sqlalchemy": "sqlalchemy" in sys.modules}) + "\\n")
"""


def _spied_cli(shoal, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = subprocess.run([sys.executable, "-c", _SPY, *args, "--data-dir", str(shoal.data_dir)],
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(result.stderr.rsplit("SPY ", 1)[1])


def test_the_endpoint_file_is_0600_and_holds_the_keys_the_store_has(shoal):
    import sqlite3
    import stat

    path = shoal.data_dir / "endpoint.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    with contextlib.closing(sqlite3.connect(shoal.data_dir / "shoal.db")) as db:
        name, primary, secondary = db.execute("SELECT name, primary_key, secondary_key FROM accounts").fetchone()
    assert (record["account"], record["primaryKey"], record["secondaryKey"]) == (name, primary, secondary)
    assert "database" not in record
    # No temporary file is left beside it.
    assert not [p.name for p in shoal.data_dir.iterdir() if p.name.endswith(".tmp")]


def test_the_cli_reads_the_account_from_the_endpoint_file_and_opens_no_database(shoal):
    shown, spy = _spied_cli(shoal, "account", "show", "--json")
    assert json.loads(shown.stdout)["primaryKey"] == shoal.primary_key
    listed, list_spy = _spied_cli(shoal, "pool", "list", "--json")
    assert isinstance(json.loads(listed.stdout), list)
    for seen in (spy, list_spy):
        assert seen["connects"] == [] and not seen["sqlalchemy"]
        in_data_dir = {p for p in seen["opened"] if p.startswith(str(shoal.data_dir))}
        assert in_data_dir == {str(shoal.data_dir / "endpoint.json")}
    # A command that is not `account show` prints no key, on stdout or stderr.
    assert shoal.primary_key not in listed.stdout + listed.stderr
    assert shoal.secondary_key not in listed.stdout + listed.stderr


def test_secrets_reach_no_log_but_the_banner_of_shoal_up(shoal):
    lines = shoal.log().splitlines()
    assert [line.split()[0] for line in lines if shoal.primary_key in line] == ["key:"]
    logs = [p for p in shoal.data_dir.rglob("*.log") if p.is_file()]
    assert not any(shoal.secondary_key in p.read_text(errors="replace") for p in logs)
    assert not any(shoal.primary_key in p.read_text(errors="replace") for p in logs if p != shoal.log_path)
