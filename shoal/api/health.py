"""The server's own routes: `/health` (the process answers), `/ready` (its store answers and its
duties run) and `/metrics` (Prometheus' text format, shoal.telemetry).

`/health` and `/ready` say nothing but ok or not, so they need no credentials (a load balancer
or an orchestrator probes them). `/metrics` names pools and counts work: it takes the account's
Shared Key, or the scrape token of the data dir (`metrics-token`, for Prometheus'
`authorization.credentials_file`).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoal import telemetry
from shoal.api.http import dumps, error_response, new_request_id
from shoal.errors import BatchError, Unauthenticated

if TYPE_CHECKING:
    from shoal.api.app import Api

# A store that takes longer than this to answer `SELECT 1` is not ready for clients.
READY_STORE_TIMEOUT_S = 2.0


def routes(api: Api, metrics_token: str | None, duties_running: Callable[[], bool]) -> list[Route]:
    async def health(_request: Request) -> Response:
        return _ok({"status": "ok"})

    async def ready(_request: Request) -> Response:
        if not duties_running():
            return _ok({"status": "starting"}, 503)

        def ping() -> None:
            with api.ctx.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(api.runner.read(ping), READY_STORE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - any failure of the store means not ready
            return _ok({"status": "store unavailable"}, 503)
        return _ok({"status": "ready"})

    async def metrics(request: Request) -> Response:
        request.state.request_id = new_request_id()
        try:
            await _authenticate(request)
        except BatchError as error:
            return error_response(request, error)
        body = await api.runner.read(telemetry.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _authenticate(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if metrics_token and hmac.compare_digest(token.strip().encode(), metrics_token.encode()):
                return
            raise Unauthenticated("The scrape token is not valid.")
        await api.authenticate(request)

    return [Route("/health", health, methods=["GET", "HEAD"]), Route("/ready", ready, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"])]


def _ok(payload: dict[str, str], status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json")
