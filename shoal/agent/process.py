"""Run one task command line as a real process tree, the way Batch does.

The command line is split with :mod:`shlex` and executed directly (no shell, so ``$HOME`` stays
literal), in the task's working directory, with stdout/stderr going to files, in a session of
its own so that the whole tree can be killed through its process group.

Why not ``asyncio.create_subprocess_exec``: on Python 3.11 its default child watcher
(``ThreadedChildWatcher``) starts one thread per child. A node agent runs hundreds of short
tasks per second, so instead we spawn with :class:`subprocess.Popen` (which vforks) and learn
about the exit through a pidfd registered with the event loop: no thread, one fd per task.
Where pidfds are unavailable (non-Linux, kernel < 5.3) we fall back to a thread per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

KILL_GRACE_S = 2.0
"""How long a killed tree gets between SIGTERM and SIGKILL."""
_KILL_POLL_S = 0.02
# Shell convention for a process ended by a signal: 128 + signal number.
_SIGNAL_EXIT_BASE = 128

_HAVE_PIDFD = hasattr(os, "pidfd_open")
_devnull_fd: int | None = None


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
    # Tasks must not leave processes behind; the start task may (it often starts daemons).
    kill_leftovers: bool = True


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


@dataclass
class TaskProcess:
    """One running (or finished) command line and its process tree."""

    spec: ProcessSpec
    start_time: datetime = field(default_factory=utc_now)
    _popen: subprocess.Popen[bytes] | None = None
    _done: asyncio.Future[ProcessResult] | None = None
    _timer: asyncio.TimerHandle | None = None
    _timed_out: bool = False
    _killed: bool = False
    _kill_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> asyncio.Future[ProcessResult]:
        """Spawn the process; the returned future resolves with its result (never raises)."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.start_time = utc_now()
        failure = self._spawn()
        if failure is not None:
            self._done.set_result(ProcessResult(self.start_time, utc_now(), None, failure))
            return self._done
        assert self._popen is not None
        if self.spec.max_wall_clock_s is not None:
            self._timer = loop.call_later(max(0.0, self.spec.max_wall_clock_s), self._on_timeout)
        if _HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(self._popen.pid)
            except OSError:
                pidfd = -1
            if pidfd >= 0:
                loop.add_reader(pidfd, self._on_pidfd, loop, pidfd)
                return self._done
        loop.create_task(self._wait_in_thread())
        return self._done

    def _spawn(self) -> Failure | None:
        spec = self.spec
        try:
            args = shlex.split(spec.command_line)
        except ValueError as exc:
            return Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot parse the command line: {exc}")
        if not args:
            return Failure(USER_ERROR, "CommandLaunchFailed", "The command line is empty")
        out = err = -1
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            out = os.open(spec.stdout_path, flags, 0o664)
            err = os.open(spec.stderr_path, flags, 0o664)
            user = spec.user
            if user is not None:
                for fd in (out, err):
                    os.fchown(fd, user.pw_uid, user.pw_gid)
            self._popen = subprocess.Popen(
                args,
                stdin=_devnull(),
                stdout=out,
                stderr=err,
                cwd=spec.cwd,
                env=dict(spec.env),
                start_new_session=True,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if user else None,
            )
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == Path(spec.cwd):
                return Failure(USER_ERROR, "CommandLaunchFailed", f"Working directory missing: {spec.cwd}")
            return Failure(USER_ERROR, "CommandProgramNotFound", f"The program {args[0]!r} was not found")
        except PermissionError as exc:
            return Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot execute {args[0]!r}: {exc.strerror}")
        except OSError as exc:
            return Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot start {args[0]!r}: {exc}")
        finally:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
        return None

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
        assert self._popen is not None
        if self.spec.kill_leftovers and not self._kill_task:
            # Background children of a finished task die with it; one syscall, usually ESRCH.
            _signal_group(self._popen.pid, signal.SIGKILL)
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
        if self._kill_task is None and self._popen is not None:
            self._kill_task = asyncio.get_running_loop().create_task(kill_tree(self._popen))

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


async def kill_tree(popen: subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group and any descendants that left it, then SIGKILL what remains.

    The leader's session id is its pid (start_new_session), so ``killpg(pid)`` reaches every
    process that stayed in the group even after the leader has exited. Descendants that called
    setsid themselves are found with psutil before any signal is sent (afterwards they would
    be orphans re-parented away from the leader).
    """
    pgid = popen.pid
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
