"""The agent protocol's HTTP side (docs/agent-protocol.md): hello and the sync long-poll.

Anyone can reach these routes, so each one authenticates before it reads a byte of the body,
reads at most a route-sized cap, checks the body's shape (shoal.api.agent_bodies) before the
service sees it, and keeps per-node state (the wake-up event) only for nodes that authenticated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from shoal import telemetry
from shoal.api import agent_bodies
from shoal.api.http import dumps, parse_json_off_loop, read_body
from shoal.errors import BatchError, Unauthenticated
from shoal.service import agents, tokens
from shoal.service.liveness import Liveness

if TYPE_CHECKING:
    from shoal.api.app import Api

T = TypeVar("T")
# Where a task finds its authentication token (semantics §4.2).
TASK_TOKEN_VARIABLE = "AZ_BATCH_AUTHENTICATION_TOKEN"


class BatchWait:
    """The nodes one `batch-wait` call watches, and those of them woken since it last answered."""

    def __init__(self) -> None:
        self.members: set[str] = set()
        self.woken: list[str] = []
        self.event = asyncio.Event()

    def wake(self, node_id: str) -> None:
        self.members.discard(node_id)
        self.woken.append(node_id)
        self.event.set()


class AgentHub:
    """One asyncio.Event per node: set when the scheduler (or anything else) has news for it;
    the batch waits that watch nodes; and the nodes' heartbeat timers, refreshed by every
    authenticated call."""

    def __init__(self, liveness: Liveness | None = None) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.liveness = liveness if liveness is not None else Liveness()
        # node id -> (token, incarnation) the store confirmed: the early check of a node's next
        # calls needs no store read. The service call that follows reads the record anyway and
        # refuses a node gone since (which `forget` drops from here).
        self._confirmed: dict[str, tuple[str, str | None]] = {}
        # node id -> number of the node's latest sync: a long-poll the agent dropped (it had news
        # and sent a fresh sync) is superseded by the next, and ends without answering.
        self._polls: dict[str, int] = {}
        # node id -> the batch wait watching it (at most one: a newer call of the node ends it).
        self._watched: dict[str, BatchWait] = {}
        self.closing = False

    def confirmed(self, node_id: str, token: str) -> tuple[bool, str | None]:
        """(whether ``token`` is the one the store confirmed for the node, its incarnation)."""
        known = self._confirmed.get(node_id)
        if known is None or not agents.token_matches(known[0], token):
            return False, None
        return True, known[1]

    def confirm(self, node_id: str, token: str, incarnation: str | None) -> None:
        self._confirmed[node_id] = (token, incarnation)

    def event(self, node_id: str) -> asyncio.Event:
        """The node's event; call only for a node that has just authenticated, so the table holds
        at most one entry per real node."""
        event = self._events.get(node_id)
        if event is None:
            event = self._events[node_id] = asyncio.Event()
        return event

    def begin_poll(self, node_id: str) -> tuple[int, bool]:
        """A call of the node begins (a sync, a batch entry, a batch wait): any earlier one still
        held is woken, to end as superseded (its agent stopped listening when it sent this one),
        and the node's event is cleared before the store is read, so no later wake-up is lost.
        Returns the call's number (for `superseded`) and whether a wake-up was pending."""
        number = self._polls.get(node_id, 0) + 1
        self._polls[node_id] = number
        watch = self._watched.pop(node_id, None)
        if watch is not None:
            watch.members.discard(node_id)  # superseded: that call says nothing more of it
        event = self.event(node_id)
        pending = event.is_set()
        event.set()  # resolves the held call's wait now; the clear does not undo that
        event.clear()
        return number, pending

    def superseded(self, node_id: str, number: int) -> bool:
        return self._polls.get(node_id) != number

    def watch(self, node_id: str, wait: BatchWait) -> None:
        """``wait`` is told when the node is next woken (after `begin_poll`, which ends any
        earlier watch of the node)."""
        self._watched[node_id] = wait
        wait.members.add(node_id)

    def unwatch(self, wait: BatchWait) -> None:
        for node_id in wait.members:
            if self._watched.get(node_id) is wait:
                del self._watched[node_id]
        wait.members.clear()

    def forget(self, node_id: str) -> None:
        self.liveness.forget(node_id)
        self._confirmed.pop(node_id, None)
        self._polls.pop(node_id, None)
        event = self._events.pop(node_id, None)
        if event is not None:
            # A long-poll still waiting on it answers now rather than at its timeout.
            event.set()
        self._wake_watch(node_id)  # its next sync learns it is gone

    def close(self) -> None:
        """The server is stopping: every held long-poll answers now and none waits again, so the
        HTTP server's graceful shutdown finds no request to cancel."""
        self.closing = True
        for node_id in list(self._events):
            self.wake(node_id)
        for node_id in list(self._watched):
            self._wake_watch(node_id)

    def __len__(self) -> int:
        return len(self._events)

    def wake(self, node_id: str) -> None:
        event = self._events.get(node_id)
        if event is not None:
            event.set()
        self._wake_watch(node_id)

    def _wake_watch(self, node_id: str) -> None:
        watch = self._watched.pop(node_id, None)
        if watch is not None:
            watch.wake(node_id)


# Body caps. Hello and register carry a few short fields. A sync carries up to 2,000 reports
# (about 300 bytes each, plus a failure message of at most 4 KiB when a task could not start)
# and one `known` entry (about 150 bytes) per attempt the agent holds: a worst honest sync is
# under 2 MiB in practice; 8 MiB leaves room without letting one request hold much memory.
MAX_REGISTER_BODY_BYTES = 8 * 1024
MAX_HELLO_BODY_BYTES = 64 * 1024
# A goodbye carries at most one copy of the agent's log (agent/outputs.KEPT_BYTES, as base64).
MAX_GOODBYE_BODY_BYTES = 64 * 1024
MAX_SYNC_BODY_BYTES = 8 * 1024 * 1024
# A batch holds many nodes' syncs (agent_bodies.MAX_BATCH_NODES); each is small in practice.
MAX_BATCH_SYNC_BODY_BYTES = 16 * 1024 * 1024
# A batch wait names at most MAX_BATCH_NODES nodes, each with a token and an incarnation.
MAX_BATCH_WAIT_BODY_BYTES = 512 * 1024
# Wakes that come together (a scheduling pass wakes many nodes at once) share one line.
BATCH_WAIT_COALESCE_S = 0.005


def _entry_error(error: BatchError) -> dict[str, Any]:
    """How a batch reports one entry's error."""
    return {"status": error.status, "code": error.code, "message": error.message}


def _superseded() -> Response:
    """The answer to a long-poll its agent dropped for a newer sync: no one reads it."""
    return Response(status_code=499)


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme != "ShoalNode" or not token:
        raise Unauthenticated("A node token is required.")
    return token


def _json(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json")


async def _body(request: Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    return await parse_json_off_loop(raw) if raw.strip() else {}


def _guard(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    operation = f"agent_{handler.__name__}"

    async def endpoint(request: Request) -> Response:
        request.state.operation = operation
        try:
            return await handler(request)
        except BatchError as error:
            values = {"values": error.values} if error.values else {}
            return _json({"code": error.code, "message": error.message, **values}, error.status)
        except ClientDisconnect:
            # The agent dropped the call (a long-poll it interrupts to report news): no one to answer.
            return Response(status_code=499)

    return endpoint


def routes(api: Api, hub: AgentHub, poll_timeout_s: float = 15.0,
           heartbeat_interval_s: float = 5.0, manual_join: bool = False) -> list[Route]:
    # Agent work is never refused as busy: there is one call per node in flight at most.
    runner = api.runner
    orders = api.ctx.folder_orders

    def take_acknowledgements(node_id: str, body: dict[str, Any]) -> None:
        orders.acknowledge(node_id, body.get("deletedTaskDirs") or (), body.get("deletedJobDirs") or ())

    def with_orders(node_id: str, answer: agents.SyncAnswer) -> dict[str, Any]:
        """The answer as sent to the node's current agent, with the folder deletions due."""
        answer.delete_task_dirs, answer.delete_job_dirs = orders.take_due(node_id)
        return with_task_tokens(answer.to_json())

    def with_task_tokens(payload: dict[str, Any]) -> dict[str, Any]:
        """Attempts whose task asks for it get AZ_BATCH_AUTHENTICATION_TOKEN, made here: the
        service knows the rule, the API holds the signing key. The token is good for its
        attempt only (shoal/api/auth.py)."""
        for assignment in payload.get("run") or ():
            if assignment.pop("jobToken", False) and api.identity is not None:
                token = tokens.mint_task_token(api.identity.keys, account=api.ctx.account,
                                               job_id=assignment["jobId"], task_id=assignment["taskId"],
                                               attempt=assignment["attempt"])
                assignment["environment"] = {**(assignment.get("environment") or {}),
                                             TASK_TOKEN_VARIABLE: token}
        return payload

    async def register(request: Request) -> Response:
        scheme, _, join_token = request.headers.get("authorization", "").partition(" ")
        if scheme != "ShoalJoin" or not join_token:
            raise Unauthenticated("A pool join token is required.")
        if not manual_join:
            raise BatchError("This server's provider brings its nodes up; agents cannot join by hand.",
                             code="ManualJoinDisabled", status=409)
        # The join token is checked against the pool the body names, so this body is read
        # unauthenticated: it is capped at a few KiB.
        body = agent_bodies.check_register(await _body(request, MAX_REGISTER_BODY_BYTES))
        answer = await runner.write(agents.register, api.ctx, join_token, body)
        hub.liveness.beat(answer["nodeId"])
        return _json(answer)

    async def store(node_id: str, work: Awaitable[T]) -> T:
        """A service call for a node, on the runner; a node found gone is forgotten here too."""
        try:
            return await work
        except agents.NodeGone:
            hub.forget(node_id)
            raise

    async def incarnation_of(node_id: str, token: str) -> str | None:
        """The incarnation of the node's current agent, once ``token`` is known to be its token
        (from memory when the store confirmed it before)."""
        known, incarnation = hub.confirmed(node_id, token)
        if not known:
            incarnation = await store(node_id, runner.read(agents.authenticate, api.ctx, node_id, token))
            hub.confirm(node_id, token, incarnation)
        return incarnation

    async def authenticated(request: Request) -> tuple[str, str, str | None]:
        """(node id, token, incarnation of the node's current agent) of a caller with the token."""
        node_id, token = request.path_params["node_id"], _token(request)
        return node_id, token, await incarnation_of(node_id, token)

    async def hello(request: Request) -> Response:
        node_id, token, _incarnation = await authenticated(request)
        body = agent_bodies.check_hello(await _body(request, MAX_HELLO_BODY_BYTES))
        peer = request.client.host if request.client else None
        body = agents.admit_addresses(body, peer, joined_by_hand=manual_join)
        answer = await store(node_id, runner.write(agents.hello, api.ctx, node_id, token, body))
        hub.confirm(node_id, token, body.get("incarnation"))
        hub.liveness.beat(node_id)
        answer["pollTimeoutS"] = poll_timeout_s
        answer["heartbeatIntervalS"] = heartbeat_interval_s
        return _json(answer)

    async def sync(request: Request) -> Response:
        node_id, token, incarnation = await authenticated(request)
        # A ClientDisconnect here is the agent dropping a long-poll to report news; it sends a
        # fresh sync at once (_guard answers 499 to no one).
        body = agent_bodies.check_sync(await _body(request, MAX_SYNC_BODY_BYTES))
        telemetry.AGENT_SYNCS.inc()
        current = agents.from_current_agent(incarnation, body)
        if current:
            # The heartbeat: in memory, on the loop, before any store work can keep it waiting.
            hub.liveness.beat(node_id)
            take_acknowledgements(node_id, body)
        poll, _pending = hub.begin_poll(node_id)
        event = hub.event(node_id)
        # Nothing to record: reads alone answer it. Otherwise the writer records it, in order.
        answer = await store(node_id, runner.read(agents.sync_without_writes, api.ctx, node_id, token, body))
        if answer is None:
            answer = await store(node_id, runner.write(agents.sync, api.ctx, node_id, token, body))

        def respond(answer: agents.SyncAnswer) -> Response:
            # Only the node's current agent is given orders (as it alone is given tasks).
            return _json(with_orders(node_id, answer) if current else with_task_tokens(answer.to_json()))

        if (answer.has_news() or body.get("wait") is False or (current and orders.has_due(node_id))
                or hub.closing):
            return respond(answer)
        try:
            await asyncio.wait_for(event.wait(), poll_timeout_s)
        except TimeoutError:
            # Nothing woke the node: whatever changes what it should run or kill wakes it, so
            # the store says what it said when the call began (nothing new). Anything that
            # changed unannounced is read by the sync the agent sends straight after this.
            return _superseded() if hub.superseded(node_id, poll) else respond(answer)
        except asyncio.CancelledError:
            # The server is shutting down: the agent will ask again.
            return Response(status_code=503)
        if hub.superseded(node_id, poll):
            # No one listens for this answer: what it would carry goes to the sync that replaced it.
            return _superseded()
        later = await store(node_id, runner.read(agents.deliveries, api.ctx, node_id, token, body))
        later.ack = answer.ack
        return respond(later)

    async def batch_sync(request: Request) -> Response:
        """Many nodes' syncs in one call, for a process that hosts many nodes (the simulated
        provider): answered at once, never held. The caller authenticates as one of its nodes
        before the body is read; every entry is then checked on its own token."""
        await authenticated(request)
        entries = agent_bodies.check_batch_sync(await _body(request, MAX_BATCH_SYNC_BODY_BYTES))
        telemetry.AGENT_SYNCS.inc(len(entries))
        results: list[dict[str, Any] | BatchError | None] = [None] * len(entries)
        writes: list[tuple[int, agents.SyncEntry]] = []
        reads: list[tuple[int, agents.SyncEntry]] = []
        current: set[int] = set()  # entries from their node's current agent
        for index, (node_id, token, raw) in enumerate(entries):
            try:
                body = agent_bodies.check_sync(raw)
                incarnation = await incarnation_of(node_id, token)
            except BatchError as error:
                results[index] = error
                continue
            if agents.from_current_agent(incarnation, body):
                hub.liveness.beat(node_id)
                take_acknowledgements(node_id, body)
                current.add(index)
            # A poll of the node still held is superseded by this entry, as by a single sync.
            hub.begin_poll(node_id)
            entry = agents.SyncEntry(node_id, token, body)
            (writes if agents.sync_has_news(body) else reads).append((index, entry))

        def sent(index: int, entry: agents.SyncEntry, answer: agents.SyncAnswer | BatchError) -> Any:
            if isinstance(answer, BatchError):
                return answer
            return with_orders(entry.node_id, answer) if index in current else with_task_tokens(answer.to_json())

        if reads:
            quiet = await runner.read(agents.sync_batch_without_writes, api.ctx, [e for _, e in reads])
            for (index, entry), answer in zip(reads, quiet, strict=True):
                if answer is None:
                    writes.append((index, entry))
                else:
                    results[index] = sent(index, entry, answer)
        if writes:
            answers = await runner.write(agents.sync_batch, api.ctx, [e for _, e in writes])
            for (index, entry), answer in zip(writes, answers, strict=True):
                results[index] = sent(index, entry, answer)
        out: list[dict[str, Any]] = []
        for (node_id, _token, _raw), result in zip(entries, results, strict=True):
            if isinstance(result, BatchError):
                if isinstance(result, agents.NodeGone):
                    hub.forget(node_id)
                out.append({"nodeId": node_id, "error": _entry_error(result)})
            else:
                out.append({"nodeId": node_id, "answer": result})
        return _json({"nodes": out})

    async def batch_wait(request: Request) -> Response:
        """The long-poll of many nodes in one call, for a process that hosts many nodes: it
        beats every node it names and then streams, one JSON line at a time, the ids of those
        woken (each then syncs, as after any long-poll), until the poll timeout. A node already
        woken since its last sync, or with folder orders due, is named at once. The caller
        authenticates as one of its nodes before the body is read; every entry is checked on its
        own token. Nothing of any node's work travels here: only ids."""
        await authenticated(request)
        entries = agent_bodies.check_batch_wait(await _body(request, MAX_BATCH_WAIT_BODY_BYTES))
        errors: list[dict[str, Any]] = []
        wait = BatchWait()
        for node_id, token, incarnation in entries:
            try:
                current = await incarnation_of(node_id, token)
            except BatchError as error:  # a gone node was forgotten on the way (`store`)
                errors.append({"nodeId": node_id, **_entry_error(error)})
                continue
            if agents.from_current_agent(current, {"incarnation": incarnation}):
                hub.liveness.beat(node_id)
            # Any call of the node still held is superseded by this one.
            _poll, woken = hub.begin_poll(node_id)
            if woken or hub.closing or orders.has_due(node_id):
                wait.woken.append(node_id)
            else:
                hub.watch(node_id, wait)
        return StreamingResponse(_stream_batch_wait(hub, wait, errors, poll_timeout_s),
                                 media_type="application/x-ndjson")

    async def goodbye(request: Request) -> Response:
        # The call says everything by being made; its body may carry the last of the agent's log,
        # read only from a caller with the node's token (a node already gone is 410, as for sync).
        node_id, token, _incarnation = await authenticated(request)
        body = agent_bodies.check_goodbye(await _body(request, MAX_GOODBYE_BODY_BYTES))
        await runner.write(agents.goodbye, api.ctx, node_id, token, body)
        hub.forget(node_id)
        return _json({})

    return [
        Route("/agent/v1/register", _guard(register), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/goodbye", _guard(goodbye), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/hello", _guard(hello), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/sync", _guard(sync), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/batch-sync", _guard(batch_sync), methods=["POST"]),
        Route("/agent/v1/nodes/{node_id}/batch-wait", _guard(batch_wait), methods=["POST"]),
    ]


async def _stream_batch_wait(hub: AgentHub, wait: BatchWait, errors: list[dict[str, Any]],
                             timeout_s: float) -> AsyncIterator[bytes]:
    """The lines of a batch wait: its entries' errors, then the ids woken as they are woken,
    then `{"end": true}` when the poll times out or no node is left to watch. A client that
    goes away ends it (Starlette cancels the generator), and its nodes are unwatched."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        if errors:
            yield dumps({"errors": errors}) + b"\n"
        while True:
            if wait.woken:
                woken, wait.woken = wait.woken, []
                yield dumps({"woken": woken}) + b"\n"
            remaining = deadline - loop.time()
            if not wait.members or remaining <= 0:
                break
            wait.event.clear()
            try:
                await asyncio.wait_for(wait.event.wait(), remaining)
            except TimeoutError:
                break
            await asyncio.sleep(BATCH_WAIT_COALESCE_S)
        yield dumps({"end": True}) + b"\n"
    finally:
        hub.unwatch(wait)
