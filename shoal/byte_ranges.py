"""`Range: bytes=a-b` (and Batch's `ocp-range`) resolved against a file's size: one reading for
the node file server and for the control plane's copies of task output."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Malformed(ValueError):
    """Not a single byte range Shoal understands."""


class Unsatisfiable(ValueError):
    """A well-formed range that lies past the end of the file (416, `Content-Range: bytes */size`)."""


def resolve(header: str, size: int) -> tuple[int, int]:
    """The first and last byte (inclusive) that ``header`` asks for in a file of ``size`` bytes."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise Malformed(f"unsupported Range {header[:100]!r}")
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:  # a suffix range: the last N bytes
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or start > end:
        raise Unsatisfiable(f"bytes */{size}")
    return start, end
