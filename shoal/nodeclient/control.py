"""The control plane's orders to a node's agent beyond files (docs/agent-protocol.md): its login
users (`PUT /users`, answered once they exist on the node) and uploading its service logs
(`POST /service-logs`). Node errors become Batch errors here.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from shoal.errors import BatchError
from shoal.nodeclient.files import AgentNotListening, NodeUnreachable, client
from shoal.service.node_users import Delivery

# Creating a Linux user takes tens of milliseconds; useradd may wait for another agent's lock.
ORDER_TIMEOUT_S = 60.0
MAX_ANSWER_BYTES = 64 * 1024


async def _order(file_server_url: str | None, token: str, method: str, route: str, body: Any) -> Any:
    if not file_server_url:
        raise NodeUnreachable("The compute node's agent has not said where it listens.")
    try:
        response = await client().request(method, f"{file_server_url.rstrip('/')}/{route}", content=json.dumps(body),
                                          headers={"Authorization": f"ShoalNode {token}",
                                                   "Content-Type": "application/json"},
                                          timeout=ORDER_TIMEOUT_S)
    except httpx.ConnectError as exc:
        raise AgentNotListening("The compute node's agent could not be reached.") from exc
    except httpx.HTTPError as exc:
        raise NodeUnreachable("The compute node's agent could not be reached.") from exc
    try:
        answer = json.loads(response.content[:MAX_ANSWER_BYTES]) if response.content else None
    except ValueError:
        answer = None
    if response.status_code < 400:
        return answer
    message = str(answer.get("message", ""))[:500] if isinstance(answer, dict) else ""
    if response.status_code == 501:
        raise BatchError("The node cannot do this: its agent does not run as root.",
                         code="NodeOperationNotSupported", status=409)
    raise BatchError(f"The node refused: {message or response.status_code}", code="NodeOperationFailed",
                     status=409)


async def deliver_users(delivery: Delivery) -> None:
    await _order(delivery.file_server_url, delivery.token, "PUT", "users",
                 {"generation": delivery.generation, "users": delivery.users})


async def upload_service_logs(file_server_url: str | None, token: str, request: dict[str, Any]) -> int:
    answer = await _order(file_server_url, token, "POST", "service-logs", request)
    count = answer.get("numberOfFiles") if isinstance(answer, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise NodeUnreachable("The compute node sent an answer Shoal cannot read.")
    return count
