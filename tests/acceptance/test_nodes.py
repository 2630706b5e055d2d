"""Compute nodes through the official SDK against a real `shoal up`: ids, the state machine, the start
task, the node folder layout and AZ_BATCH_* environment, node files, and `unusable` on a silent agent."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done

NODE_ID = re.compile(r"^tvmps_[0-9a-f]{64}_d$")
BOOT_STATES = {"creating", "starting", "waitingforstarttask", "idle"}
NODE_SUBDIRS = {"applications", "fsmounts", "shared", "startup", "volatile", "workitems"}
GREETING = "hello from the start task"


def agent_pids(node_id: str) -> list[int]:
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "shoal.agent" in cmdline and node_id in cmdline:
            pids.append(process.pid)
    return pids


def error_of(exc: HttpResponseError) -> tuple[int, str]:
    exc.response.read()  # streamed downloads leave the error body unread
    return exc.status_code, exc.response.json()["code"]


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def read_node_file(client: Any, pool_id: str, node_id: str, path: str, **kwargs: Any) -> bytes:
    return b"".join(client.download_node_file(pool_id, node_id, path, **kwargs))


@pytest.fixture(scope="module")
def ready_node(client: Any) -> Any:
    """A pool whose start task waits for success, with the node states seen while it booted."""
    client.create_pool(pool_options("nodes-ok", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo \"$GREETING\" > \"$AZ_BATCH_NODE_SHARED_DIR/greeting.txt\"; env; sleep 1'",
        environment_settings=[models.EnvironmentSetting(name="GREETING", value=GREETING)],
        wait_for_success=True)))
    seen: list[str] = []

    def idle() -> Any:
        nodes = list(client.list_nodes("nodes-ok"))
        for node in nodes:
            if not seen or seen[-1] != node.state:
                seen.append(node.state)
        return nodes[0] if nodes and nodes[0].state == "idle" else None

    node = wait_for(idle, 30, interval=0.05, message="nodes-ok to become idle")
    return node, seen


def test_node_ids_states_and_start_task_info(client, ready_node):
    node, seen = ready_node
    assert NODE_ID.match(node.id), node.id
    assert set(seen) <= BOOT_STATES and seen[-1] == "idle"
    # The start task sleeps a second, so the node is seen waiting for it.
    assert "waitingforstarttask" in seen, seen
    assert node.is_dedicated and node.vm_size == "standard_d2s_v3" and node.scheduling_state == "enabled"
    info = node.start_task_info
    assert (info.state, info.result, info.exit_code, info.retry_count) == ("completed", "success", 0, 0)
    assert info.start_time <= info.end_time and info.failure_info is None
    assert node.start_task.command_line.startswith("/bin/sh -c")
    got = client.get_node("nodes-ok", node.id)
    assert (got.id, got.state, got.url) == (node.id, "idle", node.url)
    assert got.url.endswith(f"/pools/nodes-ok/nodes/{node.id}")
    with pytest.raises(HttpResponseError) as info_404:
        client.get_node("nodes-ok", "tvmps_" + "0" * 64 + "_d")
    assert error_of(info_404.value) == (404, "NodeNotFound")


def test_start_task_environment(shoal, client, ready_node):
    node, _ = ready_node
    root = shoal.nodes_dir / node.id / "batch" / "tasks"
    env = parse_env(read_node_file(client, "nodes-ok", node.id, "startup/stdout.txt").decode())
    assert env["GREETING"] == GREETING
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(root)
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == env["AZ_BATCH_TASK_DIR"] == str(root / "startup")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(root / "startup" / "wd")
    assert env["AZ_BATCH_NODE_MOUNTS_DIR"] == str(root / "fsmounts")
    assert env["AZ_BATCH_POOL_ID"] == "nodes-ok" and env["AZ_BATCH_NODE_ID"] == node.id
    # The start task belongs to no job.
    assert "AZ_BATCH_JOB_ID" not in env and "AZ_BATCH_TASK_ID" not in env
    assert (root / "shared" / "greeting.txt").read_text() == GREETING + "\n"


def test_task_environment_and_folder_layout(shoal, client, ready_node):
    node, _ = ready_node
    client.create_job(models.BatchJobCreateOptions(id="envjob", pool_info=models.BatchPoolInfo(pool_id="nodes-ok")))
    client.create_task("envjob", models.BatchTaskCreateOptions(
        id="dump", command_line="/bin/sh -c 'env; echo CWD=$(pwd)'",
        environment_settings=[models.EnvironmentSetting(name="MINE", value="task value")]))
    assert wait_tasks_done(client, "envjob", timeout=30).succeeded == 1
    root = shoal.nodes_dir / node.id / "batch" / "tasks"
    task_dir = root / "workitems" / "envjob" / "job-1" / "dump"
    env = parse_env(read_node_file(client, "nodes-ok", node.id, "workitems/envjob/job-1/dump/stdout.txt").decode())
    expected = {
        "AZ_BATCH_ACCOUNT_NAME": shoal.account,
        "AZ_BATCH_ACCOUNT_URL": shoal.endpoint,
        "AZ_BATCH_POOL_ID": "nodes-ok",
        "AZ_BATCH_NODE_ID": node.id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true",
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_NODE_MOUNTS_DIR": str(root / "fsmounts"),
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        "AZ_BATCH_CERTIFICATES_DIR": str(task_dir / "certs"),
        "AZ_BATCH_JOB_ID": "envjob",
        "AZ_BATCH_TASK_ID": "dump",
        "MINE": "task value",
        "CWD": str(task_dir / "wd"),
    }
    assert {k: env.get(k) for k in expected} == expected
    assert int(env["AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES"]) > 0
    # The start task's own variables are not inherited by job tasks.
    assert "GREETING" not in env
    assert {p.name for p in root.iterdir() if p.is_dir()} >= NODE_SUBDIRS
    assert (task_dir / "wd").is_dir() and (task_dir / "stdout.txt").is_file() and (task_dir / "stderr.txt").is_file()
    after = client.get_node("nodes-ok", node.id)
    assert (after.total_tasks_run, after.total_tasks_succeeded, after.state) == (1, 1, "idle")


def test_node_files_api(client, ready_node):
    node, _ = ready_node
    top = {f.name: f.is_directory for f in client.list_node_files("nodes-ok", node.id)}
    assert NODE_SUBDIRS <= {name for name, is_dir in top.items() if is_dir}
    everything = {f.name: f for f in client.list_node_files("nodes-ok", node.id, recursive=True)}
    assert {"startup/stdout.txt", "startup/stderr.txt", "shared/greeting.txt"} <= set(everything)
    greeting = everything["shared/greeting.txt"]
    assert not greeting.is_directory and greeting.properties.content_length == len(GREETING) + 1
    props = client.get_node_file_properties("nodes-ok", node.id, "shared/greeting.txt")
    assert (props.content_length, props.is_directory) == (len(GREETING) + 1, False)
    assert props.url.endswith("shared/greeting.txt") and props.last_modified is not None
    assert read_node_file(client, "nodes-ok", node.id, "shared/greeting.txt", ocp_range="bytes=0-4") == b"hello"
    assert read_node_file(client, "nodes-ok", node.id, "shared/greeting.txt") == (GREETING + "\n").encode()
    client.delete_node_file("nodes-ok", node.id, "shared/greeting.txt")
    with pytest.raises(HttpResponseError) as info:
        client.get_node_file_properties("nodes-ok", node.id, "shared/greeting.txt")
    assert info.value.status_code == 404  # a HEAD: no error body
    with pytest.raises(HttpResponseError) as info:
        read_node_file(client, "nodes-ok", node.id, "shared/greeting.txt")
    assert error_of(info.value) == (404, "FileNotFound")
    assert "shared/greeting.txt" not in {f.name for f in client.list_node_files("nodes-ok", node.id, recursive=True)}


def test_running_node_and_node_counts(client, ready_node):
    node, _ = ready_node
    client.create_job(models.BatchJobCreateOptions(id="runjob", pool_info=models.BatchPoolInfo(pool_id="nodes-ok")))
    client.create_task("runjob", models.BatchTaskCreateOptions(id="nap", command_line="/bin/sleep 2"))
    running = wait_for(lambda: (lambda n: n if n.state == "running" else None)(client.get_node("nodes-ok", node.id)),
                       15, message="node to run the task")
    assert running.running_tasks_count == 1 and running.running_task_slots_count == 1
    assert [t.task_id for t in running.recent_tasks][0] == "nap"  # then the tasks it ran before
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["nodes-ok"]
    assert (counts.dedicated.running, counts.dedicated.idle, counts.dedicated.total) == (1, 0, 1)
    wait_tasks_done(client, "runjob", timeout=30)
    wait_for(lambda: client.get_node("nodes-ok", node.id).state == "idle", 10, message="node idle again")
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["nodes-ok"]
    assert (counts.dedicated.running, counts.dedicated.idle) == (0, 1)


def test_start_task_failure_blocks_scheduling(client):
    client.create_pool(pool_options("nodes-fail", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo broken >&2; exit 3'", max_task_retry_count=2, wait_for_success=True)))
    node = wait_for(lambda: next((n for n in client.list_nodes("nodes-fail") if n.state == "starttaskfailed"), None),
                    30, message="starttaskfailed")
    info = node.start_task_info
    assert (info.state, info.result, info.exit_code, info.retry_count) == ("completed", "failure", 3, 2)
    assert info.last_retry_time is not None
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "FailureExitCode")
    assert read_node_file(client, "nodes-fail", node.id, "startup/stderr.txt") == b"broken\n"
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["nodes-fail"]
    assert (counts.dedicated.start_task_failed, counts.dedicated.total) == (1, 1)
    client.create_job(models.BatchJobCreateOptions(id="failjob", pool_info=models.BatchPoolInfo(pool_id="nodes-fail")))
    client.create_task("failjob", models.BatchTaskCreateOptions(id="never", command_line="/bin/true"))
    time.sleep(1.5)  # several scheduler passes
    assert client.get_task("failjob", "never").state == "active"
    assert client.get_node("nodes-fail", node.id).total_tasks_run == 0


def test_start_task_without_wait_leaves_node_schedulable(client):
    client.create_pool(pool_options("nodes-nowait", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sleep 4", wait_for_success=False)))
    node = wait_for(lambda: next((n for n in client.list_nodes("nodes-nowait") if n.state == "idle"), None),
                    30, message="idle node")
    # Idle while its start task still runs.
    assert node.start_task_info is not None and node.start_task_info.state == "running"
    client.create_job(models.BatchJobCreateOptions(id="nowaitjob",
                                                   pool_info=models.BatchPoolInfo(pool_id="nodes-nowait")))
    client.create_task("nowaitjob", models.BatchTaskCreateOptions(id="early", command_line="/bin/true"))
    wait_tasks_done(client, "nowaitjob", timeout=15)
    assert client.get_node("nodes-nowait", node.id).start_task_info.state == "running"


def test_unusable_when_agent_goes_silent(tmp_path: Path):
    # Only the heartbeat timeout is short: the server keeps its long-polls inside it, so the
    # node that is not paused must stay healthy throughout.
    running = start_shoal(tmp_path / "silent", env={"SHOAL_HEARTBEAT_TIMEOUT_S": "2"})
    stopped: list[int] = []
    try:
        client = running.client()
        client.create_pool(pool_options("silent", target_dedicated_nodes=2))
        wait_pool_idle(client, "silent", 2)
        client.create_job(models.BatchJobCreateOptions(id="silentjob",
                                                       pool_info=models.BatchPoolInfo(pool_id="silent")))
        client.create_task("silentjob", models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 60"))
        first = wait_for(lambda: (lambda t: t if t.state == "running" else None)(client.get_task("silentjob", "long")),
                         15, message="task to run").node_info.node_id
        stopped = agent_pids(first)
        assert stopped
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: client.get_node("silent", first).state == "unusable", 15, message="unusable node")
        moved = wait_for(lambda: (lambda t: t if t.state == "running" and t.node_info.node_id != first else None)(
            client.get_task("silentjob", "long")), 15, message="task requeued to the other node")
        assert moved.node_info.pool_id == "silent"
        counts = {c.pool_id: c for c in client.list_pool_node_counts()}["silent"]
        assert (counts.dedicated.unusable, counts.dedicated.running) == (1, 1)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped = []
        wait_for(lambda: client.get_node("silent", first).state == "idle", 15, message="node back after SIGCONT")
        assert client.get_task("silentjob", "long").node_info.node_id == moved.node_info.node_id
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_shoal(running)
        kill_agents(running.data_dir)
