"""Process trees that die with their node: nothing an agent started outlives it.

A requeued task must never run twice at once, so when an agent dies (kill -9, a crash) every
process it started has to be gone before the control plane hands its tasks to a new attempt.
One of two mechanisms is chosen per agent (see :func:`contain_node`):

**A cgroup per node** - when the agent is root and a cgroup hierarchy is writable (cgroup v2
mounted at ``/sys/fs/cgroup``, else the v1 ``pids`` hierarchy). The node's cgroup is
``shoal-node-<hash of the node root>`` beside the cgroup the agent started in, so the agent and
its provider (which starts the agent, hence shares that starting cgroup) find the same one. The
agent moves *itself* into it before it starts anything; every task and start-task process is
then born inside. A task leaves only by writing to root-owned cgroup files, so ``setsid``, double
forks and re-parenting to init change nothing. Killing the node is ``cgroup.kill`` (v2, Linux
5.14+) or SIGKILL to every member until none is left (v1; a process with SIGKILL pending cannot
fork, so each round leaves fewer).

The agent's death alone would kill nothing there, so right after joining, the agent starts a
watchdog inside the same cgroup (``python -m shoal.agent.tree``, in a session of its own, about
10 MB): it waits on the agent's pidfd and, when the agent dies, kills every other member. It
cannot hit a later agent of the node: that one kills every member, watchdog included, before it
joins. The provider (:func:`kill_node_processes` before it requeues) and the next agent (before
hello) kill the cgroup too, should the watchdog itself have been killed.

Why the agent itself and not each child: Python 3.11's subprocess cannot clone straight into a
cgroup (clone3 ``CLONE_INTO_CGROUP``); writing the child's pid to ``cgroup.procs`` after Popen
returns is racy, because Popen returns once the program has exec'd and it may already have
forked; moving the child before exec needs ``preexec_fn`` (no vfork, unsafe in a threaded
process) or one extra wrapper exec per task. An agent inside its node's cgroup costs nothing per
task and is what a Batch VM is: the agent shares the node with its tasks. Per-node CPU and memory
limits (issue 10) go on this same cgroup: under v2 by enabling the controllers in the parent's
``cgroup.subtree_control``; under v1 with a cgroup of the same name in the ``cpu`` and ``memory``
hierarchies, which the agent joins the same way (:class:`Hierarchy` is per hierarchy for that).

**Process-group files otherwise** (not root, or no writable cgroups). Every task leader gets
``PR_SET_PDEATHSIG`` = SIGKILL (through ``preexec_fn``, which costs subprocess its vfork: with an
agent's memory, spawning /bin/true went from about 900/s to about 415/s on a 2-core machine), so
it dies with the agent's spawning thread; and the agent keeps one file per
running process group under ``volatile/shoal-agent/`` so that the next agent on this node root,
or the provider, kills those groups. Descendants that leave their process group (``setsid``)
escape this fallback; docs/security.md says so.

:func:`kill_node_processes` is what a restarting agent (before hello) and the local provider
(before requeueing a dead agent's tasks) call; it knows both mechanisms and needs no live agent.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("shoal.agent.tree")

CGROUP_PREFIX = "shoal-node-"
KILL_TIMEOUT_S = 10.0
_KILL_POLL_S = 0.01
_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc")
_UNIFIED_MOUNT = Path("/sys/fs/cgroup")
_GROUPS_DIR = ("volatile", "shoal-agent", "process-groups")


# ---- cgroup hierarchies -------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: v2 (unified) or a v1 hierarchy of one controller."""

    version: int
    mountpoint: Path
    mount_root: str  # the cgroup path shown at the mountpoint (not "/" inside some containers)
    controller: str | None = None  # v1 only

    def directory(self, cgroup_path: str) -> Path:
        """The folder of a cgroup given as in /proc/<pid>/cgroup."""
        relative = os.path.relpath(cgroup_path, self.mount_root)
        if relative == os.curdir:
            return self.mountpoint
        if relative.startswith(os.pardir):
            raise LookupError(f"cgroup {cgroup_path} is outside the mount at {self.mountpoint}")
        return self.mountpoint / relative

    def cgroup_of(self, pid: int | str = "self") -> str:
        """The cgroup path of a process in this hierarchy."""
        for line in (_PROC / str(pid) / "cgroup").read_text().splitlines():
            hierarchy_id, controllers, path = line.split(":", 2)
            if self.version == 2 and hierarchy_id == "0" and controllers == "":
                return path
            if self.version == 1 and self.controller in controllers.split(","):
                return path
        raise LookupError(f"process {pid} is in no {self.controller or 'v2'} cgroup")


def _unescape_mount_field(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounted_hierarchies() -> list[Hierarchy]:
    found = []
    try:
        lines = (_PROC / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_options = tail[0], tail[2].split(",")
        root, mountpoint = _unescape_mount_field(fields[3]), Path(_unescape_mount_field(fields[4]))
        if fstype == "cgroup2":
            found.append(Hierarchy(2, mountpoint, root))
        elif fstype == "cgroup":
            for controller in ("pids", "memory", "cpu", "cpuset"):
                if controller in super_options:
                    found.append(Hierarchy(1, mountpoint, root, controller))
    return found


def containment_hierarchy() -> Hierarchy | None:
    """The hierarchy node cgroups live in: pure v2 when ``/sys/fs/cgroup`` is cgroup2, else the
    v1 ``pids`` hierarchy (a hybrid host's extra ``unified`` mount is left alone: its
    controllers are all bound to v1, so issue 10's limits could never go there)."""
    hierarchies = mounted_hierarchies()
    for h in hierarchies:
        if h.version == 2 and h.mountpoint == _UNIFIED_MOUNT:
            return h
    for h in hierarchies:
        if h.version == 1 and h.controller == "pids":
            return h
    return None


def node_cgroup_name(node_root: str | os.PathLike[str]) -> str:
    """Names are derived from the node root: two servers on one host may reuse node ids."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(node_root))).hexdigest()[:24]
    return CGROUP_PREFIX + digest


@dataclass(frozen=True)
class NodeCgroup:
    """The cgroup holding one node's agent and everything it started."""

    hierarchy: Hierarchy
    parent: Path
    directory: Path

    @classmethod
    def beside_current(cls, node_root: str | os.PathLike[str], hierarchy: Hierarchy) -> NodeCgroup:
        """The node's cgroup under the cgroup this process is in now (the agent's and its
        provider's starting cgroup)."""
        parent = hierarchy.directory(hierarchy.cgroup_of())
        return cls(hierarchy, parent, parent / node_cgroup_name(node_root))

    def exists(self) -> bool:
        return self.directory.is_dir()

    def members(self) -> set[int]:
        """Live processes in this cgroup and below (zombies have exited: not counted)."""
        pids: set[int] = set()
        for folder in _walk_cgroup(self.directory):
            with contextlib.suppress(FileNotFoundError):
                for word in (folder / "cgroup.procs").read_text().split():
                    pids.add(int(word))
        return {pid for pid in pids if not _is_zombie(pid)}

    def create(self) -> None:
        self.directory.mkdir(mode=0o755, exist_ok=True)

    def enter(self) -> None:
        """Move this whole process (all its threads) into the node's cgroup."""
        self.create()
        (self.directory / "cgroup.procs").write_text(str(os.getpid()))

    def leave(self) -> None:
        """Back to the parent cgroup (a cgroup with a member cannot be removed)."""
        if os.getpid() in self.members():
            (self.parent / "cgroup.procs").write_text(str(os.getpid()))

    def kill(self, timeout_s: float = KILL_TIMEOUT_S, spare: frozenset[int] = frozenset()) -> set[int]:
        """SIGKILL every member but this process (and ``spare``), until none is left; returns
        the survivors."""
        if not self.exists():
            return set()
        spared = spare | {os.getpid()}
        kill_file = self.directory / "cgroup.kill"
        if self.hierarchy.version == 2 and kill_file.exists() and not spared & self.members():
            # One write kills the whole subtree, forks in flight included.
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        deadline = time.monotonic() + timeout_s
        while True:
            targets = self.members() - spared
            if not targets or time.monotonic() > deadline:
                return targets
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_KILL_POLL_S)

    def remove(self) -> None:
        """Remove the node's (empty) cgroup folders, children first."""
        for folder in reversed(list(_walk_cgroup(self.directory))):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _walk_cgroup(top: Path) -> Iterator[Path]:
    """A cgroup folder and its child cgroups, parents first, without following links."""
    if not top.is_dir():
        return
    yield top
    with contextlib.suppress(OSError):
        for entry in os.scandir(top):
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_cgroup(Path(entry.path))


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and parens)."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _is_zombie(pid: int) -> bool:
    fields = _proc_stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def process_start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot): with the pid, names one process for good."""
    fields = _proc_stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


# ---- the fallback: process-group files -----------------------------------------------------


@dataclass(frozen=True)
class ProcessGroupFiles:
    """One empty file ``<pgid>-<leader start ticks>`` per running task process group, in a
    folder only the agent's user can write (entries of any other owner are ignored)."""

    directory: Path

    @classmethod
    def in_root(cls, node_root: str | os.PathLike[str]) -> ProcessGroupFiles:
        return cls(Path(os.path.abspath(node_root)).joinpath(*_GROUPS_DIR))

    def add(self, pgid: int) -> None:
        ticks = process_start_ticks(pgid)
        if ticks is None:
            return  # already gone
        self._prepare()
        fd = os.open(self.directory / f"{pgid}-{ticks}", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        os.close(fd)

    def discard(self, pgid: int) -> None:
        for name in self._names():
            if name.split("-", 1)[0] == str(pgid):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()

    def kill(self, timeout_s: float = KILL_TIMEOUT_S) -> set[int]:
        """SIGKILL every recorded group that still exists; returns the groups still alive."""
        pending: set[int] = set()
        for name in self._names():
            pgid = _recorded_group(name)
            if pgid is not None and _group_is_ours(pgid, name) and _signal_group(pgid, signal.SIGKILL):
                pending.add(pgid)
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()
        deadline = time.monotonic() + timeout_s
        while pending:
            pending = _groups_with_live_members(pending)
            if not pending or time.monotonic() > deadline:
                break
            for pgid in pending:
                _signal_group(pgid, signal.SIGKILL)
            time.sleep(_KILL_POLL_S)
        return pending

    def _prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _names(self) -> list[str]:
        try:
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                return []
            names = []
            for entry in os.scandir(self.directory):
                if entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                    names.append(entry.name)
            return names
        except OSError:
            return []


def _recorded_group(name: str) -> int | None:
    pgid, _, ticks = name.partition("-")
    if not (pgid.isdigit() and ticks.isdigit()) or int(pgid) <= 1:
        return None
    return int(pgid)


def _group_is_ours(pgid: int, name: str) -> bool:
    """True unless the pid now names another process. While any member of a group lives, the
    kernel does not reuse its number; so a missing leader means the members are still ours, and
    a leader with another start time means our group is gone and the number was reused."""
    ticks = process_start_ticks(pgid)
    return ticks is None or str(ticks) == name.partition("-")[2]


def _groups_with_live_members(groups: set[int]) -> set[int]:
    """Which of ``groups`` still have a member that is not a zombie (a killed child of the
    caller stays in its group until reaped). A scan of /proc: only while killing."""
    live: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(_PROC):
            if entry.name.isdigit():
                fields = _proc_stat_fields(int(entry.name))
                if fields and len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) in groups:
                    live.add(int(fields[2]))
    return live


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no member left (zombies aside)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours to kill: a reused number
    return True


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _death_signal_setter() -> Callable[[], object] | None:
    """A preexec_fn that sets ``PR_SET_PDEATHSIG`` = SIGKILL, then makes sure the parent is still
    the one that forked: had the agent died between fork and prctl, no signal would ever come,
    and the task would run on, unrecorded, beside its requeued attempt."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(127)

    return die_with_parent


# ---- the watchdog of a node cgroup ---------------------------------------------------------


def start_watchdog(cgroup: NodeCgroup) -> subprocess.Popen[bytes]:
    """Start the watchdog of the calling agent (which must already be in ``cgroup``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "shoal.agent.tree", str(os.getpid()), str(cgroup.directory),
         str(cgroup.hierarchy.version)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def watch(agent_pid: int, cgroup: NodeCgroup) -> None:
    """The watchdog's life: wait until the agent dies, then kill the rest of its cgroup."""
    # While the agent lives it is our parent; once it is dead, its pid may name anyone.
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(agent_pid)
    if os.getppid() == agent_pid:
        if pidfd >= 0:
            select.select([pidfd], [], [])
        else:  # no pidfds (Linux < 5.3): poll
            while os.getppid() == agent_pid:
                time.sleep(0.2)
    cgroup.kill()


def _watchdog_main(argv: list[str]) -> int:
    agent_pid, directory, version = int(argv[0]), Path(argv[1]), int(argv[2])
    hierarchy = Hierarchy(version, directory.parent, "/", "pids" if version == 1 else None)
    # SIGTERM (shoal down, a test's cleanup) must not stop the watch; only SIGKILL ends it early.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(agent_pid, NodeCgroup(hierarchy, directory.parent, directory))
    return 0


# ---- one node's containment ----------------------------------------------------------------


class NodeContainment:
    """How the processes of one node are made to die with it; see the module docstring."""

    def __init__(self, node_root: str | os.PathLike[str], cgroup: NodeCgroup | None) -> None:
        self.node_root = Path(os.path.abspath(node_root))
        self.cgroup = cgroup
        self.groups = ProcessGroupFiles.in_root(node_root)
        self.entered = False
        self.watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_root(cls, node_root: str | os.PathLike[str]) -> NodeContainment:
        """Where this node's processes are (no side effect). Cgroups need root to be ours."""
        cgroup = None
        if os.geteuid() == 0:
            hierarchy = containment_hierarchy()
            if hierarchy is not None:
                with contextlib.suppress(OSError, LookupError, ValueError):
                    cgroup = NodeCgroup.beside_current(node_root, hierarchy)
        return cls(node_root, cgroup)

    @property
    def mode(self) -> str:
        if self.entered and self.cgroup is not None:
            watched = " with a watchdog" if self.watchdog is not None else ""
            return f"cgroup v{self.cgroup.hierarchy.version} {self.cgroup.directory}{watched}"
        return "process groups (PR_SET_PDEATHSIG and group files; setsid escapes)"

    def kill_all(self, timeout_s: float = KILL_TIMEOUT_S) -> set[int]:
        """Kill every process of this node but the caller; returns what survived the timeout."""
        survivors: set[int] = set()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                survivors |= self.cgroup.kill(timeout_s)
        survivors |= self.groups.kill(timeout_s)
        return survivors

    def kill_tasks(self, timeout_s: float = KILL_TIMEOUT_S) -> set[int]:
        """Kill every process of this node but the agent and its watchdog (a reboot: start-task
        daemons go too, as on a real node)."""
        if self.entered and self.cgroup is not None:
            spare = frozenset({self.watchdog.pid}) if self.watchdog is not None else frozenset()
            with contextlib.suppress(OSError):
                return self.cgroup.kill(timeout_s, spare)
        return self.groups.kill(timeout_s)

    def enter(self) -> None:
        """Join the node's cgroup; without one, arm the fallback. Call with no child running."""
        if self.cgroup is None:
            return
        try:
            self.cgroup.enter()
            self.entered = True
        except OSError as exc:
            log.warning("cannot use cgroup %s (%s); falling back to process groups", self.cgroup.directory, exc)
            return
        try:
            self.watchdog = start_watchdog(self.cgroup)
        except OSError as exc:  # the provider and the next agent still kill the cgroup
            log.warning("cannot start the node's watchdog: %s", exc)

    def release(self) -> None:
        """The node is going (agent exit): kill what is left, leave and remove the cgroup."""
        self.kill_all()
        if self.watchdog is not None:
            self.watchdog.wait()  # killed with the rest: reap it
            self.watchdog = None
        if self.cgroup is not None and self.entered:
            with contextlib.suppress(OSError):
                self.cgroup.leave()
            self.cgroup.remove()
        self.entered = False

    # -- per spawn (called by the process runner, in its spawning thread) ----------------------

    @property
    def preexec_fn(self) -> Callable[[], object] | None:
        return None if self.entered else _death_signal_setter()

    def spawned(self, pid: int) -> None:
        if not self.entered:
            self.groups.add(pid)

    def finished(self, pid: int) -> None:
        """The group of ``pid`` is dead (or left on purpose to the node's end)."""
        if not self.entered:
            self.groups.discard(pid)


_current: NodeContainment | None = None


def current() -> NodeContainment | None:
    """The containment of the agent running in this process, if any."""
    return _current


def contain_node(node_root: str | os.PathLike[str]) -> NodeContainment:
    """Agent start (blocking; run it in a thread): kill what a previous incarnation left on this
    node, then keep everything this agent starts inside the node's containment."""
    global _current
    containment = NodeContainment.for_root(node_root)
    survivors = containment.kill_all()
    if survivors:
        log.error("processes of an earlier agent survived SIGKILL: %s", sorted(survivors))
    if _current is not None:
        # A second agent in one process (an embedding, not `shoal agent`): a process is in one
        # cgroup only, so this node's tasks are contained with the first node's.
        log.warning("another agent in this process holds %s; the tasks of %s share it", _current.mode, node_root)
        return containment
    containment.enter()
    log.info("task processes contained by %s", containment.mode)
    _current = containment
    return containment


def release_node(containment: NodeContainment) -> None:
    """Agent exit (blocking): nothing of this node outlives the agent."""
    global _current
    if _current is containment:
        _current = None
    containment.release()


def kill_node_processes(node_root: str | os.PathLike[str], *, remove: bool = False,
                        timeout_s: float = KILL_TIMEOUT_S) -> set[int]:
    """Kill every process of the node at ``node_root`` (blocking, idempotent): for the provider
    that found the agent dead, before its tasks are requeued, and for a restarting agent.
    ``remove`` also deletes the node's cgroup (the node is gone for good). Returns the pids or
    groups that survived SIGKILL for ``timeout_s`` (stuck in the kernel), normally none."""
    containment = NodeContainment.for_root(node_root)
    survivors = containment.kill_all(timeout_s)
    if remove and containment.cgroup is not None and not survivors:
        containment.cgroup.remove()
    if survivors:
        log.error("node %s: processes survived SIGKILL: %s", node_root, sorted(survivors))
    return survivors


if __name__ == "__main__":
    sys.exit(_watchdog_main(sys.argv[1:]))
