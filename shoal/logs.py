"""The server's log: one stream (stderr), a level, and a text or JSON line per record.

Nothing secret is ever passed to a logger (keys are printed once on the terminal by `shoal up`,
never logged); what a client sent is escaped before it reaches a text line, so a path with a
newline or a NUL cannot forge a line of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# The fields a record may carry beyond the message (`log.info(..., extra={...})`).
FIELDS = ("method", "path", "status", "duration_ms", "operation", "request_id", "client_request_id")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Route every logger (uvicorn's too) to stderr at ``level`` in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def printable(text: str, limit: int = 512) -> str:
    """``text`` as one safe line: control characters escaped, cut at ``limit`` characters."""
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return escaped if len(escaped) <= limit else escaped[:limit] + "…"
