"""Real Linux users for a node's tasks, created when the agent runs as root (semantics §5.5).

Several local nodes share one machine, so every name carries a tag derived from the node id
(``shl_<tag>``), and every account's GECOS field says which node made it (``shoal node <tag> …``):
the node's users can be found and removed even by a process that never created them (the local
provider, after an agent was killed).

What a node gets:

- a group ``shl_<tag>`` holding every user of the node (it owns ``shared`` and ``startup``);
- ``shl_<tag>_pool``: the pool-scope non-admin auto user, created once and reused;
- ``shl_<tag>_t<hash>``: a task-scope auto user per task, removed with the task's folder;
- one user per pool ``userAccounts`` entry, named ``<name>_<tag>`` (or ``u<hash>_<tag>`` when the
  Batch name is not a portable Linux name), admin ones also in ``sudo``/``wheel``.

Every method here blocks (it runs ``useradd``, ``userdel``, ``groupadd``…): call them from a
worker thread. ``useradd`` fails when another process holds the ``/etc/passwd`` lock, so calls
are serialised across agents of this host by a lock file and retried when contended anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("shoal.agent.users")

TAG_HEX_CHARS = 10
MARKER = "shoal node"
# Linux user names are at most 32 characters on every libc we care about.
MAX_LINUX_NAME = 32
# Ids below this belong to the system (daemons, root's group); a pool account may never get one.
MIN_ACCOUNT_ID = 1000
MAX_ACCOUNT_ID = 2**31 - 2
MAX_PASSWORD_CHARS = 256
MAX_SSH_KEY_BYTES = 16 * 1024
ADMIN_GROUPS = ("sudo", "wheel")
HOST_LOCK_PATHS = (Path("/run/lock/shoal-users.lock"), Path("/run/shoal-users.lock"))
COMMAND_TIMEOUT_S = 60.0
LOCK_RETRY_DEADLINE_S = 60.0
# useradd/groupadd: the name is already in use; userdel/groupdel: no such name.
_EXISTS = 9
_MISSING = 6
# userdel: the user still runs a process.
_BUSY = 8
_PORTABLE_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,19}$")
_SHOAL_GROUP = re.compile(rf"_[0-9a-f]{{{TAG_HEX_CHARS}}}$")
_thread_lock = threading.Lock()
_host_lock_fd: int | None = None


class UserProvisionError(Exception):
    """A user or group could not be created (or taken over) on this host."""


def _hex(text: str, chars: int = TAG_HEX_CHARS) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:chars]


@dataclass(frozen=True)
class NodeNames:
    """Every Linux name a node uses, derived from its id alone."""

    tag: str

    @classmethod
    def for_node(cls, node_id: str) -> NodeNames:
        return cls(_hex(node_id))

    @property
    def group(self) -> str:
        return f"shl_{self.tag}"

    @property
    def pool_user(self) -> str:
        return f"shl_{self.tag}_pool"

    def task_user(self, scope_key: str) -> str:
        return f"shl_{self.tag}_t{_hex(scope_key)}"

    def account_user(self, name: str) -> str:
        if _PORTABLE_NAME.match(name):
            return f"{name}_{self.tag}"
        return f"u{_hex(name)}_{self.tag}"

    def marker(self, role: str) -> str:
        return f"{MARKER} {self.tag} {role}"

    def owns(self, entry: pwd.struct_passwd) -> bool:
        return entry.pw_gecos.startswith(f"{MARKER} {self.tag} ")


def account_role(name: str) -> str:
    return f"account {_hex(name)}"


def login_role(name: str) -> str:
    return f"login {_hex(name)}"


@dataclass(frozen=True)
class AccountSpec:
    """One pool ``userAccounts`` entry, checked."""

    name: str
    admin: bool
    password: str | None = None
    uid: int | None = None
    gid: int | None = None
    ssh_private_key: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> AccountSpec:
        from shoal.agent.identity import check_user_name

        if not isinstance(raw, dict):
            raise ValueError("a user account must be an object")
        name = check_user_name(raw.get("name"))
        elevation = raw.get("elevationLevel") or "nonadmin"
        if not isinstance(elevation, str) or elevation.lower() not in ("admin", "nonadmin"):
            raise ValueError("elevationLevel must be admin or nonadmin")
        password = raw.get("password")
        if password is not None:
            if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
                raise ValueError("the password must be a string of at most 256 characters")
            if any(c in password for c in "\n\r\x00"):
                raise ValueError("the password contains a line break or NUL")
        linux = raw.get("linuxUserConfiguration") or {}
        if not isinstance(linux, dict):
            raise ValueError("linuxUserConfiguration must be an object")
        uid, gid = _account_id(linux, "uid"), _account_id(linux, "gid")
        key = linux.get("sshPrivateKey")
        if key is not None and (not isinstance(key, str) or len(key.encode()) > MAX_SSH_KEY_BYTES
                                or "\x00" in key):
            raise ValueError("sshPrivateKey must be a string of at most 16 KiB without NUL")
        return cls(name, elevation.lower() == "admin", password or None, uid, gid, key or None)


def _account_id(linux: dict[str, Any], key: str) -> int | None:
    value = linux.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"linuxUserConfiguration.{key} must be an integer")
    if not MIN_ACCOUNT_ID <= value <= MAX_ACCOUNT_ID:
        raise ValueError(f"linuxUserConfiguration.{key} {value} is outside {MIN_ACCOUNT_ID}..{MAX_ACCOUNT_ID}")
    return value


class NodeUsers:
    """The users of one node, with what exists cached. Blocking: call from a worker thread."""

    def __init__(self, names: NodeNames, home_base: Path | None) -> None:
        self.names = names
        self.home_base = home_base
        self.gid: int | None = None
        self.pool_user: pwd.struct_passwd | None = None
        self.accounts: dict[str, pwd.struct_passwd] = {}
        self.account_errors: dict[str, str] = {}
        self.task_users: dict[str, pwd.struct_passwd] = {}

    @classmethod
    def for_node(cls, node_id: str, home_base: Path | None) -> NodeUsers:
        return cls(NodeNames.for_node(node_id), home_base)

    # ---- creation ------------------------------------------------------------------------------

    def provision(self, accounts: Any) -> None:
        """At every hello: the node group, the pool auto user and the pool's named accounts."""
        self.ensure_group()
        self.ensure_pool_user()
        self._adopt_task_users()
        self.account_errors.clear()
        for raw in accounts if isinstance(accounts, list) else ():
            name = raw.get("name") if isinstance(raw, dict) else None
            label = name if isinstance(name, str) else "?"
            try:
                spec = AccountSpec.parse(raw)
                self.accounts[spec.name] = self._ensure_account(spec)
            except (ValueError, UserProvisionError, OSError) as exc:
                self.account_errors[label] = str(exc)
                log.error("cannot create pool user account %r: %s", label, exc)

    def ensure_group(self) -> int:
        if self.gid is None:
            name = self.names.group
            try:
                self.gid = grp.getgrnam(name).gr_gid
            except KeyError:
                _run(["groupadd", name], ok=(_EXISTS,))
                self.gid = grp.getgrnam(name).gr_gid
        return self.gid

    def ensure_pool_user(self) -> pwd.struct_passwd:
        if self.pool_user is None:
            self.pool_user = self._ensure_user(self.names.pool_user, "pool")
        return self.pool_user

    def ensure_task_user(self, scope_key: str) -> pwd.struct_passwd:
        user = self.task_users.get(scope_key)
        if user is None:
            user = self._ensure_user(self.names.task_user(scope_key), f"task {scope_key}")
            self.task_users[scope_key] = user
        return user

    def _ensure_account(self, spec: AccountSpec) -> pwd.struct_passwd:
        linux_name = self.names.account_user(spec.name)
        role = account_role(spec.name)
        groups = [g for g in ADMIN_GROUPS[:] if _group_exists(g)][:1] if spec.admin else []
        primary: str | None = None
        if spec.gid is not None:
            primary = self._ensure_account_group(linux_name, spec.gid)
        if spec.uid is not None:
            _check_uid_free_for(spec.uid, role)
        user = self._ensure_user(linux_name, role, uid=spec.uid, primary_group=primary, extra_groups=groups)
        if spec.password is not None:
            _run(["chpasswd"], stdin=f"{linux_name}:{spec.password}\n")
        if spec.ssh_private_key is not None:
            _install_ssh_key(user, spec.ssh_private_key)
        return user

    def _ensure_account_group(self, name: str, gid: int) -> str:
        with contextlib.suppress(KeyError):
            holder = grp.getgrgid(gid)
            if holder.gr_name == name:
                return name
            if not _SHOAL_GROUP.search(holder.gr_name):
                raise UserProvisionError(f"gid {gid} belongs to group {holder.gr_name!r}, not to Shoal")
        _run(["groupadd", "-o", "-g", str(gid), name], ok=(_EXISTS,))
        return name

    def _ensure_user(self, name: str, role: str, *, uid: int | None = None, primary_group: str | None = None,
                     extra_groups: list[str] | None = None) -> pwd.struct_passwd:
        existing = _lookup(name)
        if existing is not None:
            return self._adopt(existing)
        group = self.names.group
        self.ensure_group()
        home = self._home_of(name)
        supplementary = [group] if primary_group else []
        supplementary += extra_groups or []
        argv = ["useradd", "-N", "-g", primary_group or group, "-M", "-d", home, "-s", _shell(),
                "-c", self.names.marker(role), "-l", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]
        if supplementary:
            argv += ["-G", ",".join(supplementary)]
        if uid is not None:
            argv += ["-u", str(uid), "-o"]
        _run([*argv, name], ok=(_EXISTS,))
        created = _lookup(name)
        if created is None:
            raise UserProvisionError(f"useradd reported success but {name!r} does not exist")
        self._adopt(created)
        self._make_home(created)
        return created

    def _adopt(self, entry: pwd.struct_passwd) -> pwd.struct_passwd:
        if not self.names.owns(entry):
            raise UserProvisionError(f"the user name {entry.pw_name!r} is taken by a user Shoal did not create")
        return entry

    def _home_of(self, name: str) -> str:
        return str(self.home_base / name) if self.home_base is not None else "/nonexistent"

    def _make_home(self, user: pwd.struct_passwd) -> None:
        if self.home_base is None:
            return
        self.home_base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home_base, 0o755)
        home = Path(user.pw_dir)
        with contextlib.suppress(FileExistsError):
            home.mkdir(mode=0o700)
        # chown of a path we just made inside a root-owned folder: nobody could swap it for a link.
        os.chown(home, user.pw_uid, user.pw_gid, follow_symlinks=False)
        os.chmod(home, 0o700)

    def _adopt_task_users(self) -> None:
        """Task users made by an earlier agent process of this node are this node's to remove."""
        prefix = self.names.marker("task ")
        for entry in pwd.getpwall():
            if entry.pw_gecos.startswith(prefix):
                self.task_users.setdefault(entry.pw_gecos[len(prefix):], entry)

    def ensure_login_user(self, name: str, admin: bool) -> pwd.struct_passwd:
        """A node user (ComputeNode_AddUser), named as a pool account would be; admins also in
        sudo/wheel. Made once; an admin flag changed later only by deleting and adding again,
        as Batch's update cannot change it either."""
        groups = [g for g in ADMIN_GROUPS if _group_exists(g)][:1] if admin else []
        return self._ensure_user(self.names.account_user(name), login_role(name), extra_groups=groups)

    def remove_login_user(self, name: str) -> None:
        entry = _lookup(self.names.account_user(name))
        if entry is not None and entry.pw_gecos == self.names.marker(login_role(name)):
            _remove_users([entry], self.home_base)

    # ---- removal -------------------------------------------------------------------------------

    def remove_task_user(self, scope_key: str) -> None:
        user = self.task_users.pop(scope_key, None)
        if user is not None:
            _remove_users([user], self.home_base)

    def remove_all(self) -> int:
        """The node leaves or is reimaged: every user, group and home it made goes. Returns how
        many users went; raises the first failure after trying everything."""
        owned = [e for e in pwd.getpwall() if self.names.owns(e)]
        failures: list[Exception] = []
        try:
            _remove_users(owned, self.home_base)
        except UserProvisionError as exc:
            failures.append(exc)
        for entry in grp.getgrall():
            if entry.gr_name == self.names.group or entry.gr_name.endswith(f"_{self.names.tag}"):
                try:
                    _run(["groupdel", entry.gr_name], ok=(_MISSING,))
                except UserProvisionError as exc:
                    failures.append(exc)
        if self.home_base is not None:
            shutil.rmtree(self.home_base, ignore_errors=True)
        self.gid = None
        self.pool_user = None
        self.accounts.clear()
        self.task_users.clear()
        if failures:
            raise failures[0]
        return len(owned)


def remove_node_users(node_id: str) -> None:
    """Remove a node's users and groups without its agent (the agent was killed)."""
    if os.geteuid() != 0:
        return
    NodeUsers.for_node(node_id, None).remove_all()


def remove_users_under(directory: Path) -> int:
    """Remove the users and groups of every node whose folders live under ``directory`` (a
    nodes dir), for whoever throws those folders away without the nodes leaving (tests, an
    operator wiping a data dir). Returns how many users went."""
    if os.geteuid() != 0:
        return 0
    prefix = str(Path(directory).absolute()).rstrip("/") + "/"
    tags = {e.pw_gecos.split()[2] for e in pwd.getpwall()
            if e.pw_gecos.startswith(f"{MARKER} ") and e.pw_dir.startswith(prefix)}
    return sum(NodeUsers(NodeNames(tag), None).remove_all() for tag in sorted(tags))


def _remove_users(users: list[pwd.struct_passwd], home_base: Path | None) -> None:
    if not users:
        return
    # A leftover process of a removed uid would own whatever user gets that uid next.
    _kill_processes_of({u.pw_uid for u in users if u.pw_uid >= MIN_ACCOUNT_ID and _uid_is_ours(u.pw_uid, users)})
    for user in users:
        # -f costs tens of milliseconds; it is needed only when a process of the user lingers.
        if _run(["userdel", user.pw_name], ok=(_MISSING, _BUSY)) == _BUSY:
            _run(["userdel", "-f", user.pw_name], ok=(_MISSING,))
        home = Path(user.pw_dir)
        if home_base is not None and home.parent == home_base:
            shutil.rmtree(home, ignore_errors=True)


def _uid_is_ours(uid: int, users: list[pwd.struct_passwd]) -> bool:
    """A uid shared (``-o``) with a user outside ``users`` keeps its processes."""
    names = {u.pw_name for u in users}
    return all(e.pw_name in names for e in pwd.getpwall() if e.pw_uid == uid)


def _kill_processes_of(uids: set[int]) -> None:
    if not uids:
        return
    for _ in range(3):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid in uids and not _is_zombie(entry.path):
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if not found:
            return
        time.sleep(0.02)


def _is_zombie(proc_dir: str) -> bool:
    with open(f"{proc_dir}/stat", "rb") as f:
        # "pid (comm) S ...": the state follows the last ')' (comm may hold anything).
        return f.read().rpartition(b")")[2][:3].strip() == b"Z"


def _check_uid_free_for(uid: int, role: str) -> None:
    for entry in pwd.getpwall():
        if entry.pw_uid == uid and not entry.pw_gecos.endswith(f" {role}"):
            raise UserProvisionError(f"uid {uid} belongs to {entry.pw_name!r}, not to this pool account")


def _install_ssh_key(user: pwd.struct_passwd, key: str) -> None:
    ssh = Path(user.pw_dir) / ".ssh"
    if not Path(user.pw_dir).is_dir():
        return
    with contextlib.suppress(FileExistsError):
        ssh.mkdir(mode=0o700)
    os.chown(ssh, user.pw_uid, user.pw_gid, follow_symlinks=False)
    target = ssh / "id_rsa"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, user.pw_uid, user.pw_gid)
        os.fchmod(fd, 0o600)
        os.write(fd, key.encode() if key.endswith("\n") else (key + "\n").encode())
    finally:
        os.close(fd)


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _shell() -> str:
    return "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """One account change at a time on this host: agents of other nodes edit /etc/passwd too."""
    global _host_lock_fd
    with _thread_lock:
        if _host_lock_fd is None:
            for path in HOST_LOCK_PATHS:
                try:
                    _host_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    break
                except OSError:
                    continue
        if _host_lock_fd is None:
            yield  # no lock file possible: contention is handled by retrying
            return
        fcntl.flock(_host_lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(_host_lock_fd, fcntl.LOCK_UN)


def _run(argv: list[str], *, ok: tuple[int, ...] = (), stdin: str | None = None) -> int:
    """Run an account tool under the host lock; retry while another tool holds the passwd lock."""
    deadline = time.monotonic() + LOCK_RETRY_DEADLINE_S
    delay = 0.02
    while True:
        with _host_lock():
            try:
                done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
            except FileNotFoundError as exc:
                raise UserProvisionError(
                    f"{argv[0]} is not installed: a root agent needs the shadow tools (useradd, userdel, "
                    "groupadd, chpasswd) to run tasks as their own users") from exc
            except subprocess.TimeoutExpired as exc:
                raise UserProvisionError(f"{argv[0]} did not finish in {COMMAND_TIMEOUT_S:.0f} s") from exc
        if done.returncode == 0 or done.returncode in ok:
            return done.returncode
        message = (done.stderr or done.stdout).strip()
        if "lock" in message.lower() and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        # Never echo stdin: it may hold a password.
        raise UserProvisionError(f"{argv[0]} failed ({done.returncode}): {message[:300]}")
