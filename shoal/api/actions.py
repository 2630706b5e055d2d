"""The routes that change one pool, job or job schedule in place (PATCH, PUT and the POST
actions): one handler shape, made here for each of them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import authorization, versions
from shoal.api.http import empty_response, guard
from shoal.service.context import Context

EtagOf = Callable[[Context, str], tuple[str, datetime]]


def conditional_action(collection: str, param: str, etag_of: EtagOf, action: Callable[..., Any], status: int,
                       body_name: str | None, *, optional_body: bool = False) -> Any:
    """A handler for `/{collection}/{param}…`: the body read at the request's api-version (none
    when `body_name` is None), the conditional headers checked against the resource's ETag, then
    `action(ctx, id[, body])`, answered `status` with the new ETag and the resource's location."""

    async def handler(request: Request, ctx: Context) -> Response:
        resource_id = request.path_params[param]
        payload = None
        if body_name is not None:
            payload, _size = await versions.read_json(request, body_name, optional=optional_body)
            # A job or schedule moved onto an auto pool makes a pool: that needs pool rights too.
            authorization.require_pool_rights_for_auto_pools(request, payload)
        guard(request, lambda: etag_of(ctx, resource_id))
        if body_name is None:
            action(ctx, resource_id)
        else:
            action(ctx, resource_id, payload)
        etag, modified = etag_of(ctx, resource_id)
        return empty_response(request, status, etag=etag, last_modified=modified,
                              location=f"{ctx.base_url}/{collection}/{resource_id}")

    return handler
