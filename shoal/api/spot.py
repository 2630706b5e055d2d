"""Beyond Azure: preempting a spot node on demand (`shoal node preempt POOL NODE`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api.http import empty_response
from shoal.service import preemption
from shoal.service.context import Context


async def preempt(request: Request, ctx: Context) -> Response:
    preemption.preempt(ctx, request.path_params["pool_id"], request.path_params["node_id"])
    return empty_response(request, 202)


ROUTES = [
    ("/shoal/v1/pools/{pool_id}/nodes/{node_id}/preempt", ["POST"], preempt),
]
