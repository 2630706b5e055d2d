"""The copies of a node's output that go to the control plane, so they outlive the node (agent
protocol, "Output copies"): a task's stdout and stderr with the report that ends its attempt, and
now and then while it runs (for a node lost before it ends); the start task's with the report that
ends it; the agent's own log now and then and when it leaves.

Only the last KEPT_BYTES of each file travel (with the file's full size): enough for the error
at the end of a log, bounded whatever a task prints. The files are the task's to write: it may
have swapped one for a link to a file only root can read, so they are opened as the node file
server opens what it serves, one component at a time without following links
(`fileserver.locate`), and anything but a regular file is sent as empty.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.agent.fileserver import locate
from shoal.agent.layout import STDERR_FILE, STDOUT_FILE, task_folder_parts

# 16 KiB a file (about 200 lines, enough for the error at its end) bounds the store: at most
# 32 KiB a task, gone with its retention.
KEPT_BYTES = 16 * 1024
# Reports are resent until acknowledged; a sync carries copies up to this many bytes (of base64)
# and leaves the rest of its reports for the next one, so a burst of completions of chatty tasks
# never makes a sync body larger than the control plane takes.
COPY_BUDGET_PER_SYNC = 4 * 1024 * 1024
# A running attempt's output is copied when it first has some, then at most this often while it
# grows: what a lost node takes with it is at most this much of its tasks' output, and a node of
# chatty tasks costs the store one small write per task this often.
RUNNING_COPY_INTERVAL_S = 60.0
# How often the agent looks whether a copy is due (one stat per running task's file).
COPY_CHECK_S = 5.0
# The agent's own log goes when the start task ends, when the agent leaves, and at most this
# often between, when it grew.
AGENT_LOG_INTERVAL_S = 300.0
# The agent's log is its stdout (the local provider points it at `agent.log`).
AGENT_LOG_FD = 1
START_TASK_PARTS = ("startup",)
AttemptKey = tuple[str, str, int]


def _tail_of_fd(fd: int) -> tuple[bytes, int]:
    size = os.fstat(fd).st_size
    return os.pread(fd, KEPT_BYTES, max(0, size - KEPT_BYTES)), size


def tail_of(root: Path, folder: tuple[str, ...], name: str) -> tuple[bytes, int]:
    """(the last KEPT_BYTES of the file ``name`` of ``folder`` below the node root, its size);
    (b"", 0) when it is missing or not a regular file."""
    try:
        found = locate(root, list(folder), [name], name)
    except Exception:  # noqa: BLE001 - a missing or unsafe file has no output to keep
        return b"", 0
    try:
        if found.fd is None or not stat.S_ISREG(found.st.st_mode):
            return b"", 0
        return _tail_of_fd(found.fd)
    except OSError:
        return b"", 0
    finally:
        with contextlib.suppress(OSError):
            found.close()


def file_tail(path: Path, *, follow: bool = False) -> tuple[bytes, int] | None:
    """(last KEPT_BYTES, size) of a regular file, never through a link unless ``follow``; None
    when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError:
        return None
    try:
        return _tail_of_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _encoded(data: bytes, size: int) -> dict[str, Any]:
    return {"size": size, "tail": base64.b64encode(data).decode("ascii")}


def _folder_copy(root: Path, folder: tuple[str, ...]) -> dict[str, Any]:
    return {key: _encoded(*tail_of(root, folder, name)) for key, name in (("stdout", STDOUT_FILE),
                                                                            ("stderr", STDERR_FILE))}


def output_copy(root: Path, job_id: str, task_id: str) -> dict[str, Any]:
    """The `output` field of a task's report."""
    return _folder_copy(root, task_folder_parts(job_id, task_id))


def start_task_copy(root: Path) -> dict[str, Any]:
    """The `output` field of the start task's report."""
    return _folder_copy(root, START_TASK_PARTS)


def agent_log_copy() -> dict[str, Any] | None:
    """The `agentLog` field: the last bytes of the agent's own log, when its stdout is a file.
    Its stdout is open for writing only: the file is opened again, for reading, through /proc
    (the agent's own descriptor, not a path anyone else chose)."""
    try:
        if not stat.S_ISREG(os.fstat(AGENT_LOG_FD).st_mode):
            return None
    except OSError:
        return None
    copy = file_tail(Path(f"/proc/self/fd/{AGENT_LOG_FD}"), follow=True)
    return _encoded(*copy) if copy is not None else None


def _sizes(root: Path, folder: tuple[str, ...]) -> tuple[int, int]:
    """The sizes of a folder's stdout and stderr, to see whether they grew (nothing is read)."""
    sizes = []
    for name in (STDOUT_FILE, STDERR_FILE):
        try:
            sizes.append(os.lstat(root.joinpath(*folder, name)).st_size)
        except OSError:
            sizes.append(0)
    return sizes[0], sizes[1]


def _log_size() -> int:
    try:
        return os.fstat(AGENT_LOG_FD).st_size
    except OSError:
        return 0


class CopyClock:
    """Which copies the next sync carries besides reports: running attempts' output that grew
    (the first as soon as there is some, then every RUNNING_COPY_INTERVAL_S) and the agent's log.
    A copy counts as sent once a sync that carried it succeeded; a failed one goes again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sent: dict[AttemptKey, tuple[tuple[int, int], float]] = {}
        self._due: set[AttemptKey] = set()
        self._log_sent: tuple[int, float] = (0, time.monotonic())
        self.log_wanted = False

    def check(self, running: Iterable[AttemptKey]) -> bool:
        """Look (every COPY_CHECK_S); True when something is due."""
        now = time.monotonic()
        keys = set(running)
        for gone in set(self._sent) - keys:
            del self._sent[gone]
        self._due &= keys
        for key in keys:
            sizes = _sizes(self.root, task_folder_parts(key[0], key[1]))
            last = self._sent.get(key)
            if sizes == (last[0] if last else (0, 0)):
                continue
            if last is None or now - last[1] >= RUNNING_COPY_INTERVAL_S:
                self._due.add(key)
        size, when = self._log_sent
        if _log_size() != size and now - when >= AGENT_LOG_INTERVAL_S:
            self.log_wanted = True
        return self.has_due()

    def has_due(self) -> bool:
        return bool(self._due) or self.log_wanted

    def take(self, budget: int) -> tuple[dict[str, Any], Any]:
        """The body fields of what is due, within ``budget`` bytes of base64, and a receipt for
        `delivered`."""
        fields: dict[str, Any] = {}
        copies: list[dict[str, Any]] = []
        receipt_keys = []
        spent = 0
        for key in list(self._due):
            if len(copies) >= MAX_RUNNING_COPIES_PER_SYNC or spent >= budget:
                break
            output = output_copy(self.root, key[0], key[1])
            spent += sum(len(part["tail"]) for part in output.values())
            copies.append({"jobId": key[0], "taskId": key[1], "attempt": key[2], "output": output})
            receipt_keys.append((key, (output["stdout"]["size"], output["stderr"]["size"])))
        if copies:
            fields["runningOutputs"] = copies
        log_size = None
        if self.log_wanted:
            log_copy = agent_log_copy()
            if log_copy is not None:
                fields["agentLog"] = log_copy
                log_size = log_copy["size"]
        return fields, (receipt_keys, log_size, self.log_wanted)

    def delivered(self, receipt: Any) -> None:
        keys, log_size, log_was_wanted = receipt
        now = time.monotonic()
        for key, sizes in keys:
            self._sent[key] = (sizes, now)
            self._due.discard(key)
        if log_was_wanted:
            self._log_sent = (log_size or 0, now)
            self.log_wanted = False


# At most this many running attempts' copies a sync (api/agent_bodies.MAX_RUNNING_COPIES).
MAX_RUNNING_COPIES_PER_SYNC = 64


def copy_bytes(report: dict[str, Any]) -> int:
    output = report.get("output") or {}
    return sum(len(part.get("tail", "")) for part in output.values() if isinstance(part, dict))
