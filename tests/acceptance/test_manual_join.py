"""`shoal server` with no provider: an agent started by hand joins a pool and runs its tasks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from azure.batch import models

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for, wait_tasks_done


def _cli(shoal, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args, "--data-dir", str(shoal.data_dir)],
                          capture_output=True, text=True, timeout=60)


def test_agent_started_by_hand_joins_and_runs_tasks(tmp_path):
    shoal = start_shoal(tmp_path / "server", command="server")
    agent = None
    try:
        client = shoal.client()
        client.create_pool(pool_options("byhand", target_dedicated_nodes=1, task_slots_per_node=2))
        wait_for(lambda: [n.state for n in client.list_nodes("byhand")] == ["creating"], 30,
                 message="a node record waiting for its agent")
        joined = _cli(shoal, "pool", "join-token", "byhand")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        join_token = joined.stdout.strip()
        wrong = subprocess.run([sys.executable, "-m", "shoal.agent", "--join", shoal.endpoint, "--pool", "byhand",
                                "--join-token", "not-the-token", "--root", str(tmp_path / "wrong")],
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode != 0
        agent = subprocess.Popen([sys.executable, "-m", "shoal.agent", "--join", shoal.endpoint, "--pool", "byhand",
                                  "--join-token", join_token, "--root", str(tmp_path / "node" / "batch")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: [n.state for n in client.list_nodes("byhand")] == ["idle"], 30, message="joined node idle")
        client.create_job(models.BatchJobCreateOptions(id="hand-job", pool_info=models.BatchPoolInfo(pool_id="byhand")))
        client.create_task("hand-job", models.BatchTaskCreateOptions(
            id="where", command_line="/bin/sh -c 'echo $AZ_BATCH_NODE_ROOT_DIR'"))
        wait_tasks_done(client, "hand-job")
        out = b"".join(client.download_task_file("hand-job", "where", "stdout.txt")).decode().strip()
        assert out == str(tmp_path / "node" / "batch")
        # Shrinking the pool sends the joined agent away: it deletes its root and exits.
        client.begin_resize_pool("byhand", models.BatchPoolResizeOptions(target_dedicated_nodes=0),
                                 polling_interval=0.2).result()
        wait_for(lambda: agent.poll() is not None, 30, message="the agent to leave")
        assert not (tmp_path / "node" / "batch").exists()
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_up_refuses_agents_joining_by_hand(shoal, client):
    client.create_pool(pool_options("provided", target_dedicated_nodes=0))
    token = _cli(shoal, "pool", "join-token", "provided").stdout.strip()
    result = subprocess.run([sys.executable, "-m", "shoal.agent", "--join", shoal.endpoint, "--pool", "provided",
                             "--join-token", token, "--root", str(shoal.data_dir / "stray")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_agent_joins_an_https_server_trusting_its_ca(tmp_path):
    """`shoal server --tls`: a hand-started agent is given the CA with --ca-file (it is public),
    and its tasks trust it too."""
    shoal = start_shoal(tmp_path / "server", command="server", extra_args=["--tls"])
    # Where the task's user can walk down to the node root (pytest's own folders are root's only).
    node_parent = Path(tempfile.mkdtemp(prefix="shoal-hand-"))
    node_parent.chmod(0o755)
    agent = None
    try:
        assert shoal.endpoint.startswith("https://") and shoal.ca_file
        client = shoal.client()
        client.create_pool(pool_options("tlshand", target_dedicated_nodes=1))
        join_token = _cli(shoal, "pool", "join-token", "tlshand").stdout.strip()
        agent = subprocess.Popen([sys.executable, "-m", "shoal.agent", "--join", shoal.endpoint, "--pool", "tlshand",
                                  "--join-token", join_token, "--root", str(node_parent / "batch"),
                                  "--ca-file", shoal.ca_file],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: [n.state for n in client.list_nodes("tlshand")] == ["idle"], 30, message="joined node idle")
        client.create_job(models.BatchJobCreateOptions(id="tls-job", pool_info=models.BatchPoolInfo(pool_id="tlshand")))
        # The task reaches the server over https with the node's CA bundle, and no option of its own.
        probe = ("import os, ssl, urllib.request as r, urllib.error as e\n"
                 "try: r.urlopen(os.environ['AZ_BATCH_ACCOUNT_URL'] + '/pools', context=ssl.create_default_context())\n"
                 "except e.HTTPError as x: print(x.code)")
        client.create_task("tls-job", models.BatchTaskCreateOptions(
            id="probe", command_line="/usr/bin/python3 -c \"import os; exec(os.environ['PROBE'])\"",
            environment_settings=[models.EnvironmentSetting(name="PROBE", value=probe)]))
        wait_tasks_done(client, "tls-job")
        out = b"".join(client.download_task_file("tls-job", "probe", "stdout.txt")).decode().strip()
        err = b"".join(client.download_task_file("tls-job", "probe", "stderr.txt")).decode()
        assert out == "401", err  # TLS verified; the unsigned call itself is refused
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        stop_shoal(shoal)
        kill_agents(tmp_path)
        kill_agents(node_parent)
        shutil.rmtree(node_parent, ignore_errors=True)
