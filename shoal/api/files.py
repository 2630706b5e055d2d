"""Task and node file routes, served by proxying to the node's agent."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from shoal import clock
from shoal.api import listing, remote_files
from shoal.api.http import request_headers
from shoal.errors import ConditionNotMet, NotFound
from shoal.service import nodes as node_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.store.schema import nodes


def _task_location(request: Request, ctx: Context) -> tuple[Any, str, str]:
    job_id, task_id = request.path_params["job_id"], request.path_params["task_id"]
    node, directory = task_service.node_of(ctx, job_id, task_id)
    return node, directory, f"{ctx.base_url}/jobs/{job_id}/tasks/{task_id}/files"


def _node_location(request: Request, ctx: Context) -> tuple[Any, str, str]:
    pool_id, node_id = request.path_params["pool_id"], request.path_params["node_id"]
    with ctx.engine.connect() as conn:
        node_service.load(conn, ctx, pool_id, node_id)
        node = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
    return node, "", f"{ctx.base_url}/pools/{pool_id}/nodes/{node_id}/files"


def _lister(locate):  # type: ignore[no-untyped-def]
    async def handler(request: Request, ctx: Context) -> Response:
        node, directory, url_base = locate(request, ctx)
        recursive = request.query_params.get("recursive", "false").lower() == "true"
        response = await remote_files.call("GET", node.file_server_url, node.token, directory,
                                           params={"recursive": "true" if recursive else "false"})
        entries = remote_files.entries_to_wire(response.json(), "", url_base)
        return listing.respond(request, entries, "files")

    return handler


def _file_headers(response: Any, url: str) -> dict[str, str]:
    upstream = response.headers
    created = upstream.get("x-shoal-creation-time")
    headers = {
        "Content-Length": upstream.get("content-length", "0"),
        "Content-Type": "application/octet-stream",
        "Last-Modified": upstream.get("last-modified", clock.http_date(None)),
        "ocp-creation-time": created or upstream.get("last-modified", ""),
        "ocp-batch-file-isdirectory": upstream.get("x-shoal-is-directory", "false"),
        "ocp-batch-file-url": url,
        "ocp-batch-file-mode": upstream.get("x-shoal-file-mode", "0o100644").replace("0o", "")[-6:],
    }
    if "content-range" in upstream:
        headers["Content-Range"] = upstream["content-range"]
    return headers


def _file_handler(locate):  # type: ignore[no-untyped-def]
    async def handler(request: Request, ctx: Context) -> Response:
        node, directory, url_base = locate(request, ctx)
        file_path = request.path_params["file_path"]
        path = f"{directory}/{file_path}" if directory else file_path
        if request.method == "DELETE":
            recursive = request.query_params.get("recursive", "false").lower() == "true"
            await remote_files.call("DELETE", node.file_server_url, node.token, path,
                                    params={"recursive": "true" if recursive else "false"})
            return Response(status_code=200, headers=request_headers(request))
        headers = {}
        byte_range = request.headers.get("ocp-range") or request.headers.get("range")
        if byte_range:
            headers["Range"] = byte_range
        response = await remote_files.call(request.method, node.file_server_url, node.token, path,
                                           headers=headers)
        if response.headers.get("content-type", "").startswith("application/json") and request.method == "GET" \
                and response.headers.get("x-shoal-is-directory") is None:
            # A directory: Batch answers a GET on a directory as not found.
            raise NotFound("The specified path is a directory.", code="FileNotFound")
        out_headers = {**request_headers(request), **_file_headers(response, f"{url_base}/{file_path}")}
        if request.method == "HEAD":
            return Response(status_code=200, headers=out_headers)
        _check_modified_since(request, out_headers["Last-Modified"])
        return Response(response.content, status_code=200, headers=out_headers)

    return handler


def _check_modified_since(request: Request, last_modified: str) -> None:
    since = request.headers.get("if-modified-since")
    if not since:
        return
    try:
        if parsedate_to_datetime(last_modified) <= parsedate_to_datetime(since):
            raise ConditionNotMet()
    except (TypeError, ValueError):
        return


ROUTES = [
    ("/jobs/{job_id}/tasks/{task_id}/files", ["GET"], _lister(_task_location)),
    ("/jobs/{job_id}/tasks/{task_id}/files/{file_path:path}", ["GET", "HEAD", "DELETE"],
     _file_handler(_task_location)),
    ("/pools/{pool_id}/nodes/{node_id}/files", ["GET"], _lister(_node_location)),
    ("/pools/{pool_id}/nodes/{node_id}/files/{file_path:path}", ["GET", "HEAD", "DELETE"],
     _file_handler(_node_location)),
]
