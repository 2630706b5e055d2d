"""The node folder layout and the environment a task's process sees (semantics §4).

Everything lives under one root directory, ``AZ_BATCH_NODE_ROOT_DIR``::

    <root>/applications/  fsmounts/  shared/  startup/  volatile/  workitems/
    <root>/startup/{stdout.txt,stderr.txt,wd/}                       the start task
    <root>/workitems/<jobId>/job-1/<taskId>/{stdout.txt,stderr.txt,wd/}   a task

Path arithmetic, the folders' owners and modes, and two functions that build a process
environment; nothing here starts a process.

Owners and modes follow a Batch Linux node (the agent's umask, inherited from the server, is
077, so every mode is set explicitly):

- the node root and its folders: root's, 0755, so every task user can walk down to its own;
- ``shared``: root and the node's group (every user of the node), 3770: group-writable, new
  files take the group (setgid), and nobody deletes another user's files (sticky);
- ``startup``: the start task's user and the node's group, 2750: pool users read it, only the
  start task writes it;
- a task's folder and its ``wd``: the task's user, 0700: other task users cannot read them.

Inside a folder a task user owns, that user may swap any entry for a symlink, so entries there
are made and changed through a descriptor of the folder, never by following a path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

WORKITEMS_DIR = "workitems"
NODE_SUBDIRS = ("applications", "fsmounts", "shared", "startup", "volatile", WORKITEMS_DIR)
STDOUT_FILE = "stdout.txt"
STDERR_FILE = "stderr.txt"
WORKING_DIR = "wd"
CERTIFICATES_SUBDIR = "certs"
# "job-1" is a literal path segment in Batch (a work-item counter whose meaning is undocumented).
JOB_SEGMENT = "job-1"
# The disk-full threshold Batch exposes to every task; Shoal does not enforce it yet.
RESERVED_EPHEMERAL_DISK_SPACE_BYTES = 1_000_000_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"
# The public CAs of the system, readable by every user (an interpreter's own bundle may not be).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# In the node root: the system's CAs plus the control plane's own (layout.install_ca_bundle).
CA_BUNDLE_FILE = "ca-bundle.pem"
NODE_DIR_MODE = 0o755
SHARED_DIR_MODE = 0o3770
STARTUP_DIR_MODE = 0o2750
TASK_DIR_MODE = 0o700
# Internal to the agent: no task needs it.
VOLATILE_DIR_MODE = 0o700

# Batch ids are letters, digits, hyphens and underscores; anything else could escape the tree.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# A job a job schedule made is named `<scheduleId>:job-<n>`; Batch keeps its tasks under
# `workitems/<scheduleId>/job-<n>/`, where a plain job's are under `workitems/<jobId>/job-1/`.
_SCHEDULED_JOB = re.compile(r"([A-Za-z0-9_-]{1,64}):(job-[1-9][0-9]{0,9})")


def job_folder_parts(job_id: str) -> tuple[str, str]:
    """The two folders of a job below ``workitems``."""
    scheduled = _SCHEDULED_JOB.fullmatch(job_id)
    if scheduled:
        return scheduled.group(1), scheduled.group(2)
    return job_id, JOB_SEGMENT


def task_folder_parts(job_id: str, task_id: str) -> tuple[str, str, str, str]:
    """A task's folder below the node root, segment by segment. The one definition of where a
    task's files are: the agent makes the folder there, the simulated nodes keep it there and the
    control plane names it to a node's file server (``service/tasks.py``)."""
    return (WORKITEMS_DIR, *job_folder_parts(job_id), task_id)


def task_folder(job_id: str, task_id: str) -> str:
    """``workitems/<jobId>/job-1/<taskId>``: a task's folder relative to the node root."""
    return "/".join(task_folder_parts(job_id, task_id))


class UnsafeIdError(ValueError):
    """A job or task id that cannot be used as a path segment."""


def _check_id(kind: str, value: str) -> str:
    if kind == "job" and isinstance(value, str) and _SCHEDULED_JOB.fullmatch(value):
        return value
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value):
        raise UnsafeIdError(f"{kind} id {value!r} is not a valid Batch id")
    return value


@dataclass(frozen=True)
class TaskPaths:
    """The directory of one task (or of the start task) and the files in it."""

    task_dir: Path

    @property
    def working_dir(self) -> Path:
        return self.task_dir / WORKING_DIR

    @property
    def stdout(self) -> Path:
        return self.task_dir / STDOUT_FILE

    @property
    def stderr(self) -> Path:
        return self.task_dir / STDERR_FILE

    @property
    def certificates_dir(self) -> Path:
        return self.task_dir / CERTIFICATES_SUBDIR

    def create(self, owner: Ownership | None = None) -> None:
        """Make the task folder and its ``wd``, owned as ``owner`` says (None: the agent's own
        user, nothing to change). Parents up to the node root are root's and traversable."""
        _make_parents(self.task_dir.parent)
        mode = owner.mode if owner else TASK_DIR_MODE
        _make_dir(self.task_dir, mode)
        fd = os.open(self.task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if owner is not None:
                os.fchown(fd, owner.uid, owner.gid)
                os.fchmod(fd, owner.mode)
            _own_entry_beneath(fd, WORKING_DIR, owner, mode)
            for name in (STDOUT_FILE, STDERR_FILE):
                _unlink_if_link(fd, name)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Ownership:
    """Who owns a task folder and with which mode."""

    uid: int
    gid: int
    mode: int = TASK_DIR_MODE


def _make_dir(path: Path, mode: int) -> bool:
    """mkdir with exactly ``mode`` whatever the umask; True when it was made now."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)
    return True


def _make_parents(directory: Path) -> None:
    if directory.is_dir():
        return
    _make_parents(directory.parent)
    _make_dir(directory, NODE_DIR_MODE)


def _own_entry_beneath(dir_fd: int, name: str, owner: Ownership | None, mode: int) -> None:
    """Make ``name`` a directory beneath ``dir_fd`` owned by ``owner``; a link or file a task
    left there is removed rather than followed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            raise FileNotFoundError(name)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _unlink_if_link(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)


@dataclass(frozen=True)
class NodeLayout:
    """Paths of a node root (``AZ_BATCH_NODE_ROOT_DIR``)."""

    root: Path
    # Whether tasks are given a CA bundle that trusts the control plane's own CA (an https
    # endpoint of `shoal up --tls`), so that they can call AZ_BATCH_ACCOUNT_URL.
    trusts_own_ca: bool = False

    @classmethod
    def at(cls, root: str | os.PathLike[str], *, trusts_own_ca: bool = False) -> NodeLayout:
        return cls(Path(root).absolute(), trusts_own_ca)

    @property
    def ca_bundle(self) -> Path:
        return self.root / CA_BUNDLE_FILE

    def trust_environment(self) -> dict[str, str]:
        """What points a task's TLS clients (OpenSSL, requests) at the node's CA bundle; a task's
        own settings can still point them elsewhere."""
        if not self.trusts_own_ca:
            return {}
        return {"SSL_CERT_FILE": str(self.ca_bundle), "REQUESTS_CA_BUNDLE": str(self.ca_bundle)}

    def install_ca_bundle(self, ca_file: str | os.PathLike[str]) -> None:
        """The system's public CAs plus the control plane's, readable by every task user (a
        CA certificate is public) and written by the agent only."""
        parts = []
        if os.path.exists(SYSTEM_CA_BUNDLE):
            parts.append(Path(SYSTEM_CA_BUNDLE).read_bytes())
        parts.append(Path(ca_file).read_bytes())
        tmp = self.root / f".{CA_BUNDLE_FILE}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(b"\n".join(part.rstrip(b"\n") for part in parts) + b"\n")
        os.replace(tmp, self.ca_bundle)

    @property
    def applications(self) -> Path:
        return self.root / "applications"

    @property
    def fsmounts(self) -> Path:
        return self.root / "fsmounts"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def volatile(self) -> Path:
        return self.root / "volatile"

    @property
    def workitems(self) -> Path:
        return self.root / WORKITEMS_DIR

    def create(self, group: int | None = None) -> None:
        """The node's folders, root's (or the agent's user's) and traversable; with ``group`` (the
        node's group, when the agent is root) ``shared`` becomes writable by every user of it."""
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, NODE_DIR_MODE)
        for name in NODE_SUBDIRS:
            path = self.root / name
            _make_dir(path, NODE_DIR_MODE)
            if name == "volatile":
                os.chmod(path, VOLATILE_DIR_MODE)
        if group is not None:
            os.chown(self.shared, -1, group, follow_symlinks=False)
            os.chmod(self.shared, SHARED_DIR_MODE)

    def start_task(self) -> TaskPaths:
        return TaskPaths(self.startup)

    def job_dir(self, job_id: str) -> Path:
        """A plain job's whole folder; a scheduled job's own `job-<n>` below its schedule's."""
        folder, segment = job_folder_parts(_check_id("job", job_id))
        return self.workitems / folder / segment if _SCHEDULED_JOB.fullmatch(job_id) else self.workitems / folder

    def task(self, job_id: str, task_id: str) -> TaskPaths:
        return TaskPaths(self.root.joinpath(*task_folder_parts(_check_id("job", job_id), _check_id("task", task_id))))


@dataclass(frozen=True)
class NodeIdentity:
    """What the control plane told the agent about its node in the hello response."""

    account_name: str
    account_url: str
    pool_id: str
    node_id: str
    is_dedicated: bool


def base_environment(user: pwd.struct_passwd | None = None) -> dict[str, str]:
    """The minimal environment a task starts from: the agent's own environment is not inherited."""
    if user is None:
        return dict(_own_base_environment())
    return _base_environment(user)


@functools.lru_cache(maxsize=1)
def _own_base_environment() -> dict[str, str]:
    # Computed once per agent process: it is the same for every task run as the agent's user.
    return _base_environment(None)


def _base_environment(user: pwd.struct_passwd | None) -> dict[str, str]:
    if user is None:
        home = os.environ.get("HOME") or _home_of_current_user()
        name = os.environ.get("USER") or _name_of_current_user()
    else:
        home, name = user.pw_dir, user.pw_name
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": home,
        "USER": name,
        "LOGNAME": name,
        "LANG": os.environ.get("LANG") or DEFAULT_LANG,
    }
    tz = os.environ.get("TZ")
    if tz:
        env["TZ"] = tz
    return env


def _home_of_current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def _name_of_current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def settings_to_dict(settings: Mapping[str, str] | Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """Accept both ``{name: value}`` and Batch's ``[{"name", "value"}]`` environment settings."""
    if not settings:
        return {}
    if isinstance(settings, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in settings.items()}
    return {str(s["name"]): str(s.get("value") or "") for s in settings}


def node_environment(layout: NodeLayout, node: NodeIdentity) -> dict[str, str]:
    """The variables that describe the node itself (every task's, and an SSH session's)."""
    return {
        "AZ_BATCH_ACCOUNT_NAME": node.account_name,
        "AZ_BATCH_ACCOUNT_URL": node.account_url,
        "AZ_BATCH_POOL_ID": node.pool_id,
        "AZ_BATCH_NODE_ID": node.node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.is_dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(layout.root),
        "AZ_BATCH_NODE_SHARED_DIR": str(layout.shared),
        "AZ_BATCH_NODE_STARTUP_DIR": str(layout.startup),
        "AZ_BATCH_NODE_MOUNTS_DIR": str(layout.fsmounts),
    }


def _common_batch_vars(layout: NodeLayout, node: NodeIdentity, paths: TaskPaths) -> dict[str, str]:
    return {
        **node_environment(layout, node),
        "AZ_BATCH_TASK_DIR": str(paths.task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(paths.working_dir),
        "AZ_BATCH_CERTIFICATES_DIR": str(paths.certificates_dir),
        "AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": str(RESERVED_EPHEMERAL_DISK_SPACE_BYTES),
    }


def start_task_environment(
    layout: NodeLayout,
    node: NodeIdentity,
    user_settings: Mapping[str, str] | None = None,
    user: pwd.struct_passwd | None = None,
) -> dict[str, str]:
    """Environment of the start task: base, then user settings, then AZ_BATCH_* (which win)."""
    env = base_environment(user)
    env.update(layout.trust_environment())
    env.update(user_settings or {})
    env.update(_common_batch_vars(layout, node, layout.start_task()))
    return env


def task_environment(
    layout: NodeLayout,
    node: NodeIdentity,
    job_id: str,
    task_id: str,
    user_settings: Mapping[str, str] | None = None,
    user: pwd.struct_passwd | None = None,
) -> dict[str, str]:
    """Environment of a job task: as the start task's plus AZ_BATCH_JOB_ID and AZ_BATCH_TASK_ID."""
    env = base_environment(user)
    env.update(layout.trust_environment())
    env.update(user_settings or {})
    env.update(_common_batch_vars(layout, node, layout.task(job_id, task_id)))
    env["AZ_BATCH_JOB_ID"] = job_id
    env["AZ_BATCH_TASK_ID"] = task_id
    return env


def multi_instance_environment(paths: TaskPaths, instance: int, hosts: list[str], master_port: int) -> dict[str, str]:
    """The variables Batch adds for every instance of a multi-instance task (semantics §4):
    the hosts of all instances in instance order (the primary's first), the primary's address,
    whether this is it, and the task's root folder, where the common resource files are."""
    return {
        "AZ_BATCH_HOST_LIST": ",".join(hosts),
        "AZ_BATCH_NODE_LIST": ";".join(hosts),
        "AZ_BATCH_MASTER_NODE": f"{hosts[0] if hosts else '127.0.0.1'}:{master_port}",
        "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if instance == 0 else "false",
        "AZ_BATCH_TASK_SHARED_DIR": str(paths.task_dir),
    }
