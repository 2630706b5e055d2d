"""The copy of a task's stdout and stderr that goes to the control plane with its report, so the
output outlives the node (agent protocol, "Task output copies").

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
from pathlib import Path
from typing import Any

from shoal.agent.fileserver import locate
from shoal.agent.layout import STDERR_FILE, STDOUT_FILE, task_folder_parts

KEPT_BYTES = 64 * 1024
# Reports are resent until acknowledged; a sync carries copies up to this many bytes (of base64)
# and leaves the rest of its reports for the next one, so a burst of completions of chatty tasks
# never makes a sync body larger than the control plane takes.
COPY_BUDGET_PER_SYNC = 4 * 1024 * 1024


def tail_of(root: Path, job_id: str, task_id: str, name: str) -> tuple[bytes, int]:
    """(the last KEPT_BYTES of the task's file ``name``, its size); (b"", 0) when it is missing
    or not a regular file."""
    try:
        found = locate(root, list(task_folder_parts(job_id, task_id)), [name], name)
    except Exception:  # noqa: BLE001 - a missing or unsafe file has no output to keep
        return b"", 0
    try:
        if found.fd is None or not stat.S_ISREG(found.st.st_mode):
            return b"", 0
        size = os.fstat(found.fd).st_size
        start = max(0, size - KEPT_BYTES)
        return os.pread(found.fd, KEPT_BYTES, start), size
    except OSError:
        return b"", 0
    finally:
        with contextlib.suppress(OSError):
            found.close()


def output_copy(root: Path, job_id: str, task_id: str) -> dict[str, Any]:
    """The `output` field of a task's report."""
    copy = {}
    for key, name in (("stdout", STDOUT_FILE), ("stderr", STDERR_FILE)):
        data, size = tail_of(root, job_id, task_id, name)
        copy[key] = {"size": size, "tail": base64.b64encode(data).decode("ascii")}
    return copy


def copy_bytes(report: dict[str, Any]) -> int:
    output = report.get("output") or {}
    return sum(len(part.get("tail", "")) for part in output.values() if isinstance(part, dict))
