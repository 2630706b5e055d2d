"""A small HTTP/1.1 client for the simulated agents: POST with a JSON body, keep-alive, nothing else.

Ten thousand simulated nodes make about a thousand calls a second to the control plane while
idle (one long-poll each per poll timeout) and several per finished task while busy. httpx spends
about 2 ms of CPU on each call here (its pool walks every connection on every request, and
httpcore tries to import sniffio on every call), which alone would take more than a core at
that rate; this client sends the same bytes (one request per connection at a time, ``Host``,
``Content-Type: application/json``, ``Content-Length``) for a small fraction of that, and parses
answers with httptools, the parser the server itself runs.

A call that is cancelled or times out closes its connection (an answer may still be on its way),
as httpx does: the server sees the same disconnects as from a real agent dropping a long-poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

# No answer of the control plane to an agent is near this; a bigger one is not the protocol.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class TransportError(Exception):
    """The call did not get an answer: connect failure, connection lost, timeout, bad bytes."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self.reusable = False
        # Streaming: a 200 answer's body goes to this as it arrives, instead of being gathered.
        self.on_chunk: Callable[[bytes], None] | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are write transports.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"unreadable answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(TransportError(f"connection lost: {exc!r}" if exc else "connection closed"))

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        if self.on_chunk is not None and self._parser.get_status_code() == 200:
            self.on_chunk(body)
            return
        self._size += len(body)
        if self._size > MAX_ANSWER_BYTES:
            self._fail(TransportError("answer too long"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = bool(self._parser.should_keep_alive())
        body, self._body, self._size = b"".join(self._body), [], 0
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    # ---- use ---------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self.reusable = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """POSTs to one server, over a shared stack of idle keep-alive connections."""

    def __init__(self, host: str, port: int, *, max_idle: int = 20_000) -> None:
        self.host, self.port = host, port
        self.max_idle = max_idle
        self._host_header = f"{host}:{port}".encode()
        self._idle: list[_Connection] = []

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise TransportError(f"cannot connect: {exc}") from exc
        return conn

    async def post(self, path: str, body: bytes, authorization: str, timeout: float,
                   on_chunk: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """(status, body) of one POST; TransportError when there is no answer within ``timeout``.
        With ``on_chunk``, a 200 answer's body is handed to it as it arrives (and not returned)."""
        head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self._host_header
                + b"\r\nAuthorization: " + authorization.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n")
        conn = await self._connection()
        conn.on_chunk = on_chunk
        try:
            async with asyncio.timeout(timeout):
                status, answer = await conn.send(head + body)
        except TimeoutError as exc:
            conn.close()
            raise TransportError(f"no answer in {timeout} s") from exc
        except BaseException:
            # Cancelled (news came while long-polling) or failed: an answer may still arrive on
            # this connection, so it is never used again.
            conn.close()
            raise
        conn.on_chunk = None
        if conn.reusable and not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return status, answer

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of ``http://host:port``; the control plane's endpoint is plain HTTP."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the simulated agents need an http:// endpoint, not {url!r}")
    return parts.hostname, parts.port or 80

