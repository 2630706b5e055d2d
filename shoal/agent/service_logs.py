"""Uploading a node's service logs to a blob container (ComputeNode_UploadBatchServiceLogs).

The files are the node agent's own log (its stdout, where the local provider writes
`agent.log`) and the start task's stdout/stderr, each uploaded when it holds messages from the
asked time range (modified at or after `startTime`). As on Azure, the answer says how many files
will go and the upload runs on afterwards; a failure is logged (the URL without its SAS), since
nobody waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("shoal.agent.service_logs")

STDOUT_FD = 1


class LogsRefused(Exception):
    pass


def _parse_time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LogsRefused(f"{name} must be a string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise LogsRefused(f"{name} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise LogsRefused(f"{name} has no time zone")
    return parsed


def _candidates(startup_dir: Path) -> list[tuple[str, str]]:
    """(blob name, path to open) of every log the node has."""
    found = []
    with_stdout = os.fstat(STDOUT_FD) if _fd_open(STDOUT_FD) else None
    if with_stdout is not None and stat.S_ISREG(with_stdout.st_mode):
        found.append(("agent.log", f"/proc/self/fd/{STDOUT_FD}"))
    for name in ("stdout.txt", "stderr.txt"):
        path = startup_dir / name
        if path.is_file() and not path.is_symlink():
            found.append((f"startup/{name}", str(path)))
    return found


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def choose(request: Any, startup_dir: Path) -> tuple[str, str, list[tuple[str, str]]]:
    """The container, the folder in it and the files a request asks for (blocking)."""
    if not isinstance(request, dict):
        raise LogsRefused("the body must be an object")
    container, folder = request.get("containerUrl"), request.get("directory")
    if not isinstance(container, str) or not isinstance(folder, str) or not folder:
        raise LogsRefused("containerUrl and directory must be strings")
    start = _parse_time(request.get("startTime"), "startTime")
    _parse_time(request.get("endTime"), "endTime")  # a log is whole: it may hold more than asked for
    chosen = []
    for blob, path in _candidates(startup_dir):
        try:
            modified = datetime.fromtimestamp(os.stat(path).st_mtime).astimezone()
        except OSError:
            continue
        if start is None or modified >= start:  # else nothing in it since startTime
            chosen.append((blob, path))
    return container, folder, chosen


def _upload_all(container: str, folder: str, files: list[tuple[str, str]]) -> None:
    from shoal import storage

    for blob, path in files:
        try:
            with open(path, "rb") as data:
                storage.upload(container, f"{folder}/{blob}", data, {})
        except (OSError, storage.StorageError) as exc:
            log.error("uploading the service log %s to %s failed: %s", blob, storage.redact(container), exc)


async def upload(request: Any, startup_dir: Path) -> int:
    """Start uploading what ``request`` asks for; how many files will go."""
    container, folder, files = await asyncio.to_thread(choose, request, startup_dir)
    task = asyncio.ensure_future(asyncio.to_thread(_upload_all, container, folder, files))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return len(files)


_running: set[asyncio.Future[None]] = set()
