"""The control plane handing a node its login users (docs/agent-protocol.md, "Node users").

`PUT {fileServerUrl}/users` with the node's whole list and its generation; the agent answers once
the users exist on the node (or are gone), so a 201 from ComputeNode_AddUser means a login works.
"""

from __future__ import annotations

import json

import httpx

from shoal.errors import BatchError
from shoal.nodeclient.files import AgentNotListening, NodeUnreachable, client
from shoal.service.node_users import Delivery

# Creating a Linux user takes tens of milliseconds; useradd may wait for another agent's lock.
USERS_TIMEOUT_S = 60.0
MAX_ERROR_BYTES = 16 * 1024


async def deliver(delivery: Delivery) -> None:
    if not delivery.file_server_url:
        raise NodeUnreachable("The compute node's agent has not said where it listens.")
    body = {"generation": delivery.generation, "users": delivery.users}
    try:
        response = await client().put(f"{delivery.file_server_url.rstrip('/')}/users", content=json.dumps(body),
                                      headers={"Authorization": f"ShoalNode {delivery.token}",
                                               "Content-Type": "application/json"},
                                      timeout=USERS_TIMEOUT_S)
    except httpx.ConnectError as exc:
        raise AgentNotListening("The compute node's agent could not be reached.") from exc
    except httpx.HTTPError as exc:
        raise NodeUnreachable("The compute node's agent could not be reached.") from exc
    if response.status_code < 400:
        return
    message = ""
    try:
        answer = json.loads(response.content[:MAX_ERROR_BYTES])
        message = str(answer.get("message", ""))[:500] if isinstance(answer, dict) else ""
    except ValueError:
        pass
    if response.status_code == 501:
        raise BatchError("The node cannot create users: its agent does not run as root.",
                         code="NodeUserOperationNotSupported", status=409)
    raise BatchError(f"The node could not apply its users: {message or response.status_code}",
                     code="NodeUserOperationFailed", status=409)
