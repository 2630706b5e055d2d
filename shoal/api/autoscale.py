"""Autoscale routes on pools: enable, disable, evaluate (Batch), and autoscale-now (Shoal)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import versions
from shoal.api.http import empty_response, guard, json_response
from shoal.service import autoscale
from shoal.service import pools as pool_service
from shoal.service.context import Context


def _guard(request: Request, ctx: Context, pool_id: str) -> None:
    guard(request, lambda: pool_service.etag_of(ctx, pool_id))


def _done(request: Request, ctx: Context, pool_id: str) -> Response:
    etag, modified = pool_service.etag_of(ctx, pool_id)
    return empty_response(request, 200, etag=etag, last_modified=modified,
                          location=f"{ctx.base_url}/pools/{pool_id}")


async def enable(request: Request, ctx: Context) -> Response:
    pool_id = request.path_params["pool_id"]
    body, _size = await versions.read_json(request, "pool.enableautoscale")
    _guard(request, ctx, pool_id)
    autoscale.enable(ctx, pool_id, body)
    return _done(request, ctx, pool_id)


async def disable(request: Request, ctx: Context) -> Response:
    pool_id = request.path_params["pool_id"]
    _guard(request, ctx, pool_id)
    autoscale.disable(ctx, pool_id)
    return _done(request, ctx, pool_id)


async def evaluate(request: Request, ctx: Context) -> Response:
    pool_id = request.path_params["pool_id"]
    body, _size = await versions.read_json(request, "pool.evaluateautoscale")
    run = autoscale.evaluate(ctx, pool_id, body)
    return json_response(request, run, odata_type="Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun")


async def evaluate_now(request: Request, ctx: Context) -> Response:
    run = autoscale.evaluate_now(ctx, request.path_params["pool_id"])
    return json_response(request, run)


ROUTES = [
    ("/pools/{pool_id}/enableautoscale", ["POST"], enable),
    ("/pools/{pool_id}/disableautoscale", ["POST"], disable),
    ("/pools/{pool_id}/evaluateautoscale", ["POST"], evaluate),
    # Beyond Azure, under /shoal/ so it never collides with a Batch path.
    ("/shoal/v1/pools/{pool_id}/autoscale-now", ["POST"], evaluate_now),
]
