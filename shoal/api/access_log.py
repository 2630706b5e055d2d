"""One log line and one count per HTTP request, around the whole application.

The handler wrappers name the operation (`request.state.operation`: a handler's name, so label
values form a fixed set); what is not a Batch call is named by its route family here. Batch
calls are logged at INFO; agent calls (several per node per minute) at DEBUG, so a pool of
thousands of nodes does not drown the log, yet they are counted like the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shoal import telemetry
from shoal.logs import printable

log = logging.getLogger("shoal.requests")

# Route families that are not Batch operations, by path prefix.
_FAMILIES = (("/agent/", "agent"), ("/ui", "ui"), ("/metrics", "metrics"), ("/health", "health"),
             ("/ready", "ready"))


class RequestLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "request_id": None}

        async def send_and_note(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"request-id":
                        answer["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._record(scope, answer, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Any, answer: dict[str, Any], elapsed: float) -> None:
        path = scope.get("path", "")
        operation = (scope.get("state") or {}).get("operation") or _family(path)
        status = answer["status"]
        telemetry.REQUESTS.labels(operation, str(status)).inc()
        telemetry.REQUEST_SECONDS.labels(operation).observe(elapsed)
        level = logging.DEBUG if operation.startswith("agent") or operation in ("metrics", "health", "ready") \
            else logging.INFO
        if not log.isEnabledFor(level):
            return
        client_request_id = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                                  if name == b"client-request-id"), None)
        method = scope.get("method", "")
        duration_ms = round(elapsed * 1000, 1)
        fields = {"method": method, "path": printable(path), "status": status, "duration_ms": duration_ms,
                  "operation": operation, "request_id": answer["request_id"],
                  "client_request_id": printable(client_request_id, 64) if client_request_id else None}
        log.log(level, "%s %s %s %.1fms %s request-id=%s client-request-id=%s", method, fields["path"], status,
                duration_ms, operation, answer["request_id"] or "-", fields["client_request_id"] or "-",
                extra=fields)


def _family(path: str) -> str:
    for prefix, family in _FAMILIES:
        if path.startswith(prefix):
            return family
    return telemetry.UNMATCHED
