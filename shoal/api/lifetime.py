"""Pool_GetAllLifetimeStatistics (`GET /lifetimepoolstats`) and Job_GetAllLifetimeStatistics
(`GET /lifetimejobstats`): api-versions before 2023-05-01.17.0 have them; later ones answer
404 `InvalidUri`, as Batch does for a path it does not serve (`service/lifetime.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import versions
from shoal.api.http import base_url, json_response
from shoal.service import lifetime
from shoal.service.context import Context

# The first api-version without them.
UNTIL = "2023-05-01.17.0"


async def pool_statistics(request: Request, ctx: Context) -> Response:
    versions.require_before(request, UNTIL)
    return json_response(request, {"url": f"{base_url(request)}/lifetimepoolstats", **lifetime.pool_statistics(ctx)},
                         odata_type="poolstats/@Element")


async def job_statistics(request: Request, ctx: Context) -> Response:
    versions.require_before(request, UNTIL)
    return json_response(request, {"url": f"{base_url(request)}/lifetimejobstats", **lifetime.job_statistics(ctx)},
                         odata_type="jobstats/@Element")


ROUTES = [
    ("/lifetimepoolstats", ["GET"], pool_statistics),
    ("/lifetimejobstats", ["GET"], job_statistics),
]
