"""ComputeNode_UploadBatchServiceLogs: what a request may ask, and where the logs go."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from shoal import clock, storage
from shoal.errors import Conflict, InvalidProperty
from shoal.model.states import NodeState
from shoal.service import nodes as node_service
from shoal.service import request_body
from shoal.service import validation as v
from shoal.service.context import Context

# A node whose agent is up to answer (a creating or leaving node has none, or soon none).
ANSWERING_STATES = (NodeState.IDLE, NodeState.RUNNING, NodeState.OFFLINE, NodeState.START_TASK_FAILED,
                    NodeState.UNUSABLE, NodeState.STARTING, NodeState.WAITING_FOR_START_TASK)


def parse(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    request_body.check(body, "node.uploadbatchservicelogs")
    request_body.refuse_unsupported(body, ("identityReference",))
    container = v.string(body, "containerUrl", required=True)
    assert container is not None
    if not storage.is_supported_url(container) or container.startswith("file:"):
        raise InvalidProperty("containerUrl", storage.redact(container),
                              "The container URL must be an http(s) URL of a blob container.")
    times = {}
    for name in ("startTime", "endTime"):
        raw = body.get(name)
        if raw is None and name == "endTime":
            continue
        when = clock.parse_iso(raw)
        if when is None:
            if raw is None:
                v.string(body, name, required=True)
            raise InvalidProperty(name, raw, "The value must be a date and time in ISO 8601 format.")
        times[name] = clock.iso(when)
    if "endTime" in times and clock.parse_iso(times["endTime"]) < clock.parse_iso(times["startTime"]):  # type: ignore[operator]
        raise InvalidProperty("endTime", body.get("endTime"), "The end time must not precede the start time.")
    return {"containerUrl": container, **times}


def locate(ctx: Context, pool_id: str, node_id: str) -> tuple[str | None, str, str]:
    """The node's agent (address, token) and the folder Batch names for this upload:
    `<account>-<hash>/<pool>/<node>/<unique id>`."""
    with ctx.engine.connect() as conn:
        pool, row = node_service.load(conn, ctx, pool_id, node_id)
    if row.state not in ANSWERING_STATES:
        raise Conflict(f"The node is {row.state}: its agent cannot upload logs now.", code="NodeNotReady")
    tag = hashlib.sha256(f"{ctx.account}/{pool.seq}".encode()).hexdigest()[:16].upper()
    return row.file_server_url, row.token, f"{ctx.account}-{tag}/{pool.id}/{row.id}/{uuid.uuid4()}"
