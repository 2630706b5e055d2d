"""Node users and SSH (issue 10 item 3): ComputeNode_AddUser / UpdateUser / DeleteUser and
remote login settings through the SDK, and real logins with asyncssh and the OpenSSH client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from azure.batch import models

from tests.acceptance import rest
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="node users are real Linux users: the agent needs root")

POOL = "logins"
HELLO = "/bin/sh -c 'echo hello-from-start > $AZ_BATCH_NODE_SHARED_DIR/hello.txt'"


@pytest.fixture(scope="module")
def node(client: Any) -> Any:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1,
                                    start_task=models.BatchStartTask(command_line=HELLO, wait_for_success=True)))
    return wait_pool_idle(client, POOL, 1)[0]


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


def _login(client: Any, node: Any) -> tuple[str, int]:
    settings = client.get_node_remote_login_settings(POOL, node.id)
    return settings.remote_login_ip_address, settings.remote_login_port


def _run(host: str, port: int, user: str, command: str, *, password: str | None = None,
         key: Path | None = None) -> asyncssh.SSHCompletedProcess:
    async def go() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(host, port, username=user, password=password,
                                    client_keys=[str(key)] if key else [], known_hosts=None,
                                    agent_path=None, preferred_auth="publickey,password", login_timeout=10) as conn:
            return await conn.run(command, timeout=20)

    return asyncio.run(go())


def _refused(host: str, port: int, user: str, **credentials: Any) -> bool:
    try:
        _run(host, port, user, "true", **credentials)
    except asyncssh.PermissionDenied:
        return True
    return False


def test_a_node_user_logs_in_with_a_password_into_the_node_root_with_its_environment(client, node):
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="alice", password="s3cret-pw"))
    host, port = _login(client, node)
    assert host == "127.0.0.1" and port > 0
    done = _run(host, port, "alice", "pwd; id -u; echo $AZ_BATCH_NODE_ID; cat shared/hello.txt; ls",
                password="s3cret-pw")
    lines = str(done.stdout).split("\n")
    root = lines[0]
    assert root.endswith("/batch/tasks"), lines
    assert lines[1] != "0"  # a user of its own, never root
    assert lines[2] == node.id
    assert lines[3] == "hello-from-start"
    assert {"shared", "startup", "workitems"} <= set(lines[4:])
    assert done.exit_status == 0
    assert _refused(host, port, "alice", password="wrong")
    assert _refused(host, port, "nobody", password="s3cret-pw")
    assert _run(host, port, "alice", "exit 7", password="s3cret-pw").exit_status == 7
    # The user is no administrator: it cannot write where root alone may.
    assert _run(host, port, "alice", "touch /etc/shoal-was-here", password="s3cret-pw").exit_status != 0
    assert not Path("/etc/shoal-was-here").exists()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_the_openssh_client_logs_in_with_a_key_and_is_refused_once_the_user_is_deleted(client, node, key_pair):
    key, public = key_pair
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="bob", ssh_public_key=public))
    host, port = _login(client, node)
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", f"bob@{host}"]
    done = subprocess.run([*argv, "cat shared/hello.txt && echo $AZ_BATCH_POOL_ID"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello-from-start", POOL]
    client.delete_node_user(POOL, node.id, "bob")
    again = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    assert again.returncode == 255 and "Permission denied" in again.stderr
    assert error_of(lambda: client.delete_node_user(POOL, node.id, "bob")) == (404, "NodeUserNotFound")


def test_replacing_a_user_drops_what_the_update_leaves_out(client, node, key_pair):
    key, public = key_pair
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(
        name="carol", password="first-pw", ssh_public_key=public))
    host, port = _login(client, node)
    assert _run(host, port, "carol", "true", key=key).exit_status == 0
    client.replace_node_user(POOL, node.id, "carol", models.BatchNodeUserReplaceOptions(password="second-pw"))
    assert _refused(host, port, "carol", password="first-pw")
    assert _refused(host, port, "carol", key=key)  # the key was left out, so it is gone
    assert _run(host, port, "carol", "true", password="second-pw").exit_status == 0
    client.delete_node_user(POOL, node.id, "carol")


def test_an_expired_user_is_refused(client, node):
    soon = datetime.now(UTC) + timedelta(seconds=3)
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(
        name="dave", password="dave-pw", expiry_time=soon))
    host, port = _login(client, node)
    assert _run(host, port, "dave", "true", password="dave-pw").exit_status == 0
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.5)
    assert _refused(host, port, "dave", password="dave-pw")
    client.delete_node_user(POOL, node.id, "dave")


def test_deleting_a_user_ends_its_sessions(client, node):
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="erin", password="erin-pw"))
    host, port = _login(client, node)

    async def session() -> float:
        async with asyncssh.connect(host, port, username="erin", password="erin-pw", known_hosts=None,
                                    agent_path=None, client_keys=[]) as conn:
            started = time.monotonic()
            process = await conn.create_process("sleep 60")
            await asyncio.sleep(0.5)
            await asyncio.to_thread(client.delete_node_user, POOL, node.id, "erin")
            await asyncio.wait_for(process.wait_closed(), 15)
            return time.monotonic() - started

    assert asyncio.run(session()) < 15


def test_users_survive_a_reboot_but_not_a_reimage(client, node):
    from azure.batch.models._models import BatchNodeRebootOptions, BatchNodeReimageOptions

    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="frank", password="frank-pw"))
    client.begin_reboot_node(POOL, node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                             polling_interval=0.2).result()
    wait_for(lambda: client.get_node(POOL, node.id).state == "idle", 30, message="node back after reboot")
    host, port = _login(client, node)
    wait_for(lambda: not _refused(host, port, "frank", password="frank-pw"), 10, message="login after reboot")
    client.begin_reimage_node(POOL, node.id, BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=0.2).result()
    wait_for(lambda: client.get_node(POOL, node.id).state == "idle", 30, message="node back after reimage")
    assert error_of(lambda: client.delete_node_user(POOL, node.id, "frank")) == (404, "NodeUserNotFound")
    assert _refused(host, port, "frank", password="frank-pw")


@pytest.mark.parametrize("body, code", [
    ({"name": "dup", "password": "x"}, "NodeUserExists"),
    ({"name": "bad:name", "password": "x"}, "InvalidPropertyValue"),
    ({"name": "", "password": "x"}, "InvalidPropertyValue"),
    ({"name": "x" * 21, "password": "x"}, "InvalidPropertyValue"),
    ({"name": 7, "password": "x"}, "InvalidPropertyValue"),
    ({"password": "x"}, "MissingRequiredProperty"),
    ({"name": "keyed", "sshPublicKey": "ssh-ed25519 not-a-key"}, "InvalidPropertyValue"),
    ({"name": "keyed", "sshPublicKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "InvalidPropertyValue"),
    ({"name": "old", "password": "x", "expiryTime": "2001-01-01T00:00:00Z"}, "InvalidPropertyValue"),
    ({"name": "old", "password": "x", "expiryTime": "tomorrow"}, "InvalidPropertyValue"),
    ({"name": "nul\u0000", "password": "x"}, "InvalidPropertyValue"),
    ({"name": "extra", "password": "x", "shell": "/bin/zsh"}, "InvalidRequestBody"),
    ({"name": "pw", "password": "x" * 300}, "InvalidPropertyValue"),
])
def test_bad_users_are_refused_with_azure_errors(shoal, client, node, body, code):
    if code == "NodeUserExists":
        client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="dup", password="x"))
    response = rest.call(shoal, "POST", f"/pools/{POOL}/nodes/{node.id}/users", body=json.dumps(body).encode())
    rest.assert_batch_error(response, 409 if code == "NodeUserExists" else 400, code)
    if code == "NodeUserExists":
        client.delete_node_user(POOL, node.id, "dup")


def test_users_of_missing_nodes_and_pools_are_404(client, node):
    options = models.BatchNodeUserCreateOptions(name="ghost", password="x")
    assert error_of(lambda: client.create_node_user(POOL, "tvmps_nope_d", options)) == (404, "NodeNotFound")
    assert error_of(lambda: client.create_node_user("no-such-pool", node.id, options)) == (404, "PoolNotFound")
    assert error_of(lambda: client.replace_node_user(POOL, node.id, "ghost", models.BatchNodeUserReplaceOptions(
        password="y"))) == (404, "NodeUserNotFound")
    assert error_of(lambda: client.get_node_remote_login_settings(POOL, "tvmps_nope_d")) == (404, "NodeNotFound")


def test_a_password_is_never_stored_or_shown(shoal, client, node):
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="secretive", password="hunter2-pw"))
    raw = b"".join(p.read_bytes() for p in Path(shoal.data_dir).rglob("*") if p.is_file() and p.stat().st_size < 2**26)
    assert b"hunter2-pw" not in raw
    assert "hunter2-pw" not in shoal.log()
    client.delete_node_user(POOL, node.id, "secretive")
