"""The agent's end of the per-user spawners (:mod:`shoal.agent.spawner`).

A root agent starts one spawner per lasting user of its node (the pool's auto-user, named pool
accounts) the first time it runs a task as that user, and reuses it for every later task: a
task then costs the agent one message and the spawner one vfork+exec, as a task of the agent's
own user does. Task-scope users live for one task, so they keep the one-off switch in
:mod:`shoal.agent.process`.

Blocking calls (:meth:`UserLauncher.spawn`, :func:`launcher_for`) run in the agent's spawner
threads. Exits arrive on one reader thread per spawner and go to the callback registered for
that pid. What the spawner says is read defensively: it runs as the task user, so its tasks can
kill it (which fails their own running tasks on this node, nothing else).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import itertools
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal.agent.spawner import receive_message, send_message

log = logging.getLogger("shoal.agent.launcher")

START_TIMEOUT_S = 20.0
"""A fresh interpreter that has not said it is ready in this time (a machine under heavy load
takes about a second) is given up on: that spawn fails and the next one tries again."""
SPAWN_TIMEOUT_S = 30.0

ExitCallback = Callable[[int], object]
"""Called (on the reader thread) with Popen's returncode convention: negative for a signal."""


class LauncherGone(OSError):
    """The spawner died or stopped answering."""


class UserLauncher:
    """One spawner process running as one user."""

    def __init__(self, user: pwd.struct_passwd, groups: list[int]) -> None:
        self.user = user
        self.groups = groups
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._waiters: dict[int, ExitCallback] = {}
        self._exits: dict[int, int] = {}  # exits that came before their waiter was registered
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.closed = False
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "shoal.agent.spawner", str(theirs.fileno()), str(user.pw_uid),
                 str(user.pw_gid), ",".join(str(g) for g in groups)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                cwd="/", env=_spawner_environment(),
            )
        finally:
            theirs.close()
        self._reader = threading.Thread(target=self._read, name=f"shoal-launcher-{user.pw_name}", daemon=True)
        self._reader.start()
        try:
            self._ready.result(timeout=START_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, LauncherGone) as exc:
            self.close()
            raise LauncherGone(errno.EIO, f"the process launcher for user {user.pw_name} did not start") from exc

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(self, argv: list[str], cwd: str | os.PathLike[str], env: Mapping[str, str],
              fds: tuple[int, int, int]) -> int:
        """Start ``argv`` as this user; its pid, or the OSError the spawn met (named after the
        working directory when it failed before exec, as Popen's are)."""
        # Opened here, as root: missing, it is the agent's FileNotFoundError named after cwd.
        directory = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return self._spawn(argv, cwd, env, (*fds, directory))
        finally:
            os.close(directory)

    def _spawn(self, argv: list[str], cwd: str | os.PathLike[str], env: Mapping[str, str],
               fds: tuple[int, ...]) -> int:
        request_id = next(self._ids)
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._state_lock:
            if self.closed:
                raise LauncherGone(errno.EPIPE, "the process launcher has stopped")
            self._pending[request_id] = answer
        try:
            with self._send_lock:
                send_message(self._sock, {"id": request_id, "argv": argv, "cwd": os.fspath(cwd), "env": dict(env)},
                             fds)
            reply = answer.result(timeout=SPAWN_TIMEOUT_S)
        except (OSError, concurrent.futures.TimeoutError) as exc:
            self.close()
            raise LauncherGone(errno.EIO, f"the process launcher for user {self.user.pw_name} failed: {exc}") from exc
        finally:
            with self._state_lock:
                self._pending.pop(request_id, None)
        pid = reply.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            return pid
        if isinstance(reply.get("errno"), int):
            raise OSError(reply["errno"], str(reply.get("strerror") or "error"), reply.get("filename"))
        raise ValueError(str(reply.get("error") or "the spawn was refused")[:500])

    def on_exit(self, pid: int, callback: ExitCallback) -> None:
        """Call ``callback`` with ``pid``'s returncode once it has exited (at once if it has)."""
        with self._state_lock:
            code = self._exits.pop(pid, None)
            if code is None:
                if not self.closed:
                    self._waiters[pid] = callback
                    return
                code = -signal.SIGKILL
        _call(callback, code)

    def close(self) -> None:
        """Stop the spawner; the tasks it started are killed and reported as killed."""
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
            waiters, self._waiters = self._waiters, {}
            pending = list(self._pending.values())
        for future in pending:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(LauncherGone(errno.EPIPE, "the process launcher has stopped"))
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self._ready.set_exception(LauncherGone(errno.EPIPE, "the process launcher has stopped"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        for pid, callback in waiters.items():
            # Orphans of the spawner: nobody would reap them or report them now.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _call(callback, -signal.SIGKILL)

    def _read(self) -> None:
        try:
            while True:
                received = receive_message(self._sock)
                if received is None:
                    break
                self._dispatch(received[0])
        except (OSError, ValueError) as exc:
            if not self.closed:
                log.warning("process launcher for user %s: %s", self.user.pw_name, exc)
        finally:
            if not self.closed:
                log.warning("the process launcher for user %s stopped", self.user.pw_name)
            self.close()
            self._sock.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        exited = message.get("exited")
        if isinstance(exited, int) and not isinstance(exited, bool):
            code = message.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) else -signal.SIGKILL
            with self._state_lock:
                callback = self._waiters.pop(exited, None)
                if callback is None:
                    self._exits[exited] = code
            if callback is not None:
                _call(callback, code)
            return
        if "ready" in message:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self._ready.set_result(int(message["ready"]))
            return
        request_id = message.get("id")
        with self._state_lock:
            future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_result(message)


def _call(callback: ExitCallback, code: int) -> None:
    try:
        callback(code)
    except RuntimeError:
        pass  # the agent's loop has closed: it is stopping, and reports nothing more
    except Exception:
        log.exception("an exit callback failed")


def _spawner_environment() -> dict[str, str]:
    # The agent's own environment is already minimal (the provider built it); the spawner needs
    # only what finds the interpreter's packages.
    return {name: value for name, value in os.environ.items() if name in ("PATH", "PYTHONPATH", "LANG", "LC_ALL")}


_launchers: dict[tuple[int, int, str], UserLauncher] = {}
_launchers_lock = threading.Lock()


def launcher_for(user: pwd.struct_passwd) -> UserLauncher:
    """The running spawner for ``user``, started if there is none (blocking)."""
    key = (user.pw_uid, user.pw_gid, user.pw_name)
    with _launchers_lock:
        launcher = _launchers.get(key)
        if launcher is not None and not launcher.closed:
            return launcher
        launcher = UserLauncher(user, os.getgrouplist(user.pw_name, user.pw_gid))
        _launchers[key] = launcher
        return launcher


def close_users(users: Iterable[pwd.struct_passwd]) -> None:
    """Stop the spawners of ``users`` (their node is stopping, or they are about to be removed;
    ``userdel`` refuses a user who still runs a process)."""
    keys = {(user.pw_uid, user.pw_gid, user.pw_name) for user in users}
    with _launchers_lock:
        launchers = [_launchers.pop(key) for key in keys if key in _launchers]
    for launcher in launchers:
        launcher.close()


def usable() -> bool:
    """Spawners need root (to become the user) and Linux's posix_spawn with setsid."""
    return os.geteuid() == 0 and hasattr(os, "posix_spawn") and sys.platform.startswith("linux")

