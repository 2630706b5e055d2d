"""Files on nodes for the dashboard: the live tail of a task's stdout/stderr (or any file of a
node), and a node's file list. Both take the REST file routes' path (`api.files.on_node` with
`task_location` / `node_location`, then `shoal/nodeclient/files.py`): the same checks, the same
call to the agent, with a byte range so a poll moves only what is new."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shoal.api.files import node_location, on_node, task_location
from shoal.errors import BatchError, NotFound
from shoal.nodeclient import files as node_files
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.web.shared import BadInput
from shoal.web.tasks import TAILED_FILES

# Bytes one poll brings at most; a first look (offset -1) shows the file's last TAIL_BYTES.
TAIL_BYTES = 64 * 1024
MAX_OFFSET = 2**53
LISTED_FILES = 200
_OFFSET = re.compile(r"^(-1|\d{1,16})$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset", "-1")
    if not _OFFSET.match(raw) or int(raw) > MAX_OFFSET:
        raise BadInput("offset must be -1 or a byte offset.", values={"Name": "offset"})
    return int(raw)


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut short at its end (the next poll brings it whole)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead
        if byte & 0x80 == 0:
            return data
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return data if back >= need else data[:-back]
    return data


def _tail_kept(kept: list[Any], parts: list[str], offset: int) -> dict[str, Any]:
    """The tail of the control plane's copy of a task's output (shoal/api/kept_files.py), for a
    task whose node is gone: the copy is whole, so it is read as a node's file would be."""
    found = next((f for f in kept if parts == [f.name]), None)
    if found is None:
        raise NotFound("The task's node is gone: only copies of stdout.txt and stderr.txt are kept.",
                       code="FileNotFound")
    data = bytes(found.data)
    start = max(0, len(data) - TAIL_BYTES) if offset < 0 else min(offset, len(data))
    whole = complete_utf8(data[start:start + TAIL_BYTES])
    return {"data": whole.decode("utf-8", errors="replace"), "offset": start + len(whole), "size": len(data),
            "kept": True}


async def _tail(node: Any, directory: str, parts: list[str], offset: int) -> dict[str, Any]:
    kept = getattr(node, "files", None)  # api.files hands the kept copies in place of a gone node
    if kept is not None:
        return _tail_kept(kept, parts, offset)
    byte_range = f"bytes=-{TAIL_BYTES}" if offset < 0 else f"bytes={offset}-{offset + TAIL_BYTES - 1}"
    try:
        upstream = await node_files.open_stream(node.file_server_url, node.token, parts, base=directory,
                                                headers={"Range": byte_range})
    except BatchError as error:
        if error.code == "InvalidRange":  # nothing past the offset yet (or an empty file)
            return {"data": "", "offset": max(offset, 0), "size": None}
        raise
    try:
        if upstream.headers.get("x-shoal-is-directory") == "true":
            raise NotFound("The specified path is a directory.", code="FileNotFound")
        data = bytearray()
        async for chunk in upstream.aiter_raw():
            data.extend(chunk)
            if len(data) >= TAIL_BYTES:
                break
    finally:
        await upstream.aclose()
    start, size = max(offset, 0), None
    match = _CONTENT_RANGE.match(upstream.headers.get("content-range", ""))
    if match:
        start = int(match.group(1))
        size = int(match.group(3)) if match.group(3) != "*" else None
    whole = complete_utf8(bytes(data[:TAIL_BYTES]))
    return {"data": whole.decode("utf-8", errors="replace"), "offset": start + len(whole), "size": size}


async def _tail_answer(request: Request, ctx: Context, locate: Any, parts: list[str]) -> dict[str, Any]:
    offset = _offset(request)
    try:
        return await on_node(request, ctx, locate, lambda node, directory, _url: _tail(node, directory, parts, offset))
    except NotFound as error:
        # Not there yet (a task still waiting for its node, a file not written yet): say so and
        # keep polling.
        return {"data": "", "offset": max(offset, 0), "missing": error.message}


async def task_tail(request: Request, ctx: Context) -> Response:
    name = request.query_params.get("file", "stdout.txt")
    if name not in TAILED_FILES:
        raise BadInput("file must be stdout.txt or stderr.txt.", values={"Name": "file"})
    # The task's state rides along, so the page shows when it ends and the viewer can stop. Read
    # before the file: once a task is completed its process has ended and its output is whole.
    record = await request.state.runner.read(task_service.get, ctx, request.path_params["job_id"],
                                             request.path_params["task_id"])
    answer = await _tail_answer(request, ctx, task_location, [name])
    answer["taskState"] = record.row.state
    return JSONResponse(answer)


async def node_tail(request: Request, ctx: Context) -> Response:
    parts = node_files.client_path(request.query_params.get("file", "startup/stdout.txt"))
    return JSONResponse(await _tail_answer(request, ctx, node_location, parts))


async def node_file_list(request: Request, ctx: Context) -> Response:
    async def page(node: Any, directory: str, _url: str) -> Any:
        return await node_files.call_parts("GET", node.file_server_url, node.token, [], base=directory,
                                           params={"recursive": "true", "limit": str(LISTED_FILES), "after": ""})

    try:
        answer = await on_node(request, ctx, node_location, page)
    except node_files.NodeUnreachable as error:
        return JSONResponse({"entries": [], "error": error.message})
    body = answer.json()
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise node_files.NodeUnreachable("The compute node sent a listing Shoal cannot read.")
    return JSONResponse({"entries": [{"name": str(e.get("name")), "isDirectory": bool(e.get("isDirectory")),
                                      "size": e.get("contentLength")} for e in entries if isinstance(e, dict)],
                         "more": bool(body.get("next"))})
