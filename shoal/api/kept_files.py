"""File routes answered from the control plane's copies, when the node cannot answer: a task's
stdout.txt and stderr.txt (shoal/service/task_outputs.py), a node's agent.log and start-task
stdout/stderr (shoal/service/node_copies.py); their last bytes only.

A copy that is only the end of a longer file says so in `ocp-shoal-truncated-from` (the file's
full size); its Content-Length and ranges are those of the bytes kept.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal import byte_ranges, clock
from shoal.api.http import request_headers
from shoal.errors import BatchError, NotFound
from shoal.service.task_outputs import KeptFile

_MODE = "100644"


def entries(kept: list[KeptFile]) -> list[dict[str, Any]]:
    """The copies as a node file server lists files (nodeclient.files.entries_to_wire reads them)."""
    return [{"name": f.name, "isDirectory": False, "contentLength": len(f.data),
             "creationTime": clock.iso(f.modified), "lastModified": clock.iso(f.modified), "fileMode": _MODE}
            for f in kept]


def answer(request: Request, kept: list[KeptFile], parts: list[str], file_url: str) -> Response:
    """GET or HEAD of one kept file; DELETE drops nothing (the copy goes with the task)."""
    found = next((f for f in kept if "/".join(parts) == f.name), None)
    if found is None:
        raise NotFound("The node cannot answer: only the copies " + ", ".join(f.name for f in kept)
                       + " are kept.", code="FileNotFound")
    if request.method == "DELETE":
        raise BatchError("The node cannot answer; its kept copies go by retention.",
                         code="OperationInvalidForCurrentState", status=409)
    size = len(found.data)
    start, end, status = 0, size - 1, 200
    byte_range = request.headers.get("ocp-range") or request.headers.get("range")
    headers = {**request_headers(request), "Content-Type": "application/octet-stream",
               "Last-Modified": clock.http_date(found.modified), "ocp-creation-time": clock.http_date(found.modified),
               "ocp-batch-file-isdirectory": "false", "ocp-batch-file-url": file_url, "ocp-batch-file-mode": _MODE}
    if found.truncated:
        headers["ocp-shoal-truncated-from"] = str(found.size)
    if byte_range:
        try:
            start, end = byte_ranges.resolve(byte_range, size)
        except byte_ranges.Malformed as exc:
            raise BatchError(str(exc), code="InvalidRange", status=416) from None
        except byte_ranges.Unsatisfiable:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    body = found.data[start:end + 1] if size else b""
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return Response(body, status_code=status, headers=headers)

