"""Task and node file routes, served by proxying to the node's agent.

A task's file route reaches only that task's folder and a node's only the node root: the path is
checked before anything else (``node_files.client_path``), and the agent is told the folder to
confine it to. Downloads are relayed as they arrive, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import urlencode

import httpx
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from shoal import clock, odata
from shoal.api import kept_files, listing
from shoal.api.http import (
    base_url,
    check_conditions,
    has_conditions,
    json_response,
    max_results,
    request_headers,
)
from shoal.errors import InvalidQuery, NotFound
from shoal.nodeclient import files as node_files
from shoal.service import node_copies
from shoal.service import nodes as node_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.service.task_outputs import KeptFile, serves_copies
from shoal.store.schema import nodes

log = logging.getLogger(__name__)
RELAY_CHUNK = 256 * 1024
_TOKEN_PREFIX = "shoalfile:"


def _task_location(request: Request, ctx: Context) -> tuple[Any, str, str]:
    """(node row, the task's folder on it, the route's base URL)."""
    job_id, task_id = request.path_params["job_id"], request.path_params["task_id"]
    node, directory, kept = task_service.node_of(ctx, job_id, task_id)
    url_base = f"{ctx.base_url}/jobs/{job_id}/tasks/{task_id}/files"
    return (_Kept(kept) if kept is not None else node), directory, url_base


class _Kept(NamedTuple):
    """In place of a node that cannot answer: the control plane's copies of the task's output."""

    files: list[KeptFile]


def _node_location(request: Request, ctx: Context) -> tuple[Any, str, str]:
    """The node; or, while it cannot answer (preempted, unusable, deallocated), the control
    plane's copies of its logs (service/node_copies.py) when there are any."""
    pool_id, node_id = request.path_params["pool_id"], request.path_params["node_id"]
    with ctx.engine.connect() as conn:
        node_service.load(conn, ctx, pool_id, node_id)
        node = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        kept = node_copies.files_of(conn, ctx.account, pool_id, node_id) if serves_copies(node) else []
    url_base = f"{ctx.base_url}/pools/{pool_id}/nodes/{node_id}/files"
    return (_Kept(kept) if kept else node), "", url_base


def _removed_node_location(request: Request, ctx: Context) -> tuple[Any, str, str]:
    """Beyond Azure: the copies of a node's logs, also once the node is gone."""
    pool_id, node_id = request.path_params["pool_id"], request.path_params["node_id"]
    for name, value in (("poolId", pool_id), ("nodeId", node_id)):
        if not value or len(value) > 96 or not value.isprintable():
            raise InvalidQuery(name, value[:64], "The value must be a pool or node id.")
    with ctx.engine.connect() as conn:
        kept = node_copies.files_of(conn, ctx.account, pool_id, node_id)
    if not kept:
        raise NotFound(f"No logs of node {node_id} of pool {pool_id} are kept.", code="NodeNotFound")
    return _Kept(kept), "", f"{ctx.base_url}/shoal/v1/pools/{pool_id}/removednodes/{node_id}/files"


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{name}".encode()).decode().rstrip("=")


def _decode_cursor(request: Request) -> str:
    raw = request.query_params.get("$skiptoken")
    if not raw:
        return ""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX) or "\x00" in text:
        raise InvalidQuery("$skiptoken", raw[:200], "The continuation token is not valid.")
    return text[len(_TOKEN_PREFIX):]


def _next_link(request: Request, cursor: str) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "$skiptoken"]
    params.append(("$skiptoken", _encode_cursor(cursor)))
    return f"{base_url(request)}{request.url.path}?{urlencode(params)}"


async def _on_node(request: Request, ctx: Context, locate: Any, call: Any) -> Any:
    """``call(node, folder, url base)`` for the node `locate` finds, again while its agent is
    restarting (a client asking a moment after a reboot gets its file, not NodeNotReady)."""
    async def attempt() -> Any:
        node, directory, url_base = await asyncio.to_thread(locate, request, ctx)
        return await call(node, directory, url_base)

    return await node_files.while_restarting(attempt)


def _lister(locate):  # type: ignore[no-untyped-def]
    async def handler(request: Request, ctx: Context) -> Response:
        # Everything the request asks for is checked before the node is asked anything.
        predicate = listing.compile_filter(request)
        fields = listing.select_fields(request)
        limit = max_results(request)
        after = _decode_cursor(request)
        recursive = request.query_params.get("recursive", "false").lower() == "true"

        async def page(node: Any, directory: str, url_base: str) -> tuple[list[dict[str, Any]], str | None, str]:
            if isinstance(node, _Kept):
                return kept_files.entries(node.files), None, url_base
            # One page per request: the agent walks only as far as this page needs.
            answer = await node_files.call_parts(
                "GET", node.file_server_url, node.token, [], base=directory,
                params={"recursive": "true" if recursive else "false", "limit": str(limit), "after": after})
            return (*_page_of(answer.json()), url_base)

        entries, following, url_base = await _on_node(request, ctx, locate, page)
        items = node_files.entries_to_wire(entries, "", url_base)
        if predicate is not None:
            items = [item for item in items if predicate(item)]
        if fields:
            items = [odata.apply_select(item, fields) for item in items]
        payload: dict[str, Any] = {"value": items}
        if following:
            payload["odata.nextLink"] = _next_link(request, following)
        return json_response(request, payload, odata_type="files")

    return handler


def _page_of(page: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A listing page as the agent sends it, refusing one that is not shaped as the protocol says."""
    keys = ("name", "isDirectory", "contentLength", "creationTime", "lastModified", "fileMode")
    entries = page.get("entries") if isinstance(page, dict) else None
    following = page.get("next") if isinstance(page, dict) else None
    if not isinstance(entries, list) or not (following is None or isinstance(following, str)) \
            or not all(isinstance(e, dict) and all(k in e for k in keys) and isinstance(e["name"], str)
                       for e in entries):
        raise node_files.NodeUnreachable("The compute node sent a listing Shoal cannot read.")
    return entries, following


def _file_headers(upstream: httpx.Headers, url: str) -> dict[str, str]:
    created = upstream.get("x-shoal-creation-time")
    headers = {
        "Content-Type": "application/octet-stream",
        "Last-Modified": upstream.get("last-modified", clock.http_date(None)),
        "ocp-creation-time": created or upstream.get("last-modified", ""),
        "ocp-batch-file-isdirectory": upstream.get("x-shoal-is-directory", "false"),
        "ocp-batch-file-url": url,
        "ocp-batch-file-mode": upstream.get("x-shoal-file-mode", "0o100644").replace("0o", "")[-6:],
    }
    if "content-length" in upstream:  # without it the relay is chunked, never a made-up length
        headers["Content-Length"] = upstream["content-length"]
    if "content-range" in upstream:
        headers["Content-Range"] = upstream["content-range"]
    return headers


def _apply_conditions(request: Request, last_modified: str) -> None:
    """If-Modified-Since (304 on a read) and If-Unmodified-Since (412), as on every other resource.
    Files have no ETag, so If-Match can only fail and If-None-Match only match '*'."""
    if not has_conditions(request):
        return
    try:
        when: datetime = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return
    check_conditions(request, "", when)


class _Relay(StreamingResponse):
    """The agent's bytes, passed on as they arrive; the upstream is closed however this ends
    (finished, client gone, or an error)."""

    def __init__(self, upstream: httpx.Response, headers: dict[str, str]) -> None:
        self.upstream = upstream
        super().__init__(self._chunks(), status_code=200, headers=headers)

    async def _chunks(self):  # type: ignore[no-untyped-def]
        try:
            async for chunk in self.upstream.aiter_raw(RELAY_CHUNK):
                yield chunk
        except httpx.HTTPError as exc:
            # Headers are gone already: all that can be done is to cut the connection short.
            log.warning("a node stopped sending %s mid-download: %s", self.upstream.url.path, exc)
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


def _file_handler(locate):  # type: ignore[no-untyped-def]
    async def handler(request: Request, ctx: Context) -> Response:
        parts = node_files.client_path(request.path_params["file_path"])
        return await _on_node(request, ctx, locate,
                              lambda node, directory, url_base: _file_call(request, parts, node, directory, url_base))

    return handler


async def _file_call(request: Request, parts: list[str], node: Any, directory: str, url_base: str) -> Response:
    """One call to the node's agent for a file route: DELETE, HEAD or a streamed GET."""
    file_url = f"{url_base}/{'/'.join(parts)}"
    if isinstance(node, _Kept):
        return kept_files.answer(request, node.files, parts, file_url)
    if request.method == "DELETE":
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        await node_files.call_parts("DELETE", node.file_server_url, node.token, parts, base=directory,
                                      params={"recursive": "true" if recursive else "false"})
        return Response(status_code=200, headers=request_headers(request))
    headers = {}
    byte_range = request.headers.get("ocp-range") or request.headers.get("range")
    if byte_range:
        headers["Range"] = byte_range
    if request.method == "HEAD":
        answer = await node_files.call_parts("HEAD", node.file_server_url, node.token, parts,
                                               base=directory, headers=headers)
        out_headers = {**request_headers(request), **_file_headers(answer.headers, file_url)}
        _apply_conditions(request, out_headers["Last-Modified"])
        return Response(status_code=200, headers=out_headers)
    upstream = await node_files.open_stream(node.file_server_url, node.token, parts, base=directory,
                                              headers=headers)
    try:
        if upstream.headers.get("x-shoal-is-directory") == "true":
            # Batch answers a GET on a directory as not found.
            raise NotFound("The specified path is a directory.", code="FileNotFound")
        out_headers = {**request_headers(request), **_file_headers(upstream.headers, file_url)}
        _apply_conditions(request, out_headers["Last-Modified"])
    except BaseException:
        await upstream.aclose()
        raise
    return _Relay(upstream, out_headers)


ROUTES = [
    ("/jobs/{job_id}/tasks/{task_id}/files", ["GET"], _lister(_task_location)),
    ("/jobs/{job_id}/tasks/{task_id}/files/{file_path:path}", ["GET", "HEAD", "DELETE"],
     _file_handler(_task_location)),
    ("/pools/{pool_id}/nodes/{node_id}/files", ["GET"], _lister(_node_location)),
    ("/pools/{pool_id}/nodes/{node_id}/files/{file_path:path}", ["GET", "HEAD", "DELETE"],
     _file_handler(_node_location)),
    ("/shoal/v1/pools/{pool_id}/removednodes/{node_id}/files", ["GET"], _lister(_removed_node_location)),
    ("/shoal/v1/pools/{pool_id}/removednodes/{node_id}/files/{file_path:path}", ["GET", "HEAD", "DELETE"],
     _file_handler(_removed_node_location)),
]

# The dashboard's file tail and node file list (shoal/web/files.py) take the same path.
task_location, node_location, on_node = _task_location, _node_location, _on_node
