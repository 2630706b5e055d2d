"""Shoal started as an ordinary user cannot create users: it must say so and never pretend."""

from __future__ import annotations

import pwd
import stat
from typing import Any

import psutil
from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle, wait_task_state
from tests.security.conftest import NONROOT_USER

POOL = "nonroot"


def _output(client: Any, job: str, task: str) -> str:
    return b"".join(client.download_task_file(job, task, "stdout.txt")).decode()


def _ready_pool(client: Any) -> list[Any]:
    if POOL not in {p.id for p in client.list_pools()}:
        client.create_pool(pool_options(POOL, target_dedicated_nodes=1))
        client.create_job(models.BatchJobCreateOptions(id="nonroot-job", pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return wait_pool_idle(client, POOL, 1)


def test_server_agents_and_data_are_the_users_and_private(nonroot_shoal: Any, nonroot_client: Any) -> None:
    _ready_pool(nonroot_client)
    uid = pwd.getpwnam(NONROOT_USER).pw_uid
    server = psutil.Process(nonroot_shoal.process.pid)
    assert server.uids().real == uid
    agents = [p for p in server.children(recursive=True) if "shoal.agent" in " ".join(p.cmdline())]
    assert agents and all(p.uids().real == uid for p in agents)
    assert stat.S_IMODE(nonroot_shoal.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((nonroot_shoal.data_dir / "shoal.db").stat().st_mode) == 0o600


def test_every_node_says_it_cannot_isolate_tasks(nonroot_client: Any) -> None:
    node = _ready_pool(nonroot_client)[0]
    errors = nonroot_client.get_node(POOL, node.id).errors or []
    codes = {e.code for e in errors}
    assert "IsolationUnavailable" in codes, [(e.code, e.message) for e in errors]
    message = next(e.message for e in errors if e.code == "IsolationUnavailable")
    assert "root" in message


def test_tasks_run_as_shoals_own_user(nonroot_client: Any) -> None:
    _ready_pool(nonroot_client)
    nonroot_client.create_task("nonroot-job", models.BatchTaskCreateOptions(id="whoami", command_line="/usr/bin/id -un"))
    task = wait_task_state(nonroot_client, "nonroot-job", "whoami", "completed", timeout=30)
    assert task.execution_info.exit_code == 0
    assert _output(nonroot_client, "nonroot-job", "whoami").strip() == NONROOT_USER


def test_a_task_naming_another_user_fails_rather_than_running_as_shoal(nonroot_client: Any) -> None:
    _ready_pool(nonroot_client)
    nonroot_client.create_task("nonroot-job", models.BatchTaskCreateOptions(
        id="as-root", command_line="/usr/bin/id -un", user_identity=models.UserIdentity(username="root")))
    task = wait_task_state(nonroot_client, "nonroot-job", "as-root", "completed", timeout=30)
    assert task.execution_info.result == "failure"
    failure = task.execution_info.failure_info
    assert failure is not None and failure.category == "usererror", failure
    # The node keeps serving: a plain task afterwards completes.
    nonroot_client.create_task("nonroot-job", models.BatchTaskCreateOptions(id="after", command_line="/bin/true"))
    after = wait_task_state(nonroot_client, "nonroot-job", "after", "completed", timeout=30)
    assert after.execution_info.exit_code == 0
