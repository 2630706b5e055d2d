"""Beyond Azure: the usage ledger (`shoal usage`): `GET /shoal/v1/usage[?after=JOB_ID]`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api.http import json_response
from shoal.errors import InvalidQuery
from shoal.service import ledger
from shoal.service.context import Context


async def list_usage(request: Request, ctx: Context) -> Response:
    after = request.query_params.get("after")
    if after is not None and (len(after) > 64 or not after.isprintable()):
        raise InvalidQuery("after", after[:64], "The value must be a job id.")
    return json_response(request, ledger.usage(ctx, after))


ROUTES = [
    ("/shoal/v1/usage", ["GET"], list_usage),
]
