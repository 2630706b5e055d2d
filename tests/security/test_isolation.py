"""Tasks run as real users, isolated from the control plane and from each other (run as root).

Everything here is what a task itself can do, checked from inside the task: it reads files,
signals processes and prints what it got; the test reads its stdout through the Batch API.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.batch import models

from shoal.agent.users import NodeNames
from shoal.testing.server import RunningShoal, kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_task_state

# Root only: real users, task-scope users and folder ownership need root; test_nonroot.py checks what a
# non-root Shoal says instead.
SHOAL_MODES = ("root",)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolating tasks needs a root Shoal")

POOL = "isolation"
JOB = "isolation-job"
# The server's environment holds secrets; no agent or task may see them.
SERVER_SECRETS = {"PGPASSWORD": "pg-secret-7f3a", "AZURE_BATCH_ACCESS_KEY": "batch-key-91bc",
                  "SHOAL_TEST_DATABASE_URL": "postgresql://u:db-secret-5e2d@h/db"}
ALICE_PASSWORD = "alice-Pa55word!"
START_TASK = "/bin/sh -c 'echo installed > tool.txt'"


@pytest.fixture(scope="module")
def shoal() -> Iterator[RunningShoal]:
    data_dir = Path(tempfile.mkdtemp(prefix="shoal-isolation-"))
    running = start_shoal(data_dir, env=SERVER_SECRETS)
    try:
        yield running
    finally:
        stop_shoal(running)
        kill_agents(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(
        POOL, target_dedicated_nodes=1, task_slots_per_node=4,
        start_task=models.BatchStartTask(command_line=START_TASK, wait_for_success=True),
        user_accounts=[
            models.UserAccount(name="alice", password=ALICE_PASSWORD, elevation_level="nonadmin"),
            models.UserAccount(name="boss", password="boss-Pa55word!", elevation_level="admin"),
        ]))
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return wait_pool_idle(client, POOL, 1, timeout=60)[0]


def run(client: Any, task_id: str, command: str, identity: Any = None) -> tuple[Any, str]:
    client.create_task(JOB, models.BatchTaskCreateOptions(id=task_id, command_line=command, user_identity=identity))
    task = wait_task_state(client, JOB, task_id, "completed", timeout=30)
    out = ""
    if task.execution_info.exit_code is not None:
        out = b"".join(client.download_task_file(JOB, task_id, "stdout.txt")).decode()
    return task, out


def auto(scope: str = "pool", elevation: str = "nonadmin") -> Any:
    return models.UserIdentity(auto_user=models.AutoUserSpecification(scope=scope, elevation_level=elevation))


def agent_process(node_id: str) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "shoal.agent" in cmdline and node_id in cmdline:
            return process
    raise AssertionError(f"no agent process for {node_id}")


def node_token(shoal: RunningShoal, node_id: str) -> str:
    db = sqlite3.connect(f"file:{shoal.data_dir / 'shoal.db'}?mode=ro", uri=True)
    try:
        return db.execute("select token from nodes where id = ?", (node_id,)).fetchone()[0]
    finally:
        db.close()


def results(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=", 1)[0].isidentifier())


def test_a_default_task_is_unprivileged_and_reaches_nothing_of_the_control_plane(
        shoal: RunningShoal, client: Any, node: Any) -> None:
    agent = agent_process(node.id)
    server = shoal.process.pid
    assert psutil.pid_exists(server) and agent.is_running()
    db = shoal.data_dir / "shoal.db"
    probe = (f"/bin/sh -c 'echo uid=$(id -u); "
             f"cat {db} > /dev/null 2>&1; echo db=$?; "
             f"cat /proc/{agent.pid}/environ > /dev/null 2>&1; echo agentenv=$?; "
             f"cat /proc/{server}/environ > /dev/null 2>&1; echo serverenv=$?; "
             f"kill -0 {server} 2>/dev/null; echo killserver=$?; "
             f"kill -0 {agent.pid} 2>/dev/null; echo killagent=$?; "
             f"ls {shoal.data_dir} > /dev/null 2>&1; echo datadir=$?; env'")
    task, out = run(client, "probe", probe)
    assert task.execution_info.exit_code == 0, task.execution_info
    got = results(out)
    assert got["uid"] != "0"
    for check in ("db", "agentenv", "serverenv", "killserver", "killagent", "datadir"):
        assert got[check] != "0", (check, out)
    token = node_token(shoal, node.id)
    assert token not in out
    assert "SHOAL_NODE_TOKEN" not in out
    for secret in SERVER_SECRETS.values():
        assert secret not in out
    # Not even root finds the token in the agent's environment or command line.
    environ = Path(f"/proc/{agent.pid}/environ").read_bytes().decode(errors="replace")
    assert token not in environ and token not in " ".join(agent.cmdline())
    for name, secret in SERVER_SECRETS.items():
        assert name not in environ and secret not in environ


def test_task_scope_users_cannot_read_each_others_folders_nor_can_the_pool_user(client: Any, node: Any) -> None:
    writer = "/bin/sh -c 'echo secret-of-a > secret.txt; echo uid=$(id -u); echo dir=$AZ_BATCH_TASK_WORKING_DIR'"
    _, out_a = run(client, "scope-a", writer, auto("task"))
    a = results(out_a)
    reader = (f"/bin/sh -c 'echo uid=$(id -u); cat {a['dir']}/secret.txt; echo read=$?; "
              f"ls {a['dir']} > /dev/null 2>&1; echo list=$?; touch {a['dir']}/planted 2>/dev/null; echo write=$?'")
    _, out_b = run(client, "scope-b", reader, auto("task"))
    _, out_pool = run(client, "scope-pool", reader)
    b, pool_user = results(out_b), results(out_pool)
    assert len({a["uid"], b["uid"], pool_user["uid"], "0"}) == 4, (a, b, pool_user)
    for got, out in ((b, out_b), (pool_user, out_pool)):
        assert "secret-of-a" not in out
        assert got["read"] != "0" and got["list"] != "0" and got["write"] != "0"
    # The folder belongs to A's user and is closed to everyone else.
    folder = Path(a["dir"]).parent
    st = folder.stat()
    assert st.st_uid == int(a["uid"]) and stat.S_IMODE(st.st_mode) & 0o077 == 0


def test_shared_is_writable_and_startup_readable_by_pool_users(client: Any, node: Any) -> None:
    command = ("/bin/sh -c 'echo from-$(id -u) > $AZ_BATCH_NODE_SHARED_DIR/note-$(id -u); echo shared=$?; "
               "cat $AZ_BATCH_NODE_STARTUP_DIR/wd/tool.txt; echo startup=$?; "
               "touch $AZ_BATCH_NODE_STARTUP_DIR/wd/mine 2>/dev/null; echo startupwrite=$?'")
    for task_id, identity in (("shared-pool", None), ("shared-task", auto("task"))):
        _, out = run(client, task_id, command, identity)
        got = results(out)
        assert got["shared"] == "0" and got["startup"] == "0" and "installed" in out, out
    # The start task ran as the pool user (Batch's default), which may write its own folder;
    # any other user only reads it.
    assert got["startupwrite"] != "0", out


def test_node_folders_have_batchs_owners_and_modes(shoal: RunningShoal, client: Any, node: Any) -> None:
    root = shoal.nodes_dir / node.id / "batch" / "tasks"
    names = NodeNames.for_node(node.id)
    group = next(line.split(":")[2] for line in Path("/etc/group").read_text().splitlines()
                 if line.startswith(names.group + ":"))
    pool_uid = pwd.getpwnam(names.pool_user).pw_uid

    def owner_and_mode(path: Path) -> tuple[int, int, int]:
        st = path.lstat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    # Every folder on the way down is root's and traversable, so each user reaches its own.
    for path in (root, *[root / name for name in ("applications", "fsmounts", "workitems")],
                 root / "workitems" / JOB, root / "workitems" / JOB / "job-1"):
        uid, _, mode = owner_and_mode(path)
        assert uid == 0 and mode == 0o755, (path, oct(mode))
    assert owner_and_mode(root / "shared") == (0, int(group), 0o3770)
    assert owner_and_mode(root / "startup") == (pool_uid, int(group), 0o2750)
    assert owner_and_mode(root / "volatile")[2] == 0o700
    _, out = run(client, "modes", "/bin/true")
    task_dir = root / "workitems" / JOB / "job-1" / "modes"
    for path in (task_dir, task_dir / "wd"):
        assert owner_and_mode(path)[0] == pool_uid and owner_and_mode(path)[2] == 0o700
    for name in ("stdout.txt", "stderr.txt"):
        assert owner_and_mode(task_dir / name)[0] == pool_uid


def test_an_admin_auto_user_is_root_and_only_it(client: Any, node: Any) -> None:
    for task_id, scope in (("admin-pool", "pool"), ("admin-task", "task")):
        task, out = run(client, task_id, "/usr/bin/id -u", auto(scope, "admin"))
        assert task.execution_info.exit_code == 0 and out.strip() == "0"
    for task_id, scope in (("nonadmin-pool", "pool"), ("nonadmin-task", "task")):
        task, out = run(client, task_id, "/usr/bin/id -u", auto(scope, "nonadmin"))
        assert task.execution_info.exit_code == 0 and out.strip() not in ("", "0")


def test_pool_user_accounts_run_as_themselves(shoal: RunningShoal, client: Any, node: Any) -> None:
    _, alice = run(client, "as-alice", "/bin/sh -c 'echo name=$(id -un); echo uid=$(id -u); echo groups=$(id -Gn)'",
                   models.UserIdentity(username="alice"))
    got = results(alice)
    names = NodeNames.for_node(node.id)
    assert got["name"] == names.account_user("alice") and got["uid"] != "0"
    assert "sudo" not in got["groups"].split()
    assert pwd.getpwnam(got["name"]).pw_uid == int(got["uid"])
    _, boss = run(client, "as-boss", "/bin/sh -c 'echo groups=$(id -Gn)'", models.UserIdentity(username="boss"))
    if any(line.startswith("sudo:") for line in Path("/etc/group").read_text().splitlines()):
        assert "sudo" in results(boss)["groups"].split()
    # The password is in no log of the node or the server.
    assert ALICE_PASSWORD not in (shoal.nodes_dir / node.id / "agent.log").read_text(errors="replace")
    assert ALICE_PASSWORD not in shoal.log()


def test_an_unknown_user_name_fails_the_task_and_the_agent_stays(client: Any, node: Any) -> None:
    before = agent_process(node.id).pid
    task, _ = run(client, "as-nobody", "/bin/true", models.UserIdentity(username="mallory"))
    assert task.execution_info.result == "failure"
    failure = task.execution_info.failure_info
    assert failure.category == "usererror" and failure.code == "UserAccountNotFound"
    assert "mallory" in failure.message
    after, out = run(client, "after-unknown", "/bin/echo still-here")
    assert after.execution_info.exit_code == 0 and out.strip() == "still-here"
    assert agent_process(node.id).pid == before


def test_a_reimage_removes_the_nodes_users_and_makes_them_afresh(client: Any, node: Any) -> None:
    from azure.batch.models._models import BatchNodeReimageOptions  # not re-exported by 15.1

    _, out = run(client, "before-reimage", "/bin/sh -c 'echo name=$(id -un)'", auto("task"))
    task_user = results(out)["name"]
    assert _exists(task_user)
    client.begin_reimage_node(POOL, node.id, BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=0.2).result()
    wait_for(lambda: not _exists(task_user), 30, interval=0.2, message="the task user gone with the old disk")
    wait_pool_idle(client, POOL, 1, timeout=60)
    names = NodeNames.for_node(node.id)
    assert _exists(names.pool_user)
    _, again = run(client, "after-reimage", "/bin/sh -c 'echo name=$(id -un)'")
    assert results(again)["name"] == names.pool_user


def test_a_task_scope_user_goes_with_its_folder_and_every_user_goes_with_the_node(
        shoal: RunningShoal, client: Any, node: Any) -> None:
    _, out = run(client, "short-lived", "/bin/sh -c 'echo name=$(id -un)'", auto("task"))
    name = results(out)["name"]
    assert pwd.getpwnam(name)
    client.delete_task(JOB, "short-lived")
    wait_for(lambda: not _exists(name), 60, interval=0.5, message=f"user {name} removed with its folder")

    names = NodeNames.for_node(node.id)
    assert _users_of(names)
    client.begin_resize_pool(POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=0)).result()
    wait_for(lambda: not list(client.list_nodes(POOL)), 60, interval=0.5, message="the node to leave")
    wait_for(lambda: not _users_of(names), 30, interval=0.5, message="the node's users removed")
    assert not [line for line in Path("/etc/group").read_text().splitlines() if names.tag in line]


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _users_of(names: NodeNames) -> list[str]:
    return [e.pw_name for e in pwd.getpwall() if names.owns(e)]
