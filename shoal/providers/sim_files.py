"""Files of simulated nodes: an in-memory node root each, served by one loopback file server.

The server speaks the node file routes of the agent protocol ("Node files": listings paged by
cursor, ranges, HEAD, DELETE, ``base=`` confinement, the same refusals), so the control plane's
file APIs work on simulated nodes as on real ones. A node's files are found by the node token
the control plane presents (the protocol allows no path in a ``fileServerUrl``, so every
simulated node of a process shares one URL; the token is what tells them apart, and it is the
credential the real file server checks too).

A task folder is kept as a few fields until someone looks inside it, so a million finished
tasks cost a few hundred bytes each.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shoal.agent.fileserver import LIST_PAGE_MAX, MAX_LIST_DEPTH, FileError, path_parts
from shoal.agent.layout import (
    JOB_SEGMENT,
    NODE_SUBDIRS,
    STDERR_FILE,
    STDOUT_FILE,
    WORKING_DIR,
    WORKITEMS_DIR,
    job_folder_parts,
)

# What a root agent's folders and files look like (the agent's umask is 077).
NODE_DIR_MODE = 0o40755
TASK_DIR_MODE = 0o40700
FILE_MODE = 0o100600
_PATTERN = b"simulated output line\n"
# At most 19 digits: every offset fits an int64, and no huge number is ever parsed.
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
CHUNK = 256 * 1024


class File:
    __slots__ = ("data", "size", "created", "modified")

    def __init__(self, data: bytes = b"", created: float | None = None, synthetic_size: int | None = None) -> None:
        self.created = self.modified = created if created is not None else time.time()
        self.data = None if synthetic_size is not None else data
        self.size = synthetic_size if synthetic_size is not None else len(data)

    def read(self, start: int, length: int) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data[start:start + length]
            return
        # A repeating pattern, cut at the same offsets whatever range is asked for.
        end = start + length
        offset = start
        while offset < end:
            take = min(CHUNK, end - offset)
            phase = offset % len(_PATTERN)
            repeats = (phase + take) // len(_PATTERN) + 1
            yield (_PATTERN * repeats)[phase:phase + take]
            offset += take


class Dir:
    __slots__ = ("_entries", "created", "modified", "mode")

    def __init__(self, created: float | None = None, mode: int = NODE_DIR_MODE) -> None:
        self.created = self.modified = created if created is not None else time.time()
        self._entries: dict[str, Entry] | None = {}
        self.mode = mode

    @property
    def entries(self) -> dict[str, Entry]:
        assert self._entries is not None
        return self._entries


class TaskDir(Dir):
    """A task's folder: stdout, stderr and an empty ``wd``, made into entries only when looked at."""

    __slots__ = ("_stdout", "_stderr", "_synthetic", "_ended")

    def __init__(self, created: float) -> None:
        super().__init__(created, TASK_DIR_MODE)
        self._entries = None
        self._stdout = self._stderr = b""
        self._synthetic: int | None = None
        self._ended: float | None = None

    def finish(self, stdout: bytes, stderr: bytes, synthetic: int | None, ended: float) -> None:
        if self._entries is not None:
            for name, data, size in ((STDOUT_FILE, stdout, synthetic), (STDERR_FILE, stderr, None)):
                entry = self._entries.get(name)
                if isinstance(entry, File):
                    self._entries[name] = File(data, entry.created, size)
                    self._entries[name].modified = ended
            return
        self._stdout, self._stderr, self._synthetic, self._ended = stdout, stderr, synthetic, ended

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            out = File(self._stdout, self.created, self._synthetic)
            err = File(self._stderr, self.created)
            if self._ended is not None:
                out.modified = err.modified = self._ended
            self._entries = {STDOUT_FILE: out, STDERR_FILE: err, WORKING_DIR: Dir(self.created, TASK_DIR_MODE)}
            self._stdout = self._stderr = b""
        return self._entries


Entry = File | Dir


class NodeFiles:
    """One simulated node root."""

    def __init__(self) -> None:
        self.root = Dir()
        self.reset()

    def reset(self) -> None:
        """A fresh node root (a new node, or a reimage)."""
        now = time.time()
        self.root = Dir(now)
        for name in NODE_SUBDIRS:
            self.root.entries[name] = Dir(now)

    def _workitems(self) -> Dir:
        folder = self.root.entries.get(WORKITEMS_DIR)
        if not isinstance(folder, Dir):
            folder = self.root.entries[WORKITEMS_DIR] = Dir()
        return folder

    def task_started(self, job_id: str, task_id: str) -> TaskDir:
        """The task's folder, made afresh for an attempt (an earlier attempt's files are replaced,
        as a rerun truncates stdout.txt and stderr.txt)."""
        now = time.time()
        job_folder, job_segment = job_folder_parts(job_id)
        job = _subdir(self._workitems(), job_folder, now)
        segment = _subdir(job, job_segment, now)
        folder = TaskDir(now)
        segment.entries[task_id] = folder
        segment.modified = now
        return folder

    def start_task_started(self) -> Dir:
        now = time.time()
        folder = Dir(now, TASK_DIR_MODE)
        folder.entries.update({STDOUT_FILE: File(b"", now), STDERR_FILE: File(b"", now),
                               WORKING_DIR: Dir(now, TASK_DIR_MODE)})
        self.root.entries["startup"] = folder
        return folder

    def delete_task_dir(self, job_id: str, task_id: str) -> None:
        job_folder, job_segment = job_folder_parts(job_id)
        job = self._workitems().entries.get(job_folder)
        segment = job.entries.get(job_segment) if isinstance(job, Dir) else None
        if not isinstance(segment, Dir):
            return
        segment.entries.pop(task_id, None)
        # As the agent tidies the empty job-1 and job folders.
        if not segment.entries:
            assert isinstance(job, Dir)
            job.entries.pop(job_segment, None)
            if not job.entries:
                self._workitems().entries.pop(job_folder, None)

    def delete_job_dir(self, job_id: str) -> None:
        job_folder, job_segment = job_folder_parts(job_id)
        if job_segment == JOB_SEGMENT and job_folder == job_id:
            self._workitems().entries.pop(job_id, None)
            return
        # A scheduled job's own folder below its schedule's (as NodeLayout.job_dir).
        job = self._workitems().entries.get(job_folder)
        if isinstance(job, Dir):
            job.entries.pop(job_segment, None)

    def locate(self, base: list[str], parts: list[str], rel: str) -> tuple[Dir | None, str, Entry]:
        """(parent, name, entry) of ``base/parts``; parent is None for the node root."""
        parent: Dir | None = None
        name = ""
        entry: Entry = self.root
        for component in base + parts:
            if not isinstance(entry, Dir):
                raise FileError(404, "FileNotFound", f"{rel!r} does not exist")
            child = entry.entries.get(component)
            if child is None:
                raise FileError(404, "FileNotFound", f"{rel!r} does not exist")
            parent, name, entry = entry, component, child
        return parent, name, entry


def _subdir(parent: Dir, name: str, now: float) -> Dir:
    child = parent.entries.get(name)
    if not isinstance(child, Dir):
        child = parent.entries[name] = Dir(now)
        parent.modified = now
    return child


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


def _mode(entry: Entry) -> int:
    return entry.mode if isinstance(entry, Dir) else FILE_MODE


def _wire_entry(name: str, entry: Entry) -> dict[str, Any]:
    is_dir = isinstance(entry, Dir)
    return {"name": name, "isDirectory": is_dir, "contentLength": entry.size if isinstance(entry, File) else 0,
            "creationTime": _iso(entry.created), "lastModified": _iso(entry.modified),
            "fileMode": f"0o{_mode(entry):o}"}


def list_page(folder: Dir, recursive: bool, after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The same walk as the real file server's: depth first, each folder's names sorted, the
    cursor being the last name of the previous page."""
    cursor = [p for p in after.split("/") if p]
    if not recursive:
        cursor = cursor[:1]
    entries: list[dict[str, Any]] = []
    # Each frame: (sorted names, folder, next index, prefix).
    stack: list[tuple[list[str], Dir, list[int], str]] = []

    def enter(directory: Dir, prefix: str, rest: list[str]) -> None:
        names = sorted(directory.entries)
        position = [0]
        stack.append((names, directory, position, prefix))
        if not rest:
            return
        head = rest[0]
        position[0] = bisect.bisect_left(names, head)
        if position[0] < len(names) and names[position[0]] == head:
            position[0] += 1
            child = directory.entries.get(head)
            if recursive and isinstance(child, Dir) and len(stack) < MAX_LIST_DEPTH:
                enter(child, f"{prefix}{head}/", rest[1:])

    enter(folder, "", cursor)
    while stack:
        names, directory, position, prefix = stack[-1]
        if position[0] >= len(names):
            stack.pop()
            continue
        name = names[position[0]]
        position[0] += 1
        child = directory.entries.get(name)
        if child is None:
            continue
        if len(entries) == limit:
            return entries, entries[-1]["name"]
        entries.append(_wire_entry(prefix + name, child))
        if recursive and isinstance(child, Dir) and len(stack) < MAX_LIST_DEPTH:
            enter(child, f"{prefix}{name}/", [])
    return entries, None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _token_key(token: str) -> bytes:
    # Looked up by digest: how long a lookup takes says nothing about the token presented.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class SharedFileServer:
    """The file routes for every simulated node of this process (run it with uvicorn)."""

    def __init__(self) -> None:
        self._nodes: dict[bytes, NodeFiles] = {}
        methods = ["GET", "HEAD", "DELETE"]
        self.app = Starlette(routes=[Route("/files", self._handle, methods=methods),
                                     Route("/files/{path:path}", self._handle, methods=methods)])

    def add(self, token: str, files: NodeFiles) -> None:
        self._nodes[_token_key(token)] = files

    def remove(self, token: str) -> None:
        self._nodes.pop(_token_key(token), None)

    def __len__(self) -> int:
        return len(self._nodes)

    async def _handle(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        files = self._nodes.get(_token_key(token)) if scheme == "ShoalNode" and token else None
        if files is None:
            return _error(401, "AuthenticationFailed", "missing or wrong node token")
        rel = request.path_params.get("path", "")
        try:
            base = path_parts(request.query_params.get("base", ""))
            parts = path_parts(rel)
            parent, name, entry = files.locate(base, parts, rel)
            return self._respond(request, parent if parts else None, name, entry, rel)
        except FileError as exc:
            return _error(exc.status, exc.code, exc.message)

    def _respond(self, request: Request, parent: Dir | None, name: str, entry: Entry, rel: str) -> Response:
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        if request.method == "DELETE":
            if parent is None:
                raise FileError(403, "OperationNotAllowed", "this folder itself cannot be deleted")
            if isinstance(entry, Dir) and entry.entries and not recursive:
                raise FileError(409, "DirectoryNotEmpty", f"{rel!r} is a non-empty directory; use recursive=true")
            parent.entries.pop(name, None)
            parent.modified = time.time()
            return Response(status_code=200)
        if isinstance(entry, Dir):
            headers = _headers(entry, 0, is_dir=True)
            if request.method == "HEAD":
                return Response(headers=headers)
            limit = _bounded_int(request.query_params.get("limit"), LIST_PAGE_MAX, 1, LIST_PAGE_MAX)
            page, following = list_page(entry, recursive, request.query_params.get("after", ""), limit)
            del headers["Content-Length"]
            return JSONResponse({"entries": page, "next": following}, headers=headers)
        return _file(request, entry)


def _headers(entry: Entry, length: int, is_dir: bool = False) -> dict[str, str]:
    return {"Content-Length": str(length), "Last-Modified": _http_date(entry.modified),
            "X-Shoal-Creation-Time": _http_date(entry.created), "X-Shoal-File-Mode": f"0o{_mode(entry):o}",
            "X-Shoal-Is-Directory": "true" if is_dir else "false", "Accept-Ranges": "bytes"}


def _file(request: Request, entry: File) -> Response:
    size = entry.size
    start, end, status = 0, size - 1, 200
    header = request.headers.get("range")
    if header:
        match = _RANGE.match(header.strip())
        if not match or (not match.group(1) and not match.group(2)):
            raise FileError(416, "InvalidRange", f"unsupported Range {header[:100]!r}")
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            start = max(0, size - int(match.group(2)))
        if start >= size or start > end:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    length = max(0, end - start + 1)
    headers = _headers(entry, length)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    if entry.data is not None:
        return Response(entry.data[start:start + length], status_code=status, headers=headers,
                        media_type="application/octet-stream")
    return StreamingResponse(_aiter(entry.read(start, length)), status_code=status, headers=headers,
                             media_type="application/octet-stream")


async def _aiter(chunks: Iterator[bytes]) -> Any:
    for chunk in chunks:
        yield chunk


def _bounded_int(raw: str | None, default: int, low: int, high: int) -> int:
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        value = default
    return min(max(value, low), high)
