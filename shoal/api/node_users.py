"""Node user routes (ComputeNode_AddUser / UpdateUser / DeleteUser / GetRemoteLoginSettings).

On the loop: the store work goes to the writer lane, then the node's agent gets the new list
through the loop's HTTP client (`nodeclient/control.py`), retried while the agent is restarting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import versions
from shoal.api.http import empty_response, json_response
from shoal.nodeclient import control as node_control
from shoal.nodeclient import files as node_files
from shoal.service import node_users
from shoal.service.context import Context


def _ids(request: Request) -> tuple[str, str]:
    return request.path_params["pool_id"], request.path_params["node_id"]


async def _change(request: Request, change: Callable[[], node_users.Delivery]) -> None:
    delivery = await request.state.runner.write(change)
    await node_files.while_restarting(lambda: node_control.deliver_users(delivery))


async def add_user(request: Request, ctx: Context) -> Response:
    body, _size = await versions.read_json(request, "node.adduser")
    # scrypt takes ~50 ms: off the loop, as any CPU-bound parse.
    user = await asyncio.to_thread(node_users.parse_add, body)
    await _change(request, lambda: node_users.add(ctx, *_ids(request), user))
    pool_id, node_id = _ids(request)
    location = f"{ctx.base_url}/pools/{quote(pool_id)}/nodes/{quote(node_id)}/users/{quote(user['name'])}"
    return empty_response(request, 201, location=location)


async def replace_user(request: Request, ctx: Context) -> Response:
    body, _size = await versions.read_json(request, "node.updateuser", optional=True)
    values = await asyncio.to_thread(node_users.parse_replace, body)
    name = request.path_params["user_name"]
    await _change(request, lambda: node_users.replace(ctx, *_ids(request), name, values))
    return empty_response(request, 200)


async def delete_user(request: Request, ctx: Context) -> Response:
    name = request.path_params["user_name"]
    await _change(request, lambda: node_users.remove(ctx, *_ids(request), name))
    return empty_response(request, 200)


async def remote_login_settings(request: Request, ctx: Context) -> Response:
    settings = await request.state.runner.read(lambda: node_users.remote_login(ctx, *_ids(request)))
    return json_response(request, settings, odata_type="Microsoft.Azure.Batch.Protocol.Entities.RemoteLoginSettings")


ROUTES = [
    ("/pools/{pool_id}/nodes/{node_id}/users", ["POST"], add_user),
    ("/pools/{pool_id}/nodes/{node_id}/users/{user_name}", ["PUT"], replace_user),
    ("/pools/{pool_id}/nodes/{node_id}/users/{user_name}", ["DELETE"], delete_user),
    ("/pools/{pool_id}/nodes/{node_id}/remoteloginsettings", ["GET"], remote_login_settings),
]
