"""The node file server: the node root, read-only plus DELETE, over HTTP (agent protocol, "Node files").

Routes (all need ``Authorization: ShoalNode <node token>``):

- ``GET /files/{path}?recursive=`` on a directory: JSON list, names relative to that directory;
- ``GET /files/{path}`` on a file: its bytes, ``Range: bytes=a-b`` honoured (206/416);
- ``HEAD`` the same, headers only; ``DELETE`` a file, or a directory with ``recursive=true``.

Paths are resolved (symlinks included) and must stay under the node root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import shutil
import socket
import stat
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CHUNK_SIZE = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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


def list_directory(directory: Path, recursive: bool) -> list[dict[str, Any]]:
    """Entries under ``directory`` (not following symlinked directories), names relative to it."""
    entries: list[dict[str, Any]] = []
    pending = [(directory, "")]
    while pending:
        current, prefix = pending.pop()
        try:
            with os.scandir(current) as it:
                children = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in children:
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            name = prefix + entry.name
            entries.append(_file_entry(name, st))
            if recursive and entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), name + "/"))
    entries.sort(key=lambda e: e["name"])
    return entries


class FileServer:
    """A Starlette app over one node root, plus the uvicorn server that serves it."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = Path(root).resolve()
        self.token = token
        route_methods = ["GET", "HEAD", "DELETE"]
        self.app = Starlette(
            routes=[
                Route("/files", self._handle, methods=route_methods),
                Route("/files/{path:path}", self._handle, methods=route_methods),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self.url: str | None = None

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"ShoalNode {self.token}".encode())

    def resolve(self, rel: str) -> Path | None:
        """The absolute path for ``rel``, or None when it would leave the root."""
        if "\x00" in rel:
            return None
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            return None
        return target

    async def _handle(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "AuthenticationFailed", "missing or wrong node token")
        rel = request.path_params.get("path", "")
        target = self.resolve(rel)
        if target is None:
            return _error(403, "PathOutsideNodeRoot", f"{rel!r} is outside the node root")
        try:
            st = target.stat()
        except (FileNotFoundError, NotADirectoryError):
            return _error(404, "FileNotFound", f"{rel!r} does not exist")
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        if request.method == "DELETE":
            return await self._delete(target, st, recursive, rel)
        if stat.S_ISDIR(st.st_mode):
            if request.method == "HEAD":
                return Response(headers=self._headers(st, 0, is_dir=True))
            entries = await asyncio.to_thread(list_directory, target, recursive)
            return JSONResponse(entries)
        return self._file(request, target, st)

    async def _delete(self, target: Path, st: os.stat_result, recursive: bool, rel: str) -> Response:
        if target == self.root:
            return _error(403, "OperationNotAllowed", "the node root cannot be deleted")
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                with contextlib.suppress(OSError):
                    target.rmdir()
                    return Response(status_code=200)
                return _error(
                    409, "DirectoryNotEmpty", f"{rel!r} is a non-empty directory; use recursive=true"
                )
            await asyncio.to_thread(shutil.rmtree, target, True)
        else:
            target.unlink(missing_ok=True)
        return Response(status_code=200)

    def _headers(self, st: os.stat_result, length: int, is_dir: bool = False) -> dict[str, str]:
        return {
            "Content-Length": str(length),
            "Last-Modified": _http_date(st.st_mtime),
            "X-Shoal-Creation-Time": _http_date(_creation_ts(st)),
            "X-Shoal-File-Mode": f"0o{st.st_mode:o}",
            "X-Shoal-Is-Directory": "true" if is_dir else "false",
            "Accept-Ranges": "bytes",
        }

    def _file(self, request: Request, target: Path, st: os.stat_result) -> Response:
        size = st.st_size
        start, end = 0, size - 1
        status = 200
        header = request.headers.get("range")
        if header:
            m = _RANGE.match(header.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return _error(416, "InvalidRange", f"unsupported Range {header!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        length = max(0, end - start + 1)
        headers = self._headers(st, length)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return StreamingResponse(
            _read_range(target, start, length),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

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


async def _read_range(path: Path, start: int, length: int):  # type: ignore[no-untyped-def]
    # Node files are local and reads are short; doing them inline avoids a thread per request.
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining > 0:
            chunk = f.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


class _QuietServer(uvicorn.Server):
    """uvicorn inside the agent's loop: the agent, not uvicorn, owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        return None
