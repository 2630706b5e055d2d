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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shoal.agent.client import API_PREFIX, AuthRejectedError, NodeGoneError, ProtocolError
from shoal.providers.sim_http import HttpClient, TransportError

# How long a sync waits for others to share its call; well under a task's report latency.
BATCH_WINDOW_S = 0.003
# Nodes that begin to wait within this window share one batch wait; a node waits for its
# answer to a long-poll anyway, so the window costs nothing but a little latency on idle nodes.
WAIT_WINDOW_S = 0.05
# The control plane's cap (shoal/api/agent_bodies.py MAX_BATCH_NODES).
MAX_BATCH_NODES = 1000


@dataclass
class _Entry:
    """One node's part of a batch call: what it sends, and the future of its outcome."""

    node_id: str
    token: str
    payload: dict[str, object]
    outcome: asyncio.Future[Any]


def _error_for(status: int, message: str) -> Exception:
    """The exception a single sync would have raised for this status."""
    if status == 410:
        return NodeGoneError(message)
    if status == 401:
        return AuthRejectedError(message)
    if status >= 500 or status == 429:
        return TransportError(f"server answered {status}")
    return ProtocolError(f"/sync: {status} {message}")


class _Batcher:
    """Gathers the nodes' calls of one kind for ``window_s`` (or until ``max_nodes`` have come)
    and sends each gathering as one call (`_send`), authenticated as the first node that is
    still accepted. A call that fails fails its entries; each node retries as it would alone."""

    route = ""

    def __init__(self, http: HttpClient, window_s: float, max_nodes: int = MAX_BATCH_NODES) -> None:
        self.http = http
        self.window_s = window_s
        self.max_nodes = max_nodes
        self._gathering: list[_Entry] = []
        self._flush: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.calls = 0  # batch calls sent, for tests and benchmarks

    def _gather(self, node_id: str, token: str, payload: dict[str, object]) -> _Entry:
        loop = asyncio.get_running_loop()
        entry = _Entry(node_id, token, payload, loop.create_future())
        entry.outcome.add_done_callback(_retrieve)  # its node may have stopped waiting for it
        self._gathering.append(entry)
        if len(self._gathering) >= self.max_nodes:
            self._send_gathered()
        elif self._flush is None:
            self._flush = loop.call_later(self.window_s, self._send_gathered)
        return entry

    def _send_gathered(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        entries, self._gathering = self._gathering, []
        entries = [e for e in entries if not e.outcome.done()]
        if entries:
            task = asyncio.ensure_future(self._send_or_fail(entries))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_or_fail(self, entries: list[_Entry]) -> None:
        try:
            await self._send(entries)
        except Exception as exc:
            error = exc if isinstance(exc, TransportError) else TransportError(repr(exc))
            for entry in entries:
                _settle(entry, error)

    async def _send(self, entries: list[_Entry]) -> None:
        raise NotImplementedError

    async def _post(self, entries: list[_Entry], timeout: float,
                    on_chunk: Callable[[bytes], None] | None = None) -> tuple[list[_Entry], bytes]:
        """POST the entries to ``route``, authenticated as the first of them: a carrier refused
        (gone, or its token) gets that answer and the rest go again under the next. Returns the
        entries the call carried and its answer (none: every carrier was refused)."""
        while entries:
            carrier = entries[0]
            payload = orjson.dumps({"nodes": [{"nodeId": e.node_id, "token": e.token, **e.payload}
                                              for e in entries]})
            self.calls += 1
            status, raw = await self.http.post(f"{API_PREFIX}/nodes/{carrier.node_id}/{self.route}", payload,
                                               f"ShoalNode {carrier.token}", timeout, on_chunk=on_chunk)
            if status in (401, 410):
                _settle(carrier, _error_for(status, raw[:500].decode(errors="replace")))
                entries = entries[1:]
                continue
            if status != 200:
                raise _error_for(status, raw[:500].decode(errors="replace"))
            return entries, raw
        return [], b""

    async def aclose(self) -> None:
        self._send_gathered()
        for task in list(self._sending):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class SyncBatcher(_Batcher):
    """The syncs that do not wait, as `batch-sync` calls."""

    route = "batch-sync"

    def __init__(self, http: HttpClient, window_s: float = BATCH_WINDOW_S, max_nodes: int = MAX_BATCH_NODES) -> None:
        super().__init__(http, window_s, max_nodes)

    async def sync(self, node_id: str, token: str, body: dict[str, object], timeout: float) -> dict[str, object]:
        """One node's sync (that does not wait), sent with whatever others arrive meanwhile;
        raises what `SimNode._post_once` would raise for the same answer."""
        entry = self._gather(node_id, token, {"sync": body})
        try:
            answer: dict[str, object] = await asyncio.wait_for(asyncio.shield(entry.outcome), timeout)
        except TimeoutError:
            raise TransportError("the batch call timed out") from None
        return answer

    async def _send(self, entries: list[_Entry]) -> None:
        carried, raw = await self._post(entries, 30.0)
        if not carried:
            return
        answers = orjson.loads(raw).get("nodes")
        if not isinstance(answers, list) or len(answers) != len(carried):
            raise ProtocolError("batch-sync: the answer does not match the batch")
        for entry, result in zip(carried, answers, strict=True):
            if not isinstance(result, dict) or result.get("nodeId") != entry.node_id:
                _settle(entry, ProtocolError("batch-sync: an answer for another node"))
            elif isinstance(result.get("error"), dict):
                error = result["error"]
                _settle(entry, _error_for(int(error.get("status") or 500), str(error.get("message"))))
            elif isinstance(result.get("answer"), dict):
                _settle(entry, result["answer"])
            else:
                _settle(entry, ProtocolError("batch-sync: an entry without an answer"))


class WaitBatcher(_Batcher):
    """The long-polls of many simulated nodes as `batch-wait` calls (docs/agent-protocol.md):
    one held call for up to MAX_BATCH_NODES nodes that streams the ids of those woken. A woken
    node then syncs (through the `SyncBatcher`), as after any long-poll. An idle pool of
    thousands of nodes costs a few calls per poll timeout instead of one per node."""

    route = "batch-wait"

    def __init__(self, http: HttpClient, window_s: float = WAIT_WINDOW_S, max_nodes: int = MAX_BATCH_NODES) -> None:
        super().__init__(http, window_s, max_nodes)
        self._timeout = 30.0

    async def wait(self, node_id: str, token: str, incarnation: str | None, timeout: float) -> bool:
        """True when the node is woken; False when its wait ended without (the poll timed out);
        raises what a sync of the node would raise for its error."""
        self._timeout = timeout
        entry = self._gather(node_id, token, {"incarnation": incarnation})
        try:
            woken: bool = await asyncio.wait_for(asyncio.shield(entry.outcome), timeout + self.window_s)
        except TimeoutError:
            return False
        return woken

    async def _send(self, entries: list[_Entry]) -> None:
        by_id = {e.node_id: e for e in entries}
        pending = bytearray()

        def on_line(line: bytes) -> None:
            message = orjson.loads(line)
            for node_id in message.get("woken") or ():
                if (entry := by_id.get(node_id)) is not None:
                    _settle(entry, True)
            for error in message.get("errors") or ():
                if (entry := by_id.get(error.get("nodeId"))) is not None:
                    _settle(entry, _error_for(int(error.get("status") or 500), str(error.get("message"))))

        def on_chunk(chunk: bytes) -> None:
            pending.extend(chunk)
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end])
                del pending[:end + 1]
                if line.strip():
                    on_line(line)

        await self._post(entries, self._timeout + 5.0, on_chunk=on_chunk)
        # The wait has ended: a node it did not name was not woken. (A failed call fails them.)
        for entry in entries:
            _settle(entry, False)


def _settle(entry: _Entry, outcome: Any) -> None:
    if entry.outcome.done():
        return  # its node stopped waiting (cancelled or timed out)
    if isinstance(outcome, Exception):
        entry.outcome.set_exception(outcome)
    else:
        entry.outcome.set_result(outcome)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
