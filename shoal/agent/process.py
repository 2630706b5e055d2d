"""Run one task command line as a real process tree, the way Batch does.

The command line is split with :mod:`shlex` and executed directly (no shell, so ``$HOME`` stays
literal), in the task's working directory, with stdout/stderr going to files, in a session of
its own so that the whole tree can be killed through its process group.

Nothing a task carries can break the agent: the command line, environment and user are checked
before anything starts (Batch's 8,191-character cap, no NUL, no ``=`` in a name), and whatever
the spawn still refuses ends that attempt with a ``usererror`` failure; :meth:`TaskProcess.start`
never raises. Parsing and spawning run in a small thread pool, off the event loop: ``shlex`` is
pure Python, and one slow parse must not stall the agent's syncs.

Why not ``asyncio.create_subprocess_exec``: on Python 3.11 its default child watcher
(``ThreadedChildWatcher``) starts one thread per child. A node agent runs hundreds of short
tasks per second, so instead we spawn with :class:`subprocess.Popen` (which vforks) and learn
about the exit through a pidfd registered with the event loop: no thread per task, one fd per
task. Where pidfds are unavailable (non-Linux, kernel < 5.3) we fall back to a thread per task.

Task trees die with their node (:mod:`shoal.agent.tree`): inside the agent's node cgroup they
need nothing per spawn; in the fallback each leader gets a parent-death signal and its process
group is recorded for the next agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from shoal.agent import launcher, tree

log = logging.getLogger("shoal.agent.process")

MAX_COMMAND_LINE_CHARS = 8191
"""Batch's cap on a command line (the Windows command-line limit, applied on every OS)."""
SPAWN_THREADS = 4
"""Spawner threads: Popen blocks its caller until the child has exec'd. They live as long as
the process, which the fallback's parent-death signal relies on (it fires when the thread that
forked the child ends)."""
_QUOTE_CHARS = 64
_MAX_MESSAGE_CHARS = 500
_NO_ID = 2**32 - 1  # (uid_t)-1 and (gid_t)-1

KILL_GRACE_S = 2.0
"""How long a killed tree gets between SIGTERM and SIGKILL."""
_KILL_POLL_S = 0.02
# Shell convention for a process ended by a signal: 128 + signal number.
_SIGNAL_EXIT_BASE = 128

_HAVE_PIDFD = hasattr(os, "pidfd_open")
_devnull_fd: int | None = None


def _fresh_output_file(path: Path) -> int:
    """A new, empty stdout/stderr file. The folder belongs to the task's user, who may have left
    a link there (to /etc/shadow, say) from an earlier attempt: the old entry is removed and the
    new one created exclusively without following links, so the agent (root) never opens, let
    alone truncates, anything the user pointed it at. A user racing to plant a link again makes
    this attempt fail to launch, nothing more."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o664)


def _devnull() -> int:
    # Opened once: tasks get no stdin, and one /dev/null serves them all.
    global _devnull_fd
    if _devnull_fd is None:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """Timestamps on the wire: ISO 8601, UTC, ``Z`` suffix, microseconds."""
    if ts is None:
        return None
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Failure:
    """A Batch ``failureInfo``: why an attempt failed, beyond its exit code."""

    category: str
    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"category": self.category, "code": self.code, "message": self.message}


USER_ERROR = "usererror"
SERVER_ERROR = "servererror"


@dataclass(frozen=True)
class ProcessSpec:
    """Everything needed to start one task process."""

    command_line: str
    cwd: Path
    env: Mapping[str, str]
    stdout_path: Path
    stderr_path: Path
    max_wall_clock_s: float | None = None
    user: pwd.struct_passwd | None = None
    # A user that outlives this task (the pool's auto-user, a named account): worth a spawner of
    # its own (shoal.agent.launcher). A task-scope user is switched to once, for its one task.
    lasting_user: bool = False
    # Tasks must not leave processes behind; the start task may (it often starts daemons).
    kill_leftovers: bool = True


@dataclass(frozen=True)
class Spawned:
    """A process started by the user's spawner: its parent is the spawner, which reports the exit."""

    pid: int
    launcher: launcher.UserLauncher


@dataclass
class ProcessResult:
    """How an attempt ended. ``exit_code`` is None when the program never ran."""

    start_time: datetime
    end_time: datetime
    exit_code: int | None
    failure: Failure | None = None
    killed: bool = False

    def to_report_fields(self) -> dict[str, Any]:
        return {
            "startTime": iso(self.start_time),
            "endTime": iso(self.end_time),
            "exitCode": self.exit_code,
            "failure": self.failure.to_json() if self.failure else None,
        }


def exit_code_of(returncode: int) -> int:
    return _SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def resolve_user(name: str) -> pwd.struct_passwd:
    """Look up a named user; KeyError if it does not exist on this node."""
    return pwd.getpwnam(name)


def _quote(value: str) -> str:
    """A value for a message: bounded, since it may be megabytes of whatever a task sent."""
    shown = value if len(value) <= _QUOTE_CHARS else value[:_QUOTE_CHARS] + "..."
    return repr(shown)


def _launch_failure(message: str) -> Failure:
    # Bounded: an error from the OS may quote a program name thousands of characters long.
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return Failure(USER_ERROR, "CommandLaunchFailed", message)


def command_line_problem(command_line: object) -> str | None:
    """Why a command line cannot be started, checked before it is parsed (so never slowly)."""
    if not isinstance(command_line, str):
        return f"The command line must be a string, not {type(command_line).__name__}"
    if len(command_line) > MAX_COMMAND_LINE_CHARS:
        return (f"The command line is {len(command_line)} characters long; "
                f"the limit is {MAX_COMMAND_LINE_CHARS}")
    if "\0" in command_line:
        return "The command line contains a NUL character"
    if not command_line.strip():
        return "The command line is empty"
    return None


def environment_problem(env: Mapping[str, str]) -> str | None:
    """Why an environment cannot be handed to execve."""
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return (f"Environment variables need string names and values, not "
                    f"{type(name).__name__} = {type(value).__name__}")
        if not name:
            return "An environment variable has an empty name"
        if "=" in name:
            return f"The environment variable name {_quote(name)} contains '='"
        if "\0" in name:
            return f"The environment variable name {_quote(name)} contains a NUL character"
        if "\0" in value:
            return f"The value of the environment variable {_quote(name)} contains a NUL character"
    return None


def user_problem(user: pwd.struct_passwd | None) -> str | None:
    """Why the agent cannot become ``user`` (only root can switch to another user)."""
    if user is None:
        return None
    for kind, value in (("uid", user.pw_uid), ("gid", user.pw_gid)):
        # (uid_t)-1 tells setreuid "leave it": a task "switched" to it would stay root.
        if not isinstance(value, int) or not 0 <= value < _NO_ID:
            return f"Cannot run as user {_quote(str(user.pw_name))}: {kind} {value!r} is not a valid id"
    if os.geteuid() == 0:
        return None
    if user.pw_uid == os.geteuid() and user.pw_gid == os.getegid():
        return None
    return f"Cannot run as user {_quote(user.pw_name)}: the node agent is not running as root"


_spawn_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    # Ours, not the loop's default executor: asyncio.run shuts that one down with its loop, and
    # a spawning thread must outlive its children (see SPAWN_THREADS).
    global _spawn_pool
    if _spawn_pool is None:
        _spawn_pool = concurrent.futures.ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="shoal-spawn")
    return _spawn_pool


def launch(spec: ProcessSpec,
           containment: tree.NodeContainment | None = None) -> subprocess.Popen[bytes] | Spawned | Failure:
    """Check, parse and spawn (blocking; runs in a spawner thread). Never raises: whatever stops
    the program from starting is the returned failure."""
    try:
        return _launch(spec, containment)
    except (ValueError, TypeError, OSError, OverflowError) as exc:
        return _launch_failure(f"Cannot start the command line: {exc}")
    except Exception as exc:  # a bug must fail one task, never the agent
        log.exception("unexpected error starting a task")
        return _launch_failure(f"Cannot start the command line: {type(exc).__name__}: {exc}")


def _launch(spec: ProcessSpec,
            containment: tree.NodeContainment | None) -> subprocess.Popen[bytes] | Spawned | Failure:
    problem = command_line_problem(spec.command_line) or environment_problem(spec.env) or user_problem(spec.user)
    if problem is not None:
        return _launch_failure(problem)
    try:
        args = shlex.split(spec.command_line)
    except ValueError as exc:
        return _launch_failure(f"Cannot parse the command line: {exc}")
    if not args:
        return _launch_failure("The command line is empty")
    program = _quote(args[0])
    user = spec.user
    out = err = -1
    try:
        out = _fresh_output_file(spec.stdout_path)
        err = _fresh_output_file(spec.stderr_path)
        if user is not None:
            for fd in (out, err):
                os.fchown(fd, user.pw_uid, user.pw_gid)
        preexec_fn = containment.preexec_fn if containment else None
        if user is not None and spec.lasting_user and preexec_fn is None and launcher.usable():
            return _spawn_as(user, args, spec, (_devnull(), out, err))
        argv: list[str] = args
        identity: dict[str, Any] = {}
        if user is not None:
            # A preexec_fn rules out vfork anyway, and its parent-death signal must be set after
            # the switch (a uid change clears it): then Popen switches users itself.
            argv, identity = _as_user(args, user, spec.env, spec.cwd, helper=preexec_fn is None)
        popen = subprocess.Popen(
            argv,
            stdin=_devnull(),
            stdout=out,
            stderr=err,
            cwd=spec.cwd,
            env=dict(spec.env),
            start_new_session=True,
            preexec_fn=preexec_fn,
            **identity,
        )
    except OSError as exc:
        return _os_error_failure(exc, spec, program)
    except (ValueError, TypeError, OverflowError) as exc:
        # Whatever got past the checks above (say, text that is not valid in the file system's
        # encoding): refused by Popen before any child existed.
        return _launch_failure(f"Cannot start {program}: {exc}")
    finally:
        for fd in (out, err):
            if fd >= 0:
                os.close(fd)
    if containment is not None:
        try:
            containment.spawned(popen.pid)
        except OSError as exc:
            log.warning("cannot record process group %s: %s", popen.pid, exc)
    return popen


def warm_up(user: pwd.struct_passwd) -> None:
    """Start ``user``'s spawner now, in the background, so that the node's first task does not
    wait for an interpreter to start."""
    containment = tree.current()
    if launcher.usable() and (containment is None or containment.preexec_fn is None):
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the agent is exiting
            _spawner().submit(_warm_up, user)


def _warm_up(user: pwd.struct_passwd) -> None:
    try:
        launcher.launcher_for(user)
    except OSError as exc:  # the first task will try again, and fail with the reason if it must
        log.warning("cannot start the process launcher for %s: %s", user.pw_name, exc)


def _spawn_as(user: pwd.struct_passwd, args: list[str], spec: ProcessSpec, fds: tuple[int, int, int]) -> Spawned:
    """Through the user's spawner; once more with a fresh one if that one has died (a task of
    the same user may have killed it)."""
    for attempt in (1, 2):
        user_launcher = launcher.launcher_for(user)
        try:
            return Spawned(user_launcher.spawn(args, spec.cwd, spec.env, fds), user_launcher)
        except launcher.LauncherGone:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def _as_user(args: list[str], user: pwd.struct_passwd, env: Mapping[str, str], cwd: Path,
             helper: bool) -> tuple[list[str], dict[str, Any]]:
    """How to start ``args`` as ``user``. Popen's own user/group switch forks instead of vforking,
    and every page the agent touches afterwards takes a copy-on-write fault: about 8 ms of
    agent CPU per task. setpriv switches in the child after a vfork; the program is looked up
    first so that a missing one is still CommandProgramNotFound, not setpriv's exit 127."""
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    if _SETPRIV is None or not helper:
        return args, {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
    program = args[0] if "/" in args[0] else shutil.which(args[0], path=env.get("PATH") or os.defpath)
    if program is None or not os.path.exists(os.path.join(cwd, program)):
        raise FileNotFoundError(2, "No such file or directory", args[0])
    return [_SETPRIV, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            "--groups=" + ",".join(str(g) for g in groups), "--", *args], {}


def _os_error_failure(exc: OSError, spec: ProcessSpec, program: str) -> Failure:
    # Popen blames the working directory for any failure before exec (chdir, or switching user).
    before_exec = exc.filename is not None and Path(os.fsdecode(exc.filename)) == Path(spec.cwd)
    if before_exec:
        if not os.path.isdir(spec.cwd):
            return _launch_failure(f"Working directory missing: {spec.cwd}")
        if spec.user is not None:
            return _launch_failure(f"Cannot start the task as user {_quote(spec.user.pw_name)}: {exc.strerror}")
        return _launch_failure(f"Cannot enter the working directory {spec.cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        return Failure(USER_ERROR, "CommandProgramNotFound", f"The program {program} was not found")
    if isinstance(exc, PermissionError):
        return _launch_failure(f"Cannot execute {program}: {exc.strerror}")
    return _launch_failure(f"Cannot start {program}: {exc}")


@dataclass
class TaskProcess:
    """One running (or finished) command line and its process tree."""

    spec: ProcessSpec
    start_time: datetime = field(default_factory=utc_now)
    _popen: subprocess.Popen[bytes] | None = None  # our child; None when a spawner started it
    _pid: int | None = None
    _done: asyncio.Future[ProcessResult] | None = None
    _timer: asyncio.TimerHandle | None = None
    _timed_out: bool = False
    _killed: bool = False
    _kill_task: asyncio.Task[None] | None = None
    _containment: tree.NodeContainment | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> asyncio.Future[ProcessResult]:
        """Spawn the process in a spawner thread; the returned future resolves with its result.
        Never raises: an attempt that cannot start resolves with a failure."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.start_time = utc_now()
        self._containment = tree.current()
        try:
            spawning = loop.run_in_executor(_spawner(), launch, self.spec, self._containment)
        except RuntimeError as exc:  # the pool is shut down: the interpreter is exiting
            self._fail(_launch_failure(f"Cannot start the command line: {exc}"))
            return self._done
        if self.spec.max_wall_clock_s is not None:
            self._timer = loop.call_later(max(0.0, self.spec.max_wall_clock_s), self._on_timeout)
        spawning.add_done_callback(functools.partial(self._on_spawned, loop))
        return self._done

    def _fail(self, failure: Failure) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(ProcessResult(self.start_time, utc_now(), None, failure))

    def _on_spawned(self, loop: asyncio.AbstractEventLoop, spawning: asyncio.Future[Any]) -> None:
        try:
            outcome = spawning.result()
        except BaseException as exc:  # cancelled with its loop, or a bug in launch()
            outcome = _launch_failure(f"Cannot start the command line: {exc!r}")
        if isinstance(outcome, Failure):
            self._fail(outcome)
            return
        self._pid = outcome.pid
        if self._killed or self._timed_out:
            self._start_kill()  # kill() or the wall clock came while the spawn was under way
        if isinstance(outcome, Spawned):
            def exited(returncode: int) -> None:  # on the launcher's reader thread
                loop.call_soon_threadsafe(self._finish, returncode)

            outcome.launcher.on_exit(outcome.pid, exited)
            return
        self._popen = outcome
        if _HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(outcome.pid)
            except OSError:
                pidfd = -1
            if pidfd >= 0:
                loop.add_reader(pidfd, self._on_pidfd, loop, pidfd)
                return
        loop.create_task(self._wait_in_thread())

    def _on_pidfd(self, loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        assert self._popen is not None
        returncode = self._popen.poll()
        if returncode is None:  # pragma: no cover - a pidfd is readable only once the child exited
            returncode = self._popen.wait()
        self._finish(returncode)

    async def _wait_in_thread(self) -> None:
        assert self._popen is not None
        returncode = await asyncio.to_thread(self._popen.wait)
        self._finish(returncode)

    def _finish(self, returncode: int) -> None:
        end = utc_now()
        if self._timer is not None:
            self._timer.cancel()
        assert self._pid is not None
        if self.spec.kill_leftovers and not self._kill_task:
            # Background children of a finished task die with it; one syscall, usually ESRCH.
            _signal_group(self._pid, signal.SIGKILL)
            self._forget_group()
        failure = None
        if self._timed_out:
            limit = self.spec.max_wall_clock_s
            failure = Failure(
                USER_ERROR, "TaskEnded", f"The task exceeded its maxWallClockTime ({limit} s) and was killed"
            )
        result = ProcessResult(self.start_time, end, exit_code_of(returncode), failure, self._killed)
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(result)

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._start_kill()

    def _start_kill(self) -> None:
        if self._kill_task is None and self._pid is not None:
            self._kill_task = asyncio.get_running_loop().create_task(self._kill_and_forget(self._pid))

    async def _kill_and_forget(self, pid: int) -> None:
        await kill_tree(pid)
        self._forget_group()

    def _forget_group(self) -> None:
        """The group is dead: drop its record (fallback containment only; a file unlink, so in
        the spawner pool rather than on the loop)."""
        containment = self._containment
        if containment is not None and not containment.entered and self._pid is not None:
            with contextlib.suppress(RuntimeError):
                _spawner().submit(containment.finished, self._pid)

    async def kill(self) -> ProcessResult:
        """Kill the whole tree and wait for the main process to be reaped."""
        assert self._done is not None
        if not self._done.done():
            self._killed = True
            self._start_kill()
        result = await asyncio.shield(self._done)
        if self._kill_task is not None:
            await asyncio.shield(self._kill_task)
        return result

    async def wait(self) -> ProcessResult:
        assert self._done is not None
        return await asyncio.shield(self._done)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer has any member."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _signal_procs(procs: list[psutil.Process], sig: int) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            p.send_signal(sig)
            alive.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return alive


async def kill_tree(pgid: int, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group and any descendants that left it, then SIGKILL what remains.

    The leader's session id is its pid (start_new_session), so ``killpg(pid)`` reaches every
    process that stayed in the group even after the leader has exited. Descendants that called
    setsid themselves are found with psutil before any signal is sent (afterwards they would
    be orphans re-parented away from the leader).
    """
    escaped: list[psutil.Process] = []
    try:
        for child in psutil.Process(pgid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(child.pid) != pgid:
                    escaped.append(child)
    except (psutil.Error, ProcessLookupError):
        pass
    group_alive = _signal_group(pgid, signal.SIGTERM)
    escaped = _signal_procs(escaped, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (group_alive or escaped) and time.monotonic() < deadline:
        await asyncio.sleep(_KILL_POLL_S)
        # The leader's pidfd callback reaps it; a zombie leader would keep the group "alive".
        group_alive = _signal_group(pgid, 0) and not _only_zombies(pgid)
        escaped = [p for p in escaped if _running(p)]
    _signal_group(pgid, signal.SIGKILL)
    _signal_procs(escaped, signal.SIGKILL)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _only_zombies(pgid: int) -> bool:
    # Only consulted while a kill is in progress, never on the happy path.
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except (ProcessLookupError, psutil.Error):
            continue
    return True


async def run_process(spec: ProcessSpec) -> ProcessResult:
    """Run one command line to completion (convenience for callers that need no handle)."""
    proc = TaskProcess(spec)
    return await proc.start()
