"""The Starlette application: one wrapper authenticates, checks the api-version and maps errors;
the route modules only translate between HTTP and `shoal.service`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shoal.api import sharedkey, unserved
from shoal.api.http import error_response, new_request_id
from shoal.config import API_VERSIONS
from shoal.errors import BadRequest, BatchError
from shoal.service.context import Context

if TYPE_CHECKING:
    from shoal.api.agent import AgentHub

log = logging.getLogger("shoal.api")
Handler = Callable[[Request, Context], Awaitable[Response]]


class Api:
    """Holds what the routes share: the service context per request and the account keys."""

    def __init__(self, ctx: Context, keys: dict[str, tuple[str, str]]) -> None:
        self.ctx = ctx
        self.keys = keys

    def context_for(self, request: Request) -> Context:
        from shoal.api.http import base_url

        ctx = self.ctx
        url = base_url(request)
        if ctx.base_url == url:
            return ctx
        return Context(engine=ctx.engine, account=ctx.account, signals=ctx.signals, base_url=url)

    def batch(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a Batch REST handler: Shared Key, api-version, error body."""

        async def endpoint(request: Request) -> Response:
            request.state.request_id = new_request_id()
            try:
                self._authenticate(request)
                version = request.query_params.get("api-version")
                if version is None:
                    raise BadRequest("The api-version query parameter is required.",
                                     code="MissingRequiredQueryParameter",
                                     values={"QueryParameterName": "api-version"})
                if version not in API_VERSIONS:
                    raise BadRequest("The specified api-version is not supported.",
                                     code="InvalidApiVersion" if version else "MissingRequiredQueryParameter",
                                     values={"QueryParameterName": "api-version", "QueryParameterValue": version})
                return await handler(request, self.context_for(request))
            except BatchError as error:
                return error_response(request, error)
            except ClientDisconnect:
                # The client left while we read its body: nobody is there to answer.
                return Response(status_code=499)
            except Exception:  # noqa: BLE001 - the client gets a Batch error, the log gets the trace
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                return error_response(request, BatchError("An internal error occurred.", code="InternalError"))

        return endpoint

    def _authenticate(self, request: Request) -> None:
        """Verify Shared Key before anything else is read (the body included), then leave the
        handlers exactly the query that was signed."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        query = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        sharedkey.refuse_ambiguity(query, request.headers.items())
        sharedkey.verify(request.method, path, query, request.headers, self._keys_for)
        if any(not value for _name, value in query):
            # The SDK's canonical form does not sign blank parameters: handlers must not see them.
            request.scope["query_string"] = urlencode([(n, v) for n, v in query if v]).encode("latin-1")
            request.__dict__.pop("_query_params", None)

    def _keys_for(self, account: str) -> tuple[str, ...] | None:
        pair = self.keys.get(account)
        return pair if pair else None


def build_app(api: Api, agent_hub: AgentHub, poll_timeout_s: float, heartbeat_interval_s: float = 5.0,
              manual_join: bool = False) -> Starlette:
    from shoal.api import agent, autoscale, files, jobs, nodes, pools, spot, tasks

    routes: list[Route] = []
    for module in (pools, autoscale, nodes, spot, jobs, tasks, files):
        for path, methods, handler in module.ROUTES:
            routes.append(Route(path, api.batch(handler), methods=methods))
    routes.extend(agent.routes(api, agent_hub, poll_timeout_s, heartbeat_interval_s, manual_join))
    routes.append(Route("/shoal/v1/pools/{pool_id}/join-token", api.batch(_join_token), methods=["GET"]))

    async def no_such_route(request: Request, exc: Exception) -> Response:
        operation = unserved.operation_for(request.method, request.url.path)
        if operation is not None:
            return await api.batch(_unserved(operation))(request)
        return await _no_such_route(request, exc)

    async def no_such_method(request: Request, exc: Exception) -> Response:
        operation = unserved.operation_for(request.method, request.url.path)
        if operation is not None:
            return await api.batch(_unserved(operation))(request)
        return await _no_such_method(request, exc)

    return Starlette(routes=routes, exception_handlers={404: no_such_route, 405: no_such_method})


def _unserved(operation: str) -> Handler:
    async def handler(_request: Request, _ctx: Context) -> Response:
        raise unserved.not_supported(operation)

    return handler


async def _join_token(request: Request, ctx: Context) -> Response:
    """Beyond Azure: the secret an agent started by hand presents to join this pool."""
    from shoal.api.http import json_response
    from shoal.service import pools as pool_service

    with ctx.engine.connect() as conn:
        pool = pool_service.load(conn, ctx, request.path_params["pool_id"])
    return json_response(request, {"poolId": pool.id, "joinToken": pool.join_token})


async def _no_such_route(request: Request, _exc: Exception) -> Response:
    request.state.request_id = new_request_id()
    return error_response(request, BatchError("The requested URI does not represent any resource on the server.",
                                              code="InvalidUri", status=404,
                                              values={"RequestUri": request.url.path}))


async def _no_such_method(request: Request, _exc: Exception) -> Response:
    request.state.request_id = new_request_id()
    return error_response(request, BatchError("The HTTP verb is not supported for this resource.",
                                              code="UnsupportedHttpVerb", status=405,
                                              values={"HttpVerb": request.method}))
