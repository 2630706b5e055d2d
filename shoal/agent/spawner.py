"""A per-user process spawner: the far end of :mod:`shoal.agent.launcher`.

Started by a root agent for one lasting node user (the pool's auto-user, a named pool account),
it imports what it needs, drops to that user for good, and from then on starts that user's task
processes with ``posix_spawn`` (a vfork: no page copying) and reports how they exit. Spawning
from the agent instead would cost either a fork of the whole agent (Popen's own user switch
cannot vfork) or a second exec per task (``setpriv``), each about as much as the task's own
exec; see docs/security.md for the figures.

Kept to the standard library and to one thread: it runs as the task user, whose tasks are its
children, so it holds nothing a task should not see. It is not dumpable, so tasks of the same
user cannot ptrace it or open its descriptors through ``/proc``; they can kill it, which only
fails that user's own running tasks on this node.

Messages on the socket (both ways) are a 4-byte big-endian length and a JSON object. A spawn
request carries four descriptors (stdin, stdout, stderr and the working directory, which the
agent opened as root: a task may run in a folder whose parents its user cannot walk, as it
could when the agent switched users itself) with its first bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import struct
import sys
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""A spawn request holds a command line (≤ 8,191 characters) and an environment; the control
plane bounds a request body at 1 MB, so 4 MiB is never a legitimate message."""
SPAWN_FDS = 4
TASK_OOM_SCORE_ADJ = 500

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
# Signals a task must start with at their defaults: Python ignores SIGPIPE and SIGXFSZ, and
# ignored signals survive exec (Popen's restore_signals does the same); SIGCHLD is ours.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)


def send_message(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    frame = HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
    else:
        sent = sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def receive_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the descriptors sent with it; None at end of stream. Descriptors arrive
    close-on-exec, so a spawn running meanwhile cannot inherit them."""
    fds: list[int] = []
    header = b""
    while len(header) < HEADER.size:
        space = socket.CMSG_SPACE(max_fds * 4) if max_fds else 0
        chunk, ancillary, _flags, _addr = sock.recvmsg(HEADER.size - len(header), space,
                                                        socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        if not chunk:
            _close_all(fds)
            return None
        header += chunk
    (length,) = HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        _close_all(fds)
        raise ValueError(f"a {length}-byte message is over the {MAX_MESSAGE_BYTES}-byte bound")
    body = bytearray()
    while len(body) < length:
        chunk = sock.recv(min(length - len(body), 1 << 20))
        if not chunk:
            _close_all(fds)
            return None
        body += chunk
    try:
        message = json.loads(body)
    except ValueError:
        _close_all(fds)
        raise
    if not isinstance(message, dict):
        _close_all(fds)
        raise ValueError("a message is not a JSON object")
    return message, fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Drop root for good: groups first, while still allowed to set them."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError("the user switch did not take")
    # A credential change resets both flags, so set them afterwards.
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], cwd: str, env: dict[str, str], fds: list[int]) -> int:
    """Start ``argv`` in ``cwd`` in a session of its own, as Popen would have: the program is
    looked up on the *task's* PATH, and a missing working directory is reported as such."""
    stdin, stdout, stderr, directory = fds
    try:
        os.fchdir(directory)
    except OSError as exc:  # named after cwd, which the agent reads as "before exec"
        raise OSError(exc.errno, exc.strerror, cwd) from None
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)]
    program = argv[0]
    candidates = [program] if "/" in program else [os.path.join(d, program) for d in os.get_exec_path(env)]
    first_error: OSError | None = None
    for path in candidates:
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True,
                                  setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        except (FileNotFoundError, NotADirectoryError) as exc:
            first_error = first_error or exc
        except PermissionError as exc:
            first_error = exc if not isinstance(first_error, PermissionError) else first_error
    if first_error is None or not isinstance(first_error, PermissionError):
        raise FileNotFoundError(2, "No such file or directory", program)
    raise PermissionError(first_error.errno, first_error.strerror, program)


def _answer_spawn(message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    request_id = message.get("id")
    try:
        argv, cwd, env = message["argv"], message["cwd"], message["env"]
        if len(fds) != SPAWN_FDS:
            raise ValueError(f"a spawn needs {SPAWN_FDS} descriptors, got {len(fds)}")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
                and isinstance(cwd, str) and isinstance(env, dict)):
            raise ValueError("a malformed spawn request")
        return {"id": request_id, "pid": spawn(argv, cwd, env, fds)}
    except OSError as exc:
        filename = os.fsdecode(exc.filename) if exc.filename is not None else None
        return {"id": request_id, "errno": exc.errno, "strerror": exc.strerror, "filename": filename}
    except Exception as exc:  # whatever a request holds must fail that spawn, not the spawner
        return {"id": request_id, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        _close_all(fds)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send_message(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(sock: socket.socket) -> None:
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    send_message(sock, {"ready": os.getpid()})
    while True:
        for key, _events in selector.select():
            if key.data == "child":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
                _reap(sock)
                continue
            received = receive_message(sock, SPAWN_FDS)
            if received is None:
                return  # the agent is gone; the node's containment deals with what runs
            message, fds = received
            send_message(sock, _answer_spawn(message, fds))
            _reap(sock)  # a child that ended before SIGCHLD was handled


def main(argv: list[str]) -> int:
    fd, uid, gid = int(argv[0]), int(argv[1]), int(argv[2])
    groups = [int(g) for g in argv[3].split(",") if g] if len(argv) > 3 else []
    parent = os.getppid()
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    os.chdir("/")
    # Past its node's memory the kernel kills one of the node's processes: a task, not the agent
    # (tasks inherit this; raising one's own score needs no privilege).
    with contextlib.suppress(OSError):
        with open("/proc/self/oom_score_adj", "w") as score:
            score.write(str(TASK_OOM_SCORE_ADJ))
    become(uid, gid, groups)
    if os.getppid() != parent:
        return 1  # the agent died before the death signal was armed
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
