"""Talking to a node's file server (docs/agent-protocol.md, "Node files").

The control plane never reads a node's disk: every Batch file API is a call to the agent that
owns the files. One shared HTTP client; node errors become Batch errors here.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import httpx

from shoal.errors import BatchError, NotFound

_client: httpx.AsyncClient | None = None
FILE_TIMEOUT_S = 30.0


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=FILE_TIMEOUT_S)
    return _client


async def close() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


class NodeUnreachable(BatchError):
    status = 409
    code = "NodeNotReady"


def _url(file_server: str, path: str) -> str:
    return f"{file_server.rstrip('/')}/files/{quote(path.strip('/'))}"


async def call(method: str, file_server: str | None, token: str, path: str, *,
               params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if not file_server:
        raise NotFound("The specified file does not exist.", code="FileNotFound")
    request_headers = {"Authorization": f"ShoalNode {token}", **(headers or {})}
    try:
        response = await client().request(method, _url(file_server, path), params=params,
                                          headers=request_headers)
    except httpx.HTTPError as exc:
        raise NodeUnreachable("The compute node's agent could not be reached.") from exc
    if response.status_code == 404:
        raise NotFound("The specified file does not exist.", code="FileNotFound")
    if response.status_code == 403:
        raise BatchError("The file path is outside the allowed directories.", code="OperationInvalidForCurrentState",
                         status=400)
    if response.status_code == 409:
        raise BatchError("The directory is not empty; delete it recursively.", code="DirectoryNotEmpty",
                         status=409)
    if response.status_code == 416:
        raise BatchError("The requested range is not satisfiable.", code="InvalidRange", status=416)
    if response.status_code >= 400:
        raise NodeUnreachable(f"The compute node answered {response.status_code}.")
    return response


async def delete_remote_tree(file_server: str | None, token: str | None, directory: str) -> None:
    """Best effort: a folder on a node that is gone (or never served files) is gone with it."""
    if not file_server or not token:
        return
    with contextlib.suppress(BatchError):
        await call("DELETE", file_server, token, directory, params={"recursive": "true"})


def entries_to_wire(entries: list[dict[str, Any]], prefix: str, url_base: str) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        name = f"{prefix}{entry['name']}" if prefix else entry["name"]
        item: dict[str, Any] = {"name": name, "url": f"{url_base}/{quote(name, safe='')}",
                                "isDirectory": entry["isDirectory"]}
        props: dict[str, Any] = {"creationTime": entry["creationTime"], "lastModified": entry["lastModified"],
                                 "contentLength": entry["contentLength"], "fileMode": entry["fileMode"]}
        if not entry["isDirectory"]:
            props["contentType"] = "application/octet-stream"
        item["properties"] = props
        out.append(item)
    return out
