"""The Starlette application: one wrapper authenticates, checks the api-version and maps errors;
the route modules only translate between HTTP and `shoal.service`."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shoal import telemetry
from shoal.api import authorization, unserved, versions
from shoal.api.access_log import RequestLog
from shoal.api.auth import Authenticator, Caller, Identity
from shoal.api.authorization import Authorizer
from shoal.api.http import MAX_BODY_BYTES, error_response, new_request_id, read_body
from shoal.errors import BatchError
from shoal.service.context import Context
from shoal.store.runner import Busy, StoreRunner

if TYPE_CHECKING:
    from shoal.api.agent import AgentHub

log = logging.getLogger("shoal.api")
Handler = Callable[[Request, Context], Awaitable[Response]]

# Where a Batch handler runs (shoal.store.runner): "write" on the one writer thread, "read" and
# "scan" on reader threads, "loop" on the event loop itself, for handlers that talk to nodes
# through the loop's HTTP client and offload their own store calls.
Placement = str


class ServerBusy(BatchError):
    status = 503
    code = "ServerBusy"


class Api:
    """Holds what the routes share: the service context per request, the account keys, and the
    runner that keeps store work off the event loop."""

    def __init__(self, ctx: Context, keys: dict[str, tuple[str, str]], runner: StoreRunner | None = None,
                 identity: Identity | None = None) -> None:
        self.ctx = ctx
        self.keys = keys
        self.runner = runner if runner is not None else StoreRunner()
        # Shared Key, bearer tokens and the account's allowed modes (shoal/api/auth.py).
        self.auth = Authenticator(ctx, keys, self.runner, identity)
        # What each principal's role assignments allow it (shoal/api/authorization.py).
        self.authz = Authorizer(ctx, self.runner)
        self.identity = identity
        # Called with the account's keys once they change (the server rewrites its endpoint file).
        self.on_keys_changed: Callable[[str, tuple[str, str]], None] = lambda _account, _keys: None

    def replace_keys(self, account: str, keys: tuple[str, str]) -> None:
        """The account's keys after one was regenerated: Shared Key verification and the
        dashboard's sessions read this same mapping, so the old key is refused from the next
        request on."""
        self.keys[account] = keys
        self.on_keys_changed(account, keys)

    def context_for(self, request: Request) -> Context:
        """The service context with this request's base URL (for `url` and `odata` fields); every
        other setting (time scale, sample lag, node metrics, spot capacity) is the server's."""
        from shoal.api.http import base_url

        ctx = self.ctx
        url = base_url(request)
        if ctx.base_url == url:
            return ctx
        # A shallow copy: the node metrics cache and the signals stay shared with the server.
        return dataclasses.replace(ctx, base_url=url)

    def batch(self, handler: Handler, placement: Placement = "loop", *,
              path: str | None = None) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a Batch REST handler: authentication, authorization (by the route's ``path``
        template: shoal/api/authorization.py), api-version, error body; then run it where
        ``placement`` says."""

        operation = getattr(handler, "__name__", telemetry.UNMATCHED)
        needs = {method: authorization.required(method, path) if path is not None else None
                 for method in ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE")}

        async def endpoint(request: Request) -> Response:
            request.state.request_id = new_request_id()
            request.state.operation = operation
            # For handlers on the loop that send their store work to the runner themselves.
            request.state.runner = self.runner
            try:
                caller = await self.authenticate(request)
                await self.authz.authorize(request, caller, needs.get(request.method))
                # Handlers shape bodies and answers by it (shoal.api.versions).
                request.state.api_version = versions.check_version(request.query_params.get("api-version"))
                ctx = self.context_for(request)
                if placement == "loop":
                    return await handler(request, ctx)
                lane = self.runner.lane(placement)
                if lane.full():
                    raise Busy(lane.name)  # before reading a body that would only be refused
                # Read on the loop (the body is bounded); Starlette keeps it on the request, so
                # the handler's own read in another thread finds it there and does no I/O. Reads
                # take no body (Batch defines none): one sent is left unread, as before.
                request._body = (b"" if request.method in ("GET", "HEAD")  # noqa: SLF001
                                 else await read_body(request, MAX_BODY_BYTES))
                return await lane.run_coroutine(handler, request, ctx, shed=True)
            except Busy as busy:
                response = error_response(request, ServerBusy(
                    "The server is busy; retry the request after the interval in Retry-After."))
                response.headers["Retry-After"] = str(busy.retry_after_s)
                return response
            except BatchError as error:
                return error_response(request, error)
            except ClientDisconnect:
                # The client left while we read its body: nobody is there to answer.
                return Response(status_code=499)
            except Exception:  # noqa: BLE001 - the client gets a Batch error, the log gets the trace
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                return error_response(request, BatchError("An internal error occurred.", code="InternalError"))

        return endpoint

    async def authenticate(self, request: Request) -> Caller:
        """Who is calling (Shared Key, a bearer token or a task token), before anything else is
        read, the body included: shoal/api/auth.py."""
        return await self.auth.authenticate(request)


def build_app(api: Api, agent_hub: AgentHub, poll_timeout_s: float, heartbeat_interval_s: float = 5.0,
              manual_join: bool = False, metrics_token: str | None = None,
              duties_running: Callable[[], bool] = lambda: True) -> Starlette:
    from shoal.api import (
        agent,
        applications,
        autoscale,
        certificates,
        files,
        health,
        identity,
        job_schedules,
        jobs,
        ledger,
        lifetime,
        management,
        node_logs,
        node_users,
        nodes,
        pools,
        spot,
        tasks,
    )
    from shoal.api import roles as role_routes

    routes: list[BaseRoute] = []
    for module in (pools, autoscale, nodes, spot, jobs, job_schedules, tasks, certificates, applications, ledger,
                   lifetime):
        for path, methods, handler in module.ROUTES:
            routes.append(Route(path, api.batch(handler, placement_of(handler, methods), path=path), methods=methods))
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/certificates("):
            route.path_regex = re.compile(route.path_regex.pattern, certificates.CASE_INSENSITIVE)
    # File routes relay to nodes through the loop's HTTP client: they stay on the loop and send
    # their store reads to a reader thread themselves.
    routes.extend(Route(path, api.batch(handler, "loop", path=path), methods=methods)
                  for path, methods, handler in files.ROUTES)
    # So do the node user routes: they hand the node its users once the store has them.
    routes.extend(Route(path, api.batch(handler, "loop", path=path), methods=methods)
                  for path, methods, handler in (*node_users.ROUTES, *node_logs.ROUTES))
    routes.extend(agent.routes(api, agent_hub, poll_timeout_s, heartbeat_interval_s, manual_join))
    # Managing applications and packages (Azure's management plane; shoal/api/applications.py):
    # on the loop, since an upload streams its body to storage and offloads its own store work.
    routes.extend(Route(path, api.batch(handler, "loop", path=path), methods=methods)
                  for path, methods, handler in applications.EXTENSION_ROUTES)
    join_token = "/shoal/v1/pools/{pool_id}/join-token"
    routes.append(Route(join_token, api.batch(_join_token, "read", path=join_token), methods=["GET"]))
    routes.extend(health.routes(api, metrics_token, duties_running))
    # The token authority and the principals that sign in to it (shoal/api/identity.py).
    routes.extend(identity.routes(api, api.identity))
    # Role definitions and assignments (shoal/api/roles.py).
    routes.extend(role_routes.routes(api))
    # The management API of the account, in ARM's shape (shoal/api/management.py).
    routes.extend(management.routes(api))

    # The web dashboard (shoal/web), signed in with the account key, on the same port.
    from shoal.web.routes import mount as mount_dashboard

    routes.append(mount_dashboard(api))

    async def no_such_route(request: Request, exc: Exception) -> Response:
        if management.is_management_path(request.url.path):
            return management.unrouted(request, 404)
        operation = unserved.operation_for(request.method, request.url.path)
        if operation is not None:
            return await api.batch(_unserved(operation), path=unserved.template_of(operation))(request)
        return await _no_such_route(request, exc)

    async def no_such_method(request: Request, exc: Exception) -> Response:
        if management.is_management_path(request.url.path):
            return management.unrouted(request, 405)
        operation = unserved.operation_for(request.method, request.url.path)
        if operation is not None:
            return await api.batch(_unserved(operation), path=unserved.template_of(operation))(request)
        return await _no_such_method(request, exc)

    return Starlette(routes=routes, exception_handlers={404: no_such_route, 405: no_such_method},
                     middleware=[Middleware(RequestLog)])


# Reads that may walk many rows: they get lanes of their own, so they never delay a point read.
_SCANS = {"task_counts", "node_counts"}
# Handlers that call a node through the loop's HTTP client, or wait on a child process (opening a
# pfx): they offload their own store work.
_ON_LOOP = {"delete_task", "add_certificate"}


def placement_of(handler: Handler, methods: list[str]) -> Placement:
    name = getattr(handler, "__name__", "")
    if name in _ON_LOOP:
        return "loop"
    if set(methods) <= {"GET", "HEAD"}:
        return "scan" if name.startswith("list_") or name in _SCANS else "read"
    # Anything that may change the store goes to the one writer, in order.
    return "write"


def _unserved(operation: str) -> Handler:
    async def handler(_request: Request, _ctx: Context) -> Response:
        raise unserved.not_supported(operation)

    handler.__name__ = operation  # the operation it is counted under (shoal.telemetry)
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
