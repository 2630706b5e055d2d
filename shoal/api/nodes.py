"""Compute node routes under /pools/{pool_id}/nodes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import listing
from shoal.service import nodes as node_service
from shoal.service.context import Context


async def list_nodes(request: Request, ctx: Context) -> Response:
    return listing.respond(request, node_service.list_for_pool(ctx, request.path_params["pool_id"]), "nodes")


async def get_node(request: Request, ctx: Context) -> Response:
    node = node_service.get(ctx, request.path_params["pool_id"], request.path_params["node_id"])
    return listing.single(request, node, "nodes/@Element", None)


ROUTES = [
    ("/pools/{pool_id}/nodes", ["GET"], list_nodes),
    ("/pools/{pool_id}/nodes/{node_id}", ["GET"], get_node),
]
