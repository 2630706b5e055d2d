"""Sizes are real (issue 10 item 1): a node of a small VM size cannot use more memory or CPU
than that size has. Standard_B1ls: 1 vCPU, 512 MiB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models

from shoal.agent.tree import mounted_hierarchies
from shoal.testing.server import interpreter_for_others
from tests.helpers import pool_options, wait_pool_idle, wait_task_state

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not {h.controller for h in mounted_hierarchies() if h.version == 1} >= {"memory", "cpu"},
    reason="size limits need root and the v1 memory and cpu cgroup hierarchies (this host's kind)")

POOL = "tiny"
PYTHON = interpreter_for_others()[0]  # no packages needed: the standard library only
# Touch every page, so the memory is really used (a bare bytearray may stay zero pages).
HOG = f"{PYTHON} -c \"b = bytearray({{}} << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')\""


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(POOL, vm_size="Standard_B1ls", target_dedicated_nodes=1))
    client.create_job(models.BatchJobCreateOptions(id="tiny-job", pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return wait_pool_idle(client, POOL, 1)[0]


def _run(client: Any, task_id: str, command: str, timeout: float = 60) -> Any:
    client.create_task("tiny-job", models.BatchTaskCreateOptions(id=task_id, command_line=command))
    return wait_task_state(client, "tiny-job", task_id, "completed", timeout=timeout)


def _stdout(client: Any, task_id: str) -> str:
    return b"".join(client.download_task_file("tiny-job", task_id, "stdout.txt")).decode()


def test_the_node_reports_no_size_error_when_it_can_confine(client, node):
    errors = client.get_node(POOL, node.id).errors or []
    assert not [e for e in errors if e.code == "SizeNotEnforced"]


def test_a_task_within_the_nodes_memory_runs(client, node):
    task = _run(client, "small", HOG.format(100))
    assert task.execution_info.exit_code == 0 and "survived" in _stdout(client, "small")


def test_a_task_past_the_nodes_memory_is_killed_and_the_node_lives_on(client, node):
    task = _run(client, "hog", HOG.format(1024))
    # The kernel's OOM killer, confined to the node: SIGKILL, as on a 512 MiB VM.
    assert task.execution_info.exit_code == 137, task.execution_info
    assert task.execution_info.result == "failure"
    assert "survived" not in _stdout(client, "hog")
    # The agent was not the one killed: the node still runs tasks.
    assert _run(client, "after", "/bin/true").execution_info.exit_code == 0
    assert client.get_node(POOL, node.id).state in ("idle", "running")


def test_tasks_together_get_only_the_nodes_vcpus(client, node):
    # Six busy processes for two seconds on a 1-vCPU node: the CFS quota throttles them (six, so
    # that they still want more than one CPU when other work keeps the machine's two busy).
    burn = f'{PYTHON} -c "import time; t = time.time() + 2; all(time.time() < t for _ in iter(int, 1))"'
    command = f"""/bin/sh -c '{" & ".join([burn] * 6)} & wait; grep -E ":([a-z,]*,)?cpu(,[a-z,]*)?:" /proc/self/cgroup'"""
    task = _run(client, "burn", command)
    assert task.execution_info.exit_code == 0, _stdout(client, "burn")
    cgroup = _stdout(client, "burn").strip().splitlines()[-1].split(":", 2)[2]
    mount = next(h for h in mounted_hierarchies() if h.version == 1 and h.controller == "cpu")
    folder = mount.directory(cgroup)
    assert Path(folder, "cpu.cfs_quota_us").read_text().strip() == "100000"
    stats = dict(line.split() for line in Path(folder, "cpu.stat").read_text().splitlines())
    assert int(stats["nr_throttled"]) > 0
