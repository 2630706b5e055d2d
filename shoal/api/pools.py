"""Pool routes: /pools, /pools/{id} and the pool actions, plus /nodecounts and /supportedimages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import listing, offload, render, versions
from shoal.api.actions import conditional_action
from shoal.api.http import empty_response, guard
from shoal.model import images
from shoal.service import pools as pool_service
from shoal.service import usage
from shoal.service.context import Context

POOL_TYPE = "pools/@Element"


async def create_pool(request: Request, ctx: Context) -> Response:
    body, size = await versions.read_json(request, "pool.create")
    pool_service.add(ctx, await offload.validate(size, pool_service.parse_create, body))
    etag, modified = pool_service.etag_of(ctx, body["id"])
    return empty_response(request, 201, etag=etag, last_modified=modified,
                          location=f"{ctx.base_url}/pools/{body['id']}")


async def list_pools(request: Request, ctx: Context) -> Response:
    return listing.respond(request, [render.pool(ctx.base_url, record) for record in pool_service.list_all(ctx)],
                           "pools", "pool")


async def get_pool(request: Request, ctx: Context) -> Response:
    pool_id = request.path_params["pool_id"]
    etag, modified = pool_service.etag_of(ctx, pool_id)
    guard(request, lambda: (etag, modified))
    if request.method == "HEAD":
        return empty_response(request, 200, etag=etag, last_modified=modified)
    return listing.single(request, render.pool(ctx.base_url, pool_service.get(ctx, pool_id)), POOL_TYPE, modified,
                          "pool")


def _write_action(action, status: int, body_name: str | None):  # type: ignore[no-untyped-def]
    return conditional_action("pools", "pool_id", pool_service.etag_of, action, status, body_name)


async def delete_pool(request: Request, ctx: Context) -> Response:
    pool_id = request.path_params["pool_id"]
    guard(request, lambda: pool_service.etag_of(ctx, pool_id))
    pool_service.delete(ctx, pool_id)
    return empty_response(request, 202)


async def list_usage_metrics(request: Request, ctx: Context) -> Response:
    """Pool_ListUsageMetrics: core hours per pool and 30-minute interval (`service/usage.py`)."""
    items = usage.pool_usage_metrics(ctx, request.query_params.get("starttime"),
                                     request.query_params.get("endtime"))
    return listing.respond(request, items, "poolusagemetrics", "poolusagemetrics")


async def node_counts(request: Request, ctx: Context) -> Response:
    return listing.respond(request, pool_service.node_counts(ctx), "poolnodecounts", "nodecounts")


async def supported_images(request: Request, ctx: Context) -> Response:
    return listing.respond(request, images.supported_images(), "supportedimages", "supportedimages")


ROUTES = [
    ("/pools", ["POST"], create_pool),
    ("/pools", ["GET"], list_pools),
    ("/pools/{pool_id}", ["GET", "HEAD"], get_pool),
    ("/pools/{pool_id}", ["PATCH"], _write_action(pool_service.patch, 200, "pool.patch")),
    ("/pools/{pool_id}", ["DELETE"], delete_pool),
    ("/pools/{pool_id}/updateproperties", ["POST"], _write_action(pool_service.update_properties, 204, "pool.updateproperties")),
    ("/pools/{pool_id}/resize", ["POST"], _write_action(pool_service.resize, 202, "pool.resize")),
    ("/pools/{pool_id}/stopresize", ["POST"], _write_action(pool_service.stop_resize, 202, None)),
    ("/pools/{pool_id}/removenodes", ["POST"], _write_action(pool_service.remove_nodes, 202, "pool.removenodes")),
    ("/nodecounts", ["GET"], node_counts),
    ("/poolusagemetrics", ["GET"], list_usage_metrics),
    ("/supportedimages", ["GET"], supported_images),
]
