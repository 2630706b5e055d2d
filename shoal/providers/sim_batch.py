"""Batch syncs for the simulated agents: the answer-at-once syncs of many nodes in one call.

A busy simulated node sends a sync whenever a task ends; at thousands of nodes draining short
tasks that is thousands of calls a second, each its own HTTP request, store transaction and
scheduling pass on the control plane. `SyncBatcher` gathers the syncs that do not wait (the
ones that carry news, and heartbeats) for a few milliseconds and sends them as one
`batch-sync` call (docs/agent-protocol.md): one request, one transaction, one scheduling pass
per pool. Each entry still carries its own node's token and body, and each answer (or error) goes
back to the node that sent it, which handles it exactly as the answer of a single sync.

A batch sync is answered at once. The nodes' long-polls are gathered the same way into
`batch-wait` calls (`WaitBatcher`), held open and streaming the ids of the nodes woken.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson

from shoal.agent.client import API_PREFIX, AuthRejectedError, NodeGoneError, ProtocolError
from shoal.providers.sim_http import HttpClient, TransportError

# How long a sync waits for others to share its call; well under a task's report latency.
BATCH_WINDOW_S = 0.003
# The control plane's cap (shoal/api/agent_bodies.py MAX_BATCH_NODES).
MAX_BATCH_NODES = 1000


@dataclass
class _Entry:
    node_id: str
    token: str
    body: dict[str, object]
    answer: asyncio.Future[dict[str, object]]


def _error_for(status: int, message: str) -> Exception:
    """The exception a single sync would have raised for this status."""
    if status == 410:
        return NodeGoneError(message)
    if status == 401:
        return AuthRejectedError(message)
    if status >= 500 or status == 429:
        return TransportError(f"server answered {status}")
    return ProtocolError(f"/sync: {status} {message}")


class SyncBatcher:
    def __init__(self, http: HttpClient, window_s: float = BATCH_WINDOW_S, max_nodes: int = MAX_BATCH_NODES) -> None:
        self.http = http
        self.window_s = window_s
        self.max_nodes = max_nodes
        self._waiting: list[_Entry] = []
        self._flush: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.calls = 0  # batch calls sent, for tests and benchmarks

    async def sync(self, node_id: str, token: str, body: dict[str, object], timeout: float) -> dict[str, object]:
        """One node's sync (that does not wait), sent with whatever others arrive meanwhile;
        raises what `SimNode._post_once` would raise for the same answer."""
        loop = asyncio.get_running_loop()
        entry = _Entry(node_id, token, body, loop.create_future())
        entry.answer.add_done_callback(_retrieve)  # its node may have stopped waiting for it
        self._waiting.append(entry)
        if len(self._waiting) >= self.max_nodes:
            self._send_waiting()
        elif self._flush is None:
            self._flush = loop.call_later(self.window_s, self._send_waiting)
        try:
            return await asyncio.wait_for(asyncio.shield(entry.answer), timeout)
        except TimeoutError:
            raise TransportError("the batch call timed out") from None

    def _send_waiting(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        entries, self._waiting = self._waiting, []
        entries = [e for e in entries if not e.answer.done()]
        if entries:
            task = asyncio.ensure_future(self._send(entries))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, entries: list[_Entry]) -> None:
        try:
            await self._deliver(entries)
        except Exception as exc:  # a lost call fails its entries; each node retries as it would
            error = exc if isinstance(exc, TransportError) else TransportError(repr(exc))
            for entry in entries:
                if not entry.answer.done():
                    entry.answer.set_exception(error)

    async def _deliver(self, entries: list[_Entry]) -> None:
        while entries:
            # The call authenticates as its first node; if that node is gone or refused, it
            # gets that answer and the others go again under the next one.
            carrier = entries[0]
            payload = orjson.dumps({"nodes": [{"nodeId": e.node_id, "token": e.token, "sync": e.body}
                                              for e in entries]})
            self.calls += 1
            status, raw = await self.http.post(f"{API_PREFIX}/nodes/{carrier.node_id}/batch-sync", payload,
                                               f"ShoalNode {carrier.token}", 30.0)
            if status in (401, 410):
                _settle(carrier, _error_for(status, raw[:500].decode(errors="replace")))
                entries = entries[1:]
                continue
            if status != 200:
                raise _error_for(status, raw[:500].decode(errors="replace"))
            answers = orjson.loads(raw).get("nodes")
            if not isinstance(answers, list) or len(answers) != len(entries):
                raise ProtocolError("batch-sync: the answer does not match the batch")
            for entry, result in zip(entries, answers, strict=True):
                if not isinstance(result, dict) or result.get("nodeId") != entry.node_id:
                    _settle(entry, ProtocolError("batch-sync: an answer for another node"))
                elif isinstance(result.get("error"), dict):
                    error = result["error"]
                    _settle(entry, _error_for(int(error.get("status") or 500), str(error.get("message"))))
                elif isinstance(result.get("answer"), dict):
                    _settle(entry, result["answer"])
                else:
                    _settle(entry, ProtocolError("batch-sync: an entry without an answer"))
            return

    async def aclose(self) -> None:
        self._send_waiting()
        for task in list(self._sending):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _settle(entry: _Entry, outcome: dict[str, object] | Exception) -> None:
    if entry.answer.done():
        return  # its node stopped waiting (cancelled or timed out)
    if isinstance(outcome, Exception):
        entry.answer.set_exception(outcome)
    else:
        entry.answer.set_result(outcome)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# Nodes that begin to wait within this window share one batch wait; a node waits for its
# answer to a long-poll anyway, so the window costs nothing but a little latency on idle nodes.
WAIT_WINDOW_S = 0.05


@dataclass
class _Waiter:
    node_id: str
    token: str
    incarnation: str | None
    woken: asyncio.Future[bool]


class WaitBatcher:
    """The long-polls of many simulated nodes as `batch-wait` calls (docs/agent-protocol.md):
    one held call for up to MAX_BATCH_NODES nodes that streams the ids of those woken. A woken
    node then syncs (through the `SyncBatcher`), as after any long-poll. An idle pool of
    thousands of nodes costs a few calls per poll timeout instead of one per node."""

    def __init__(self, http: HttpClient, window_s: float = WAIT_WINDOW_S, max_nodes: int = MAX_BATCH_NODES) -> None:
        self.http = http
        self.window_s = window_s
        self.max_nodes = max_nodes
        self._pending: list[_Waiter] = []
        self._flush: asyncio.TimerHandle | None = None
        self._watching: set[asyncio.Task[None]] = set()
        self._timeout = 30.0
        self.calls = 0

    async def wait(self, node_id: str, token: str, incarnation: str | None, timeout: float) -> bool:
        """True when the node is woken; False when its wait ended without (the poll timed out);
        raises what a sync of the node would raise for its error."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(node_id, token, incarnation, loop.create_future())
        waiter.woken.add_done_callback(_retrieve)  # its node may have stopped waiting
        self._timeout = timeout
        self._pending.append(waiter)
        if len(self._pending) >= self.max_nodes:
            self._send_pending()
        elif self._flush is None:
            self._flush = loop.call_later(self.window_s, self._send_pending)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.woken), timeout + self.window_s)
        except TimeoutError:
            return False

    def _send_pending(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        waiters, self._pending = self._pending, []
        waiters = [w for w in waiters if not w.woken.done()]
        if waiters:
            task = asyncio.ensure_future(self._watch(waiters))
            self._watching.add(task)
            task.add_done_callback(self._watching.discard)

    async def _watch(self, waiters: list[_Waiter]) -> None:
        try:
            await self._watch_once(waiters)
        except Exception as exc:
            error = exc if isinstance(exc, TransportError) else TransportError(repr(exc))
            for waiter in waiters:
                _settle_wait(waiter, error)
        for waiter in waiters:
            _settle_wait(waiter, False)

    async def _watch_once(self, waiters: list[_Waiter]) -> None:
        by_id = {w.node_id: w for w in waiters}
        pending = bytearray()

        def on_line(line: bytes) -> None:
            message = orjson.loads(line)
            for node_id in message.get("woken") or ():
                if (waiter := by_id.get(node_id)) is not None:
                    _settle_wait(waiter, True)
            for error in message.get("errors") or ():
                if (waiter := by_id.get(error.get("nodeId"))) is not None:
                    _settle_wait(waiter, _error_for(int(error.get("status") or 500), str(error.get("message"))))

        def on_chunk(chunk: bytes) -> None:
            pending.extend(chunk)
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end])
                del pending[:end + 1]
                if line.strip():
                    on_line(line)

        while waiters:
            carrier = waiters[0]
            payload = orjson.dumps({"nodes": [{"nodeId": w.node_id, "token": w.token, "incarnation": w.incarnation}
                                              for w in waiters]})
            self.calls += 1
            status, raw = await self.http.post(f"{API_PREFIX}/nodes/{carrier.node_id}/batch-wait", payload,
                                               f"ShoalNode {carrier.token}", self._timeout + 5.0, on_chunk=on_chunk)
            if status in (401, 410):
                _settle_wait(carrier, _error_for(status, raw[:500].decode(errors="replace")))
                waiters = waiters[1:]
                continue
            if status != 200:
                raise _error_for(status, raw[:500].decode(errors="replace"))
            return

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for task in list(self._watching):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _settle_wait(waiter: _Waiter, outcome: bool | Exception) -> None:
    if waiter.woken.done():
        return
    if isinstance(outcome, Exception):
        waiter.woken.set_exception(outcome)
    else:
        waiter.woken.set_result(outcome)


