"""The node file server: the node root, read-only plus DELETE, over HTTP (agent protocol, "Node files").

Routes (all need ``Authorization: ShoalNode <node token>``):

- ``GET /files/{path}?base=&recursive=&after=&limit=`` on a directory: one page of its entries
  (``{"entries": [...], "next": cursor-or-null}``), names relative to that directory;
- ``GET /files/{path}?base=`` on a file: its bytes, ``Range: bytes=a-b`` honoured (206/416);
- ``HEAD`` the same, headers only; ``DELETE`` a file, or a directory with ``recursive=true``.

``base`` is a folder beneath the node root (a task's folder) that ``path`` is confined to.

Tasks write these trees and may plant symbolic links anywhere in them, or swap a folder for a
link while a request is under way. So a path is never handed to the kernel whole: it is opened
one component at a time, each relative to its parent's descriptor with ``O_NOFOLLOW``, and every
later step (stat, read, list, delete) goes through those descriptors. A link is never followed:
listings show it as a plain entry, and reading through it is refused.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import hmac
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shoal import byte_ranges

CHUNK_SIZE = 256 * 1024
MAX_PATH_BYTES = 4096  # Linux PATH_MAX
MAX_NAME_BYTES = 255  # Linux NAME_MAX
MAX_CONTROL_BODY_BYTES = 1024 * 1024  # 100 users with their keys
LIST_PAGE_MAX = 1000  # entries per listing page, as Batch's maxresults
# Each level of a recursive listing holds one open descriptor; deeper folders are listed but
# not descended into, so a task's deep tree cannot exhaust the agent's descriptors.
MAX_LIST_DEPTH = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO a task left behind must not hang the request.
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_O_PATH = getattr(os, "O_PATH", 0)  # Linux


class FileError(Exception):
    """A request the file server refuses: status, code and message for the error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


def _creation_ts(st: os.stat_result) -> float:
    # Linux has no portable birth time through os.stat; ctime is the closest we can offer.
    return getattr(st, "st_birthtime", st.st_ctime)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _file_entry(name: str, st: os.stat_result) -> dict[str, Any]:
    is_dir = stat.S_ISDIR(st.st_mode)
    return {
        "name": name,
        "isDirectory": is_dir,
        "contentLength": 0 if is_dir else st.st_size,
        "creationTime": _iso(_creation_ts(st)),
        "lastModified": _iso(st.st_mtime),
        "fileMode": f"0o{st.st_mode:o}",
    }


def path_parts(rel: str) -> list[str]:
    """The components of a relative path, refusing anything that could name a place outside it.

    Empty components (``a//b``, a leading or trailing slash) are dropped; ``.``, ``..``, NUL and
    backslashes are refused rather than interpreted."""
    if "\x00" in rel or "\\" in rel:
        raise FileError(403, "PathRefused", "the path contains a NUL or a backslash")
    if len(rel.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise FileError(403, "PathRefused", "the path is too long")
    parts = [p for p in rel.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise FileError(403, "PathRefused", "the path contains a '.' or '..' component")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise FileError(403, "PathRefused", "a path component is too long")
    return parts


def _os_error(exc: OSError, rel: str) -> FileError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileError(404, "FileNotFound", f"{rel!r} does not exist")
    if exc.errno == errno.ELOOP:
        return FileError(403, "SymbolicLink", f"{rel!r} goes through a symbolic link, which is not followed")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileError(403, "AccessDenied", f"{rel!r} is not readable by the agent")
    if exc.errno == errno.ENAMETOOLONG:
        return FileError(403, "PathRefused", "the path is too long")
    return FileError(404, "FileNotFound", f"{rel!r} cannot be opened ({errno.errorcode.get(exc.errno or 0, '?')})")


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


@dataclass
class Located:
    """An opened path: its descriptor (None for a link, FIFO or device, which are never opened), its
    parent's (None for the node root itself) and its name there."""

    fd: int | None
    parent_fd: int | None
    name: str
    st: os.stat_result
    is_base: bool

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def locate(root: Path, base: list[str], parts: list[str], rel: str) -> Located:
    """Open ``base/parts`` beneath ``root`` one component at a time, never following a link.

    Every component but the last must be a real directory (``O_DIRECTORY | O_NOFOLLOW``); the last
    is opened with ``O_NOFOLLOW`` too, so a link there fails with ELOOP instead of being followed.
    The caller owns (and must close) the returned descriptors."""
    components = base + parts
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in components[:-1]:
            child = _open_dir(name, fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        raise _os_error(exc, rel) from exc
    if not components:
        return Located(fd, None, "", os.fstat(fd), is_base=True)
    try:
        leaf, st = _open_leaf(components[-1], fd)
    except OSError as exc:
        os.close(fd)
        raise _os_error(exc, rel) from exc
    return Located(leaf, fd, components[-1], st, is_base=not parts)


def _open_leaf(name: str, dir_fd: int) -> tuple[int | None, os.stat_result]:
    """The last component and its stat; opened for reading only when it is a directory or a regular
    file. With O_PATH the entry is pinned without being opened, so a link, FIFO or device a task left
    there is only ever looked at, and the descriptor read later is of the very inode looked at."""
    if not _O_PATH:
        return _open_leaf_by_name(name, dir_fd)
    pinned = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(pinned)
        if stat.S_ISDIR(st.st_mode):
            return os.open(".", _DIR_FLAGS, dir_fd=pinned), st
        if not stat.S_ISREG(st.st_mode):
            return None, st
        try:
            # The magic link reopens the pinned inode itself: no second lookup by name to race.
            return os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_CLOEXEC), st
        except FileNotFoundError:  # no /proc: open by name again and make sure it is the same file
            fd, again = _open_leaf_by_name(name, dir_fd)
            if fd is not None and (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise FileNotFoundError(errno.ENOENT, "replaced while being opened") from None
            return fd, again
    finally:
        os.close(pinned)


def _open_leaf_by_name(name: str, dir_fd: int) -> tuple[int | None, os.stat_result]:
    try:
        fd = os.open(name, _LEAF_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise
        return None, st  # a link: never opened, though it may be deleted (the link, not its target)
    return fd, os.fstat(fd)


def _sorted_names(dir_fd: int) -> tuple[list[str], dict[str, str]]:
    """A directory's entry names as listings show them, sorted, and the on-disk name of each one
    shown differently. A task may create names that are not UTF-8, which JSON cannot carry: they
    are shown with replacement characters (and cannot be fetched by that name)."""
    names = os.listdir(dir_fd)  # plain strings: a 10^5-entry folder is read in tens of milliseconds
    on_disk: dict[str, str] = {}
    for i, name in enumerate(names):
        if not name.isascii():
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if shown != name:
                on_disk[shown] = name
                names[i] = shown
    names.sort()
    return names, on_disk


@dataclass
class _Frame:
    """One open directory of a listing walk: its entries and how far the walk has got."""

    fd: int
    names: list[str]
    on_disk: dict[str, str]
    index: int
    prefix: str

    def disk_name(self, shown: str) -> str:
        return self.on_disk.get(shown, shown)


def _enter(stack: list[_Frame], fd: int, prefix: str, cursor: list[str], recursive: bool) -> None:
    """Push the directory ``fd`` (owned from now on by the stack), positioned after ``cursor``."""
    try:
        names, on_disk = _sorted_names(fd)
    except OSError:
        os.close(fd)
        return
    frame = _Frame(fd, names, on_disk, 0, prefix)
    stack.append(frame)
    if not cursor:
        return
    head, rest = cursor[0], cursor[1:]
    frame.index = bisect.bisect_left(names, head)
    if frame.index < len(names) and names[frame.index] == head:
        # The cursor's own entry was on an earlier page: resume inside it, then after it.
        name = frame.disk_name(head)
        frame.index += 1
        if recursive and len(stack) < MAX_LIST_DEPTH:
            with contextlib.suppress(OSError):  # not a directory (or no longer one): nothing inside
                _enter(stack, _open_dir(name, fd), f"{prefix}{head}/", rest, recursive)


def list_page(dir_fd: int, recursive: bool, after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` entries below ``dir_fd`` that come after the cursor ``after``, and the cursor
    for the next page (None at the end).

    The order is a depth-first walk with each directory's entries sorted, so a cursor (the last
    name a page held) says exactly where the next page starts, and no page needs more than one
    directory's names in memory per level. Links are listed, never followed or descended into."""
    entries: list[dict[str, Any]] = []
    cursor = [p for p in after.split("/") if p]
    if not recursive:
        cursor = cursor[:1]
    stack: list[_Frame] = []
    try:
        _enter(stack, os.dup(dir_fd), "", cursor, recursive)
        while stack:
            frame = stack[-1]
            if frame.index >= len(frame.names):
                os.close(stack.pop().fd)
                continue
            shown = frame.names[frame.index]
            name = frame.disk_name(shown)
            frame.index += 1
            try:
                st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            except OSError:
                continue  # removed between listing and stat
            if len(entries) == limit:
                return entries, entries[-1]["name"]
            entries.append(_file_entry(frame.prefix + shown, st))
            if recursive and stat.S_ISDIR(st.st_mode) and len(stack) < MAX_LIST_DEPTH:
                with contextlib.suppress(OSError):  # replaced by a link or removed: not descended
                    _enter(stack, _open_dir(name, frame.fd), f"{frame.prefix}{shown}/", [], recursive)
        return entries, None
    finally:
        for frame in stack:
            with contextlib.suppress(OSError):
                os.close(frame.fd)


def delete(located: Located, recursive: bool, rel: str) -> None:
    """Remove what ``located`` names from its parent directory, by descriptor; links go, never their targets."""
    if located.is_base or located.parent_fd is None:
        raise FileError(403, "OperationNotAllowed", "this folder itself cannot be deleted")
    parent, name = located.parent_fd, located.name
    try:
        if not stat.S_ISDIR(located.st.st_mode):
            os.unlink(name, dir_fd=parent)
        elif recursive:
            # rmtree with dir_fd walks by descriptor and refuses to follow a link swapped in.
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.rmdir(name, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileError(409, "DirectoryNotEmpty",
                            f"{rel!r} is a non-empty directory; use recursive=true") from exc
        if exc.errno == errno.ENOENT:
            return  # already gone
        raise _os_error(exc, rel) from exc


class _DescriptorResponse(StreamingResponse):
    """A streamed file that closes its descriptor however the response ends (including a client
    that goes away before the first byte)."""

    def __init__(self, located: Located, fd: int, start: int, length: int, status: int,
                 headers: dict[str, str]) -> None:
        self.located = located
        super().__init__(_read_range(fd, start, length), status_code=status, headers=headers,
                         media_type="application/octet-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.located.close()


async def _read_range(fd: int, start: int, length: int) -> AsyncIterator[bytes]:
    offset, remaining = start, length
    while remaining > 0:
        chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK_SIZE, remaining), offset)
        if not chunk:
            break
        offset += len(chunk)
        remaining -= len(chunk)
        yield chunk


class FileServer:
    """A Starlette app over one node root, plus the uvicorn server that serves it."""

    def __init__(self, root: Path, token: str, controls: dict[str, Callable[[Any], Awaitable[Any]]] | None = None) -> None:
        self.root = Path(root).resolve()
        self.token = token
        # Orders of the control plane beyond files, by route name: "users" (agent/ssh.py),
        # "service-logs" (agent/service_logs.py). A handler's answer is the JSON reply.
        self._controls = dict(controls or {})
        route_methods = ["GET", "HEAD", "DELETE"]
        self.app = Starlette(
            routes=[
                Route("/files", self._handle, methods=route_methods),
                Route("/files/{path:path}", self._handle, methods=route_methods),
                Route("/users", self._control, methods=["PUT"]),
                Route("/service-logs", self._control, methods=["POST"]),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self.url: str | None = None

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"ShoalNode {self.token}".encode())

    async def _control(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "AuthenticationFailed", "missing or wrong node token")
        handler = self._controls.get(request.url.path.strip("/"))
        if handler is None:
            return _error(501, "NotSupported", "the agent does not run as root: it cannot do this")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_CONTROL_BODY_BYTES:
                return _error(413, "RequestBodyTooLarge", "the body is too large")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "InvalidBody", "the body is not JSON")
        from shoal.agent.service_logs import LogsRefused
        from shoal.agent.ssh import UsersRefused

        try:
            answer = await self._controls[request.url.path.strip("/")](payload)
        except UsersRefused as exc:
            return _error(exc.status, "UsersRefused", exc.message)
        except LogsRefused as exc:
            return _error(400, "LogsRefused", str(exc))
        return JSONResponse(answer) if answer is not None else Response(status_code=200)

    async def _handle(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "AuthenticationFailed", "missing or wrong node token")
        rel = request.path_params.get("path", "")
        try:
            base = path_parts(request.query_params.get("base", ""))
            parts = path_parts(rel)
            located = await asyncio.to_thread(locate, self.root, base, parts, rel)
        except FileError as exc:
            return _error(exc.status, exc.code, exc.message)
        handed_off = False
        try:
            response = await self._respond(request, located, rel)
            handed_off = isinstance(response, _DescriptorResponse)
            return response
        except FileError as exc:
            return _error(exc.status, exc.code, exc.message)
        finally:
            if not handed_off:
                located.close()

    async def _respond(self, request: Request, located: Located, rel: str) -> Response:
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        if request.method == "DELETE":
            await asyncio.to_thread(delete, located, recursive, rel)
            return Response(status_code=200)
        mode, fd = located.st.st_mode, located.fd
        if stat.S_ISLNK(mode):
            raise FileError(403, "SymbolicLink", f"{rel!r} is a symbolic link, which is not followed")
        if fd is None:
            raise FileError(403, "NotARegularFile", f"{rel!r} is not a regular file")
        if stat.S_ISDIR(mode):
            headers = self._headers(located.st, 0, is_dir=True)
            if request.method == "HEAD":
                return Response(headers=headers)
            limit = _bounded_int(request.query_params.get("limit"), LIST_PAGE_MAX, 1, LIST_PAGE_MAX)
            after = request.query_params.get("after", "")
            entries, following = await asyncio.to_thread(list_page, fd, recursive, after, limit)
            del headers["Content-Length"]
            return JSONResponse({"entries": entries, "next": following}, headers=headers)
        if not stat.S_ISREG(mode):
            raise FileError(403, "NotARegularFile", f"{rel!r} is not a regular file")
        return self._file(request, located, fd)

    def _headers(self, st: os.stat_result, length: int, is_dir: bool = False) -> dict[str, str]:
        return {
            "Content-Length": str(length),
            "Last-Modified": _http_date(st.st_mtime),
            "X-Shoal-Creation-Time": _http_date(_creation_ts(st)),
            "X-Shoal-File-Mode": f"0o{st.st_mode:o}",
            "X-Shoal-Is-Directory": "true" if is_dir else "false",
            "Accept-Ranges": "bytes",
        }

    def _file(self, request: Request, located: Located, fd: int) -> Response:
        st = located.st
        size = st.st_size
        start, end = 0, size - 1
        status = 200
        header = request.headers.get("range")
        if header:
            try:
                start, end = byte_ranges.resolve(header, size)
            except byte_ranges.Malformed as exc:
                raise FileError(416, "InvalidRange", str(exc)) from None
            except byte_ranges.Unsatisfiable:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        length = max(0, end - start + 1)
        headers = self._headers(st, length)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return _DescriptorResponse(located, fd, start, length, status, headers)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind (port 0 = ephemeral) and serve in the running event loop; returns the base URL."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose listening
        # socket says so, and without it keep-alive responses stall 40 ms on delayed ACKs.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False)
        self._server = _QuietServer(config)
        self._serve_task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
            await asyncio.sleep(0.005)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{url_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._server is None or self._serve_task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._serve_task), 5)
        if not self._serve_task.done():
            self._serve_task.cancel()


def _bounded_int(raw: str | None, default: int, low: int, high: int) -> int:
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        value = default
    return min(max(value, low), high)


class _QuietServer(uvicorn.Server):
    """uvicorn inside the agent's loop: the agent, not uvicorn, owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        return None
