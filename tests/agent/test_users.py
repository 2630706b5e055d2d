"""Real users for a node's tasks: names, creation, reuse, removal and contention (as root)."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.identity import ACCOUNT, AGENT, POOL, TASK, IdentityError, parse_identity
from shoal.agent.users import (
    MAX_LINUX_NAME,
    AccountSpec,
    NodeNames,
    NodeUsers,
    UserProvisionError,
    remove_node_users,
    remove_users_under,
)
from tests.agent.standin import node_base

LINUX_NAME = re.compile(r"^[a-z_][a-z0-9_.-]*$")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating users needs root")


# ---- names and identities (pure) ------------------------------------------------------------


def test_names_are_short_portable_and_distinct_per_node() -> None:
    a, b = NodeNames.for_node("tvmps_" + "a" * 64 + "_d"), NodeNames.for_node("tvmps_" + "b" * 64 + "_d")
    for names in (a, b):
        every = [names.group, names.pool_user, names.task_user("job/task"), names.account_user("x" * 20),
                 names.account_user("Ünïcode Name")]
        assert all(len(n) <= MAX_LINUX_NAME and LINUX_NAME.match(n) for n in every), every
        assert len(set(every)) == len(every)
    assert a.pool_user != b.pool_user and a.group != b.group
    assert a.task_user("j/t1") != a.task_user("j/t2")
    # The same node always derives the same names: a restarted agent finds its users again.
    assert NodeNames.for_node("n1") == NodeNames.for_node("n1")
    assert a.account_user("alice") == f"alice_{a.tag}"
    assert a.account_user("Alice") != a.account_user("alice")


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels):
        value = {"autoUser": value}
    return value


@pytest.mark.parametrize(("value", "kind"), [
    (None, POOL), ({}, POOL), ({"autoUser": {}}, POOL),
    ({"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}, POOL),
    ({"autoUser": {"scope": "task"}}, TASK),
    ({"autoUser": {"scope": "task", "elevationLevel": "admin"}}, AGENT),
    ({"autoUser": {"elevationLevel": "admin"}}, AGENT),
    ({"username": "alice"}, ACCOUNT),
    ({"userName": "alice"}, ACCOUNT),
    # Nesting the agent does not read is not walked: no recursion, whatever the depth.
    (_deep(5000), POOL),
])
def test_identities(value: object, kind: str) -> None:
    assert parse_identity(value).kind == kind


@pytest.mark.parametrize("value", [
    "alice", [], {"username": "a\x00b"}, {"username": 7}, {"userName": ""}, {"userName": "x" * 5000},
    {"userName": "a\nroot"}, {"autoUser": "pool"}, {"autoUser": {"scope": "node"}},
    {"autoUser": {"elevationLevel": ["admin"]}}, {"userName": _deep(900)},
])
def test_bad_identities_are_identity_errors(value: object) -> None:
    with pytest.raises(IdentityError) as caught:
        parse_identity(value)
    assert caught.value.code == "InvalidUserIdentity" and len(caught.value.message) < 200


@pytest.mark.parametrize("raw", [
    {"name": "a", "linuxUserConfiguration": {"uid": 0}},
    {"name": "a", "linuxUserConfiguration": {"uid": 999}},
    {"name": "a", "linuxUserConfiguration": {"uid": 2**40}},
    {"name": "a", "linuxUserConfiguration": {"uid": "1500"}},
    {"name": "a", "linuxUserConfiguration": {"gid": True}},
    {"name": "a", "password": "x\nroot:owned"},
    {"name": "a", "elevationLevel": "root"},
    {"name": "a\x00"},
    "alice",
])
def test_bad_accounts_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        AccountSpec.parse(raw)


# ---- real users (root) ----------------------------------------------------------------------


@pytest.fixture
def node() -> Iterator[tuple[NodeUsers, Path, str]]:
    node_id = f"tvmps_test{uuid.uuid4().hex}_d"
    with node_base() as base:
        users = NodeUsers.for_node(node_id, base / "home")
        try:
            yield users, base, node_id
        finally:
            remove_node_users(node_id)


def _shoal_users(names: NodeNames) -> list[str]:
    return sorted(e.pw_name for e in pwd.getpwall() if names.owns(e))


@needs_root
def test_provision_creates_the_pool_user_once_and_reuses_it(node: tuple[NodeUsers, Path, str]) -> None:
    users, base, _ = node
    users.provision([])
    pool_user = users.ensure_pool_user()
    assert pool_user.pw_uid >= 1000
    assert pool_user.pw_gid == grp.getgrnam(users.names.group).gr_gid
    home = Path(pool_user.pw_dir)
    assert home.parent == base / "home"
    st = home.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pool_user.pw_uid, 0o700)
    # A second agent process of the same node (restart) adopts the same user: same uid.
    again = NodeUsers(users.names, base / "home")
    again.provision([])
    assert again.ensure_pool_user().pw_uid == pool_user.pw_uid
    assert _shoal_users(users.names) == [users.names.pool_user]


@needs_root
def test_named_accounts_become_users_with_their_ids_groups_and_password(node: tuple[NodeUsers, Path, str]) -> None:
    users, _, _ = node
    uid = _free_id()
    users.provision([
        {"name": "alice", "password": "s3cret:with colon", "elevationLevel": "admin",
         "linuxUserConfiguration": {"uid": uid, "gid": uid, "sshPrivateKey": "KEY"}},
        {"name": "bob"},
        {"name": "evil", "linuxUserConfiguration": {"uid": 0}},
        {"name": "thief", "linuxUserConfiguration": {"uid": _existing_system_uid()}},
    ])
    alice = users.accounts["alice"]
    assert (alice.pw_uid, alice.pw_gid) == (uid, uid)
    groups = {g.gr_name for g in grp.getgrall() if alice.pw_name in g.gr_mem}
    assert users.names.group in groups
    if any(g.gr_name == "sudo" for g in grp.getgrall()):
        assert "sudo" in groups
    shadow = next(line for line in Path("/etc/shadow").read_text().splitlines()
                  if line.startswith(alice.pw_name + ":"))
    assert shadow.split(":")[1].startswith("$"), "the password was set"
    key = Path(alice.pw_dir) / ".ssh/id_rsa"
    assert key.read_text() == "KEY\n" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_uid == uid
    bob = users.accounts["bob"]
    assert bob.pw_gid == users.gid
    assert not any(bob.pw_name in g.gr_mem for g in grp.getgrall() if g.gr_name in ("sudo", "wheel"))
    # Refused accounts are reported, never created, and do not stop the others.
    assert set(users.account_errors) == {"evil", "thief"}
    assert "evil" not in users.accounts and "thief" not in users.accounts
    assert all(e.pw_uid != 0 for e in pwd.getpwall() if users.names.owns(e))


@needs_root
def test_task_users_are_fresh_and_go_with_their_processes(node: tuple[NodeUsers, Path, str]) -> None:
    users, _, _ = node
    users.provision([])
    began = time.perf_counter()
    first = users.ensure_task_user("job/t1")
    created_s = time.perf_counter() - began
    second = users.ensure_task_user("job/t2")
    assert first.pw_uid != second.pw_uid != users.ensure_pool_user().pw_uid
    assert users.ensure_task_user("job/t1") == first  # cached, not created again
    leftover = subprocess.Popen(["sleep", "60"], user=first.pw_uid, group=first.pw_gid)
    try:
        began = time.perf_counter()
        users.remove_task_user("job/t1")
        removed_s = time.perf_counter() - began
        assert leftover.wait(timeout=5) != 0, "a process of a removed user must not outlive it"
    finally:
        if leftover.poll() is None:
            leftover.kill()
    with pytest.raises(KeyError):
        pwd.getpwnam(first.pw_name)
    assert not Path(first.pw_dir).exists()
    assert pwd.getpwnam(second.pw_name)
    print(f"task user: created in {created_s * 1000:.1f} ms, removed in {removed_s * 1000:.1f} ms")
    assert created_s < 2 and removed_s < 2


@needs_root
def test_remove_node_users_needs_no_cache(node: tuple[NodeUsers, Path, str]) -> None:
    users, _, node_id = node
    users.provision([{"name": "carol", "linuxUserConfiguration": {"uid": _free_id(), "gid": _free_id() + 1}}])
    users.ensure_task_user("job/t")
    assert len(_shoal_users(users.names)) == 3
    # A different process (the provider) knows nothing but the node id.
    remove_node_users(node_id)
    assert _shoal_users(users.names) == []
    assert not [g for g in grp.getgrall() if g.gr_name.endswith(users.names.tag)]


@needs_root
def test_remove_users_under_a_nodes_dir_takes_only_its_nodes(node: tuple[NodeUsers, Path, str]) -> None:
    users, base, _ = node
    users.provision([{"name": "dave"}])
    users.ensure_task_user("job/t")
    with node_base() as elsewhere:
        other = NodeUsers.for_node(f"tvmps_other{uuid.uuid4().hex}_d", elsewhere / "home")
        try:
            other.provision([])
            assert remove_users_under(base) == 3
            assert _shoal_users(users.names) == []
            assert _shoal_users(other.names) == [other.names.pool_user]
        finally:
            other.remove_all()


@needs_root
def test_a_name_taken_by_someone_else_is_not_adopted(node: tuple[NodeUsers, Path, str]) -> None:
    users, _, _ = node
    subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", users.names.pool_user], check=True)
    try:
        with pytest.raises(UserProvisionError, match="did not create"):
            users.ensure_pool_user()
    finally:
        subprocess.run(["userdel", users.names.pool_user], check=True)


@needs_root
def test_creation_waits_for_a_held_passwd_lock_and_parallel_nodes_all_succeed() -> None:
    lock = Path("/etc/passwd.lock")
    holder = subprocess.Popen(["sleep", "30"])
    node_ids = [f"tvmps_lock{uuid.uuid4().hex}_d" for _ in range(4)]
    try:
        # shadow's own lock, held by a live process as a concurrent useradd would hold it.
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, str(holder.pid).encode())
        os.close(fd)
        releaser = threading.Timer(0.5, lambda: lock.unlink(missing_ok=True))
        releaser.start()
        began = time.monotonic()
        results: dict[str, int] = {}

        def provision(node_id: str) -> None:
            results[node_id] = NodeUsers.for_node(node_id, None).ensure_pool_user().pw_uid

        threads = [threading.Thread(target=provision, args=(n,)) for n in node_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        releaser.join()
        assert time.monotonic() - began >= 0.5
        assert len(results) == 4 and len(set(results.values())) == 4
    finally:
        lock.unlink(missing_ok=True)
        holder.kill()
        holder.wait()
        for node_id in node_ids:
            remove_node_users(node_id)


def _free_id() -> int:
    used = {e.pw_uid for e in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    candidate = 42000 + (uuid.uuid4().int % 5000) * 2
    while candidate in used or candidate + 1 in used:
        candidate += 2
    return candidate


def _existing_system_uid() -> int:
    # A daemon's uid in the account range, or a made-up holder if the host has none.
    taken = [e.pw_uid for e in pwd.getpwall() if e.pw_uid >= 1000 and not e.pw_gecos.startswith("shoal node")]
    return taken[0] if taken else 65534


def test_a_missing_account_tool_is_a_clear_provisioning_error() -> None:
    from shoal.agent.users import _run

    with pytest.raises(UserProvisionError, match="not installed"):
        _run(["shoal-no-such-useradd"])
