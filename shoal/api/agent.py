"""The agent protocol's HTTP side (docs/agent-protocol.md): hello and the sync long-poll."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shoal.errors import BatchError, Unauthenticated
from shoal.service import agents

if TYPE_CHECKING:
    from shoal.api.app import Api


class AgentHub:
    """One asyncio.Event per node: set when the scheduler (or anything else) has news for it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, node_id: str) -> asyncio.Event:
        event = self._events.get(node_id)
        if event is None:
            event = self._events[node_id] = asyncio.Event()
        return event

    def wake(self, node_id: str) -> None:
        event = self._events.get(node_id)
        if event is not None:
            event.set()


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme != "ShoalNode" or not token:
        raise Unauthenticated("A node token is required.")
    return token


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _guard(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except BatchError as error:
            return _json({"code": error.code, "message": error.message}, error.status)

    return endpoint


def routes(api: Api, hub: AgentHub, poll_timeout_s: float = 15.0,
           heartbeat_interval_s: float = 5.0, manual_join: bool = False) -> list[Route]:
    async def register(request: Request) -> Response:
        scheme, _, join_token = request.headers.get("authorization", "").partition(" ")
        if scheme != "ShoalJoin" or not join_token:
            raise Unauthenticated("A pool join token is required.")
        if not manual_join:
            raise BatchError("This server's provider brings its nodes up; agents cannot join by hand.",
                             code="ManualJoinDisabled", status=409)
        return _json(agents.register(api.ctx, join_token, orjson.loads(await request.body() or b"{}")))

    async def hello(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        answer = agents.hello(api.ctx, request.path_params["node_id"], _token(request), body)
        answer["pollTimeoutS"] = poll_timeout_s
        answer["heartbeatIntervalS"] = heartbeat_interval_s
        return _json(answer)

    async def sync(request: Request) -> Response:
        node_id = request.path_params["node_id"]
        token = _token(request)
        try:
            raw = await request.body()
        except ClientDisconnect:
            # The agent dropped a long-poll to report news; it sends a fresh sync at once.
            return Response(status_code=499)
        body = orjson.loads(raw or b"{}")
        event = hub.event(node_id)
        # Cleared before reading the store: a wake-up after this point is never lost.
        event.clear()
        answer = agents.sync(api.ctx, node_id, token, body)
        if answer.has_news() or body.get("wait") is False:
            return _json(answer.to_json())
        try:
            await asyncio.wait_for(event.wait(), poll_timeout_s)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            # The server is shutting down: the agent will ask again.
            return Response(status_code=503)
        later = agents.deliveries(api.ctx, node_id, token, body)
        later.ack = answer.ack
        return _json(later.to_json())

    async def goodbye(request: Request) -> Response:
        agents.goodbye(api.ctx, request.path_params["node_id"], _token(request))
        return _json({})

    return [
        Route("/agent/v1/register", _guard(register), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/goodbye", _guard(goodbye), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/hello", _guard(hello), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/sync", _guard(sync), methods=["POST"]),
    ]
