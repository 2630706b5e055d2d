"""Time as Shoal stores and prints it: always UTC, always timezone-aware in memory."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

_etag_counter = itertools.count()


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def http_date(value: datetime | None) -> str:
    value = as_utc(value) or now()
    return value.strftime("%a, %d %b %Y %H:%M:%S GMT")


def new_etag() -> str:
    # Batch ETags look like 0x8DC1234ABCDEF01; monotonic within a process and unique across
    # restarts because the nanosecond clock moves on.
    return "0x8D" + format(time.time_ns() + next(_etag_counter), "X")[-13:]


_DURATION_UNITS = {"D": 86400.0, "H": 3600.0, "M": 60.0, "S": 1.0}


def parse_duration(text: str) -> timedelta:
    """ISO 8601 durations as Batch sends them (PnDTnHnMnS, and PnW)."""
    if not isinstance(text, str) or not text.startswith("P"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    body = text[1:]
    total = 0.0
    in_time = False
    number = ""
    for char in body:
        if char == "T":
            in_time = True
            continue
        if char.isdigit() or char == ".":
            number += char
            continue
        if not number:
            raise ValueError(f"not an ISO 8601 duration: {text!r}")
        if char == "W" and not in_time:
            total += float(number) * 7 * 86400
        elif char == "Y" and not in_time:
            total += float(number) * 365 * 86400
        elif char == "M" and not in_time:
            total += float(number) * 30 * 86400
        elif char in _DURATION_UNITS and (in_time or char == "D"):
            total += float(number) * _DURATION_UNITS[char]
        else:
            raise ValueError(f"not an ISO 8601 duration: {text!r}")
        number = ""
    if number:
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P"
    if days:
        out += f"{int(days)}D"
    out += "T"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    out += f"{secs:g}S" if secs or out.endswith("T") else ""
    return out


# The "unlimited" duration Batch reports (TimeSpan.MaxValue).
UNLIMITED = "P10675199DT2H48M5.4775807S"
