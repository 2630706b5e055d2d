"""uvicorn's httptools protocol with a bound on the request head (request line + headers), and a
shutdown that does not wait on idle TLS clients.

httptools accumulates a header of any size in memory before the application sees it: one
unauthenticated client could make the server hold 64 MiB per connection. Counting the bytes
that arrive while the head is still being parsed, and answering 431 once they pass the bound,
keeps every unauthenticated request to a few KiB of server memory.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""The most the request line and headers of one request may take. Azure front ends refuse far
smaller heads; the SDK's heads are well under 4 KiB."""

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json;odata=minimalmetadata\r\n"
    b"connection: close\r\n"
)
def _error_body(endpoint: str) -> bytes:
    # The head was never parsed, so the error carries no request id; its shape is Batch's.
    return orjson.dumps({
        "odata.metadata": f"{endpoint}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": "RequestHeaderTooLarge",
        "message": {"lang": "en-US", "value": "The request line and headers are larger than the server accepts."},
        "values": [{"key": "MaxLimit", "value": str(MAX_REQUEST_HEAD_BYTES)}],
    })


class BoundedHeadProtocol(HttpToolsProtocol):
    """Answers 431 and closes the connection when a request head passes MAX_REQUEST_HEAD_BYTES."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._began_in_chunk = False

    def shutdown(self) -> None:
        # At shutdown an idle TLS connection is aborted, not closed: a TLS close waits for the
        # client's close_notify, which a client idle in keep-alive never sends, so uvicorn would
        # wait out its grace period for it and then log an error for a normal stop.
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("ssl_object") is not None:
            self.transport.abort()
            return
        super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._began_in_chunk = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        # Counted after parsing: a chunk may carry a head and the start of its body, and only
        # head bytes count. A head that began inside this chunk is not counted for it, so the
        # bound holds within one transport read (at most 256 KiB) and never refuses a body.
        self._began_in_chunk = False
        super().data_received(data)
        if self._in_head and not self._began_in_chunk:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._refuse()

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        host, port = self.server or ("127.0.0.1", 0)
        body = _error_body(f"http://{host}:{port}")
        self.transport.write(_TOO_LARGE + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()
