"""The control plane as a client of a node's file server (docs/agent-protocol.md, "Node files").

The control plane never reads a node's disk: every Batch file API is a call to the agent that
owns the files. One shared HTTP client; node errors become Batch errors here.

A path from a client is checked here before it goes anywhere (``client_path``), and it travels
to the agent as percent-encoded components that can never be dot segments, with the folder it
is confined to (``base``) in a separate query parameter: the HTTP client has nothing to
normalise, and the agent confines the path to ``base`` again on its side, by descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx

from shoal.errors import BadRequest, BatchError, NotFound

_client: httpx.AsyncClient | None = None
FILE_TIMEOUT_S = 30.0
MAX_PATH_BYTES = 4096  # Linux PATH_MAX: nothing longer can name a file on the node
MAX_NAME_BYTES = 255  # Linux NAME_MAX
# Decoding rounds a path is checked through: the router decodes once, and a client may have
# encoded a dot segment twice more (%252e%252e) hoping something downstream decodes again.
_DECODE_ROUNDS = 3
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a listing page of 1,000 entries is about 250 KB
MAX_ERROR_BYTES = 64 * 1024
# An agent restarting (a reboot, a server restart adopting it) listens again within a second or two.
RECONNECT_S = 5.0
RECONNECT_POLL_S = 0.25
T = TypeVar("T")


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


class AgentNotListening(NodeUnreachable):
    """No connection could be made: nothing was sent, so the call may be made again (to the
    address the node's agent gives when it says hello again)."""


async def while_restarting(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, made again for up to RECONNECT_S while the node's agent is not listening
    (restarting after a reboot or a server restart); each attempt may read its new address."""
    deadline = time.monotonic() + RECONNECT_S
    while True:
        try:
            return await attempt()
        except AgentNotListening:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(RECONNECT_POLL_S)


def _invalid_path(reason: str) -> BadRequest:
    return BadRequest("The requested URI does not represent any resource on the server.", code="InvalidUri",
                      values={"Reason": reason})


def client_path(raw: str) -> list[str]:
    """The components of a file path from a route (already percent-decoded once by the router).

    Refused (400 InvalidUri): an empty path, an absolute one, ``.`` or ``..`` components, empty
    components, NUL and backslashes — in the path as given or after decoding it again, so no
    later decoding anywhere can turn it into a traversal. One trailing slash is allowed."""
    if raw.endswith("/"):
        raw = raw[:-1]
    if not raw:
        raise _invalid_path("The file path is empty.")
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise _invalid_path(f"The file path is longer than {MAX_PATH_BYTES} bytes.")
    text = raw
    for _ in range(_DECODE_ROUNDS):
        _check_components(text)
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    else:
        _check_components(text)
    parts = raw.split("/")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        raise _invalid_path(f"A file path component is longer than {MAX_NAME_BYTES} bytes.")
    return parts


def _check_components(text: str) -> None:
    if "\x00" in text:
        raise _invalid_path("The file path contains a NUL character.")
    if "\\" in text:
        raise _invalid_path("The file path contains a backslash.")
    if text.startswith("/"):
        raise _invalid_path("The file path must be relative.")
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise _invalid_path("The file path must not contain empty, '.' or '..' segments.")


def _url(file_server: str, parts: list[str]) -> str:
    # Each component is encoded whole (slashes and dots inside names included): none of them is a
    # dot segment, so nothing between here and the agent can rewrite the path.
    return f"{file_server.rstrip('/')}/files/" + "/".join(quote(part, safe="") for part in parts)


def _parts(path: str) -> list[str]:
    """Components of a path the control plane built itself (a task's folder): checked all the same."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
        raise _invalid_path("The file path must not contain '.' or '..' segments.")
    return parts


def _request(method: str, file_server: str | None, token: str, parts: list[str], base: str,
             params: dict[str, str] | None, headers: dict[str, str] | None) -> httpx.Request:
    if not file_server:
        raise NotFound("The specified file does not exist.", code="FileNotFound")
    query = dict(params or {})
    if base:
        query["base"] = "/".join(_parts(base))
    return client().build_request(method, _url(file_server, parts), params=query,
                                  headers={"Authorization": f"ShoalNode {token}", **(headers or {})})


def _agent_code(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    return str(parsed.get("code", "")) if isinstance(parsed, dict) else ""


def _raise_for(status: int, body: bytes) -> None:
    """The Batch error for an agent's refusal."""
    if status < 400:
        return
    if status == 404:
        raise NotFound("The specified file does not exist.", code="FileNotFound")
    if status == 403:
        code = _agent_code(body)
        if code == "PathRefused":
            raise _invalid_path("The file path is not a valid path beneath the folder.")
        if code == "OperationNotAllowed":
            raise BatchError("The folder itself cannot be deleted.", code="OperationInvalidForCurrentState",
                             status=409)
        # A symbolic link, a FIFO or device, or a file the agent may not read: the file API serves
        # none of them, and says no more about what is there.
        raise NotFound("The specified file does not exist.", code="FileNotFound")
    if status == 409:
        raise BatchError("The directory is not empty; delete it recursively.", code="DirectoryNotEmpty",
                         status=409)
    if status == 416:
        raise BatchError("The requested range is not satisfiable.", code="InvalidRange", status=416)
    raise NodeUnreachable(f"The compute node answered {status}.")


async def _send(request: httpx.Request) -> httpx.Response:
    try:
        return await client().send(request, stream=True)
    except httpx.ConnectError as exc:
        raise AgentNotListening("The compute node's agent could not be reached.") from exc
    except httpx.HTTPError as exc:
        raise NodeUnreachable("The compute node's agent could not be reached.") from exc


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body, refusing one longer than ``limit``: a node's answer is never trusted to be small."""
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body.extend(chunk)
            if len(body) > limit:
                raise NodeUnreachable("The compute node sent a longer answer than the file protocol allows.")
    except httpx.HTTPError as exc:
        raise NodeUnreachable("The compute node's agent stopped answering.") from exc
    finally:
        await response.aclose()
    return bytes(body)


async def call(method: str, file_server: str | None, token: str, path: str, *, base: str = "",
               params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Answer:
    """A call with a small answer (a listing page, HEAD, DELETE); ``path`` is a folder Shoal built."""
    return await call_parts(method, file_server, token, _parts(path), base=base, params=params, headers=headers)


async def call_parts(method: str, file_server: str | None, token: str, parts: list[str], *, base: str = "",
                     params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Answer:
    response = await _send(_request(method, file_server, token, parts, base, params, headers))
    body = await _read_bounded(response, MAX_ANSWER_BYTES)
    _raise_for(response.status_code, body)
    return Answer(response.status_code, response.headers, body)


async def open_stream(file_server: str | None, token: str, parts: list[str], *, base: str = "",
                      headers: dict[str, str] | None = None) -> httpx.Response:
    """A GET whose body is not read yet: the caller streams it and must close it."""
    response = await _send(_request("GET", file_server, token, parts, base, None, headers))
    if response.status_code >= 400:
        body = b""
        with contextlib.suppress(NodeUnreachable):
            body = await _read_bounded(response, MAX_ERROR_BYTES)
        _raise_for(response.status_code, body)
    return response


@dataclass(frozen=True)
class Answer:
    """A node's whole (bounded) answer."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise NodeUnreachable("The compute node sent a listing that is not JSON.") from exc


def entries_to_wire(entries: list[dict[str, Any]], prefix: str, url_base: str) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        name = f"{prefix}{entry['name']}" if prefix else entry["name"]
        item: dict[str, Any] = {"name": name, "url": f"{url_base}/{quote(name, safe='')}",
                                "isDirectory": entry["isDirectory"]}
        # Azure lists a directory by its name, url and isDirectory alone; only files carry
        # `properties` (recorded: batchservice-tests.json #074, test_batch.pyTestBatchtest_batch_files
        # [async].json #011 and #015).
        if not entry["isDirectory"]:
            item["properties"] = {"creationTime": entry["creationTime"], "lastModified": entry["lastModified"],
                                  "contentLength": entry["contentLength"], "contentType": "application/octet-stream",
                                  "fileMode": entry["fileMode"]}
        out.append(item)
    return out
