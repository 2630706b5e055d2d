"""Time as Shoal stores and prints it: always UTC, always timezone-aware in memory."""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

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
    try:
        return timedelta(seconds=total)
    except OverflowError as exc:
        # Callers treat every unparseable duration alike; an overflow is one more way to be wrong.
        raise ValueError(f"duration out of range: {text!r}") from exc


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
    # Whole days are written without a time part, as .NET (and so Batch) writes them: P1D.
    return out.removesuffix("T0S") if days else out


# The "unlimited" duration Batch reports (TimeSpan.MaxValue).
UNLIMITED = "P10675199DT2H48M5.4775807S"


# IMF-fixdate (RFC 9110 §5.6.7), what every HTTP client sends: "Sun, 06 Nov 1994 08:49:37 GMT".
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) (?:GMT|UTC)\Z"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Longer than any real header date; past it the text is not a date, whatever it says.
_MAX_DATE_TEXT = 64


def parse_http_date(text: str | None) -> datetime | None:
    """An HTTP date header as an aware UTC datetime, or None when it is not a usable date.

    IMF-fixdate is parsed exactly; other RFC 2822 forms are tried as a courtesy, and anything
    that parses to a moment outside datetime's range (huge years or offsets) is None, never an
    exception, because these headers arrive from anyone."""
    if not text or len(text) > _MAX_DATE_TEXT:
        return None
    match = _IMF_FIXDATE.match(text)
    try:
        if match:
            day, month, year, hour, minute, second = match.groups()
            return datetime(int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute),
                            int(second), tzinfo=UTC)
        parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


# The ISO 8601 forms agents and clients send: date, "T", time with optional fraction, Z or offset.
_ISO_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})\Z"
)


def parse_iso(text: object) -> datetime | None:
    """An ISO 8601 instant with an explicit zone as an aware UTC datetime, or None if it is not one."""
    if not isinstance(text, str) or not _ISO_INSTANT.match(text):
        return None
    body = text[:-1] + "+00:00" if text.endswith("Z") else text
    head, dot, rest = body.partition(".")
    if dot:
        # fromisoformat takes at most six fraction digits before Python 3.11's wider parser.
        digits = rest[:-6]
        body = f"{head}.{(digits + '000000')[:6]}{rest[-6:]}"
    try:
        return datetime.fromisoformat(body).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def seconds_between(later: datetime, earlier: datetime) -> float:
    """`later - earlier` in seconds, without overflow for moments near datetime's limits."""
    try:
        return (later - earlier).total_seconds()
    except OverflowError:
        return float("inf") if later > earlier else float("-inf")
