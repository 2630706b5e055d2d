"""`shoal status`, `shoal down`, `shoal reset` and the CLI's hints (issue 12, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_pool_idle


def cli(data_dir, *args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, input=stdin,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **(env or {})})


def test_status_down_and_reset_of_a_running_server(tmp_path):
    data_dir = tmp_path / "data"
    shoal = start_shoal(data_dir)
    try:
        client = shoal.client()
        client.create_pool(pool_options("ctl-pool", target_dedicated_nodes=1))
        wait_pool_idle(client, "ctl-pool", 1)

        status = json.loads(cli(data_dir, "status", "--json").stdout)
        assert status["running"] and status["pid"] == shoal.process.pid
        assert status["endpoint"] == shoal.endpoint and status["ready"] is True
        assert status["pools"] == {"ctl-pool": {"idle": 1}}
        text = cli(data_dir, "status").stdout
        assert f"pid:      {shoal.process.pid}" in text and "pool ctl-pool: idle 1" in text
        assert shoal.primary_key not in text

        # No reset while it runs.
        refused = cli(data_dir, "reset", "--yes")
        assert refused.returncode == 1 and "stop it first with `shoal down`" in refused.stderr
        assert (data_dir / "shoal.db").exists()

        stopped = cli(data_dir, "down")
        assert stopped.returncode == 0 and f"pid {shoal.process.pid}" in stopped.stdout
        assert shoal.process.wait(5) == 0
        assert json.loads(cli(data_dir, "status", "--json").stdout)["running"] is False
        assert "not running" in cli(data_dir, "down").stdout
        assert "not running" in cli(data_dir, "status").stdout
    finally:
        stop_shoal(shoal)
        kill_agents(data_dir)

    # Asked and refused: nothing goes.
    kept = cli(data_dir, "reset", stdin="n\n")
    assert kept.returncode == 1 and "Aborted" in kept.stderr
    assert (data_dir / "shoal.db").exists()
    done = cli(data_dir, "reset", stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert list(data_dir.iterdir()) == []
    assert not shoal.nodes_dir.exists()
    # A fresh start after a reset has a fresh account and no pools.
    again = start_shoal(data_dir)
    try:
        assert again.primary_key != shoal.primary_key
        assert list(again.client().list_pools()) == []
    finally:
        stop_shoal(again)
        kill_agents(data_dir)


def test_reset_refuses_a_folder_that_is_not_a_data_dir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = cli(tmp_path, "reset", "--yes")
    assert result.returncode == 1 and "is not a Shoal data dir" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_down_does_not_signal_a_stale_pid(tmp_path):
    # A lock file left by a server that died (kill -9): nobody holds it, its pid may be anyone's.
    (tmp_path / "shoal.lock").write_text(f"{os.getpid()}\n")
    result = cli(tmp_path, "down")
    assert result.returncode == 0 and "not running" in result.stdout


def test_a_wrong_key_and_an_unknown_pool_get_a_hint(shoal):
    record = json.loads((shoal.data_dir / "endpoint.json").read_text())
    wrong = cli(shoal.data_dir, "node", "list", "no-such-pool")
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[0].startswith("error PoolNotFound")
    assert "hint: `shoal pool list` shows the pools there are" in wrong.stdout
    env = {"AZURE_BATCH_ENDPOINT": record["endpoint"], "AZURE_BATCH_ACCOUNT": record["account"],
           "AZURE_BATCH_ACCESS_KEY": "AAAA" + record["primaryKey"][4:]}
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "list"], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **env})
    assert result.returncode == 1 and "error AuthenticationFailed" in result.stdout
    assert "hint: the key the CLI used" in result.stdout and "Traceback" not in result.stderr
