"""Compute node routes under /pools/{pool_id}/nodes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import listing, render, versions
from shoal.api.http import empty_response
from shoal.service import node_operations
from shoal.service import nodes as node_service
from shoal.service.context import Context


async def list_nodes(request: Request, ctx: Context) -> Response:
    records = node_service.list_for_pool(ctx, request.path_params["pool_id"])
    return listing.respond(request, [render.node(ctx.base_url, record) for record in records], "nodes", "node")


async def get_node(request: Request, ctx: Context) -> Response:
    node = node_service.get(ctx, request.path_params["pool_id"], request.path_params["node_id"])
    return listing.single(request, render.node(ctx.base_url, node), "nodes/@Element", None, "node")


def _ids(request: Request) -> tuple[str, str]:
    return request.path_params["pool_id"], request.path_params["node_id"]


async def disable_scheduling(request: Request, ctx: Context) -> Response:
    body, _size = await versions.read_json(request, "node.disablescheduling", optional=True)
    node_operations.disable_scheduling(ctx, *_ids(request), body)
    return empty_response(request, 200)


async def enable_scheduling(request: Request, ctx: Context) -> Response:
    node_operations.enable_scheduling(ctx, *_ids(request))
    return empty_response(request, 200)


def _restart(kind: str):  # type: ignore[no-untyped-def]
    async def handler(request: Request, ctx: Context) -> Response:
        if kind == "deallocate":
            versions.require(request, versions.V2025)
        body, _size = await versions.read_json(request, f"node.{kind}", optional=True)
        node_operations.restart(ctx, *_ids(request), body, kind,
                                reimage_needs_cloud_service=not versions.reimages_virtual_machine_pools(request))
        return empty_response(request, 202)

    return handler


async def start_node(request: Request, ctx: Context) -> Response:
    versions.require(request, versions.V2025)
    node_operations.start(ctx, *_ids(request))
    return empty_response(request, 202)


ROUTES = [
    ("/pools/{pool_id}/nodes/{node_id}/disablescheduling", ["POST"], disable_scheduling),
    ("/pools/{pool_id}/nodes/{node_id}/enablescheduling", ["POST"], enable_scheduling),
    ("/pools/{pool_id}/nodes/{node_id}/reboot", ["POST"], _restart("reboot")),
    ("/pools/{pool_id}/nodes/{node_id}/reimage", ["POST"], _restart("reimage")),
    # api-version 2025-06-01 on.
    ("/pools/{pool_id}/nodes/{node_id}/deallocate", ["POST"], _restart("deallocate")),
    ("/pools/{pool_id}/nodes/{node_id}/start", ["POST"], start_node),
    ("/pools/{pool_id}/nodes", ["GET"], list_nodes),
    ("/pools/{pool_id}/nodes/{node_id}", ["GET"], get_node),
]
