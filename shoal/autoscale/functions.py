"""The built-in functions (semantics.md §1.5).

Every function receives its already-evaluated arguments, the call's position
(for error messages) and the evaluation context (for `time()` and `rand()`).
Aggregates take a doubleVecList: any mix of doubles and doubleVecs, flattened
first, so `avg(v, 7)` is `avg(1, 2, 3, 7)` when v = [1, 2, 3].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .errors import ARGUMENTS, EMPTY_VECTOR, INVALID_VALUE, TYPE_MISMATCH, evaluation_error
from .types import Timestamp, Value, checked_timestamp, datetime_to_ticks, type_name


class StopEvaluation(Exception):
    """Raised by `stop()`; the evaluator keeps what was assigned before it."""


class Context(Protocol):
    now_ticks: int

    def random(self) -> float: ...


Function = Callable[[list, int, Context], Value]


def flatten(name: str, args: list, position: int) -> list[float]:
    """A doubleVecList argument list as one doubleVec."""
    if len(args) == 1 and type(args[0]) is list:
        return args[0]
    flat: list[float] = []
    for arg in args:
        kind = type(arg)
        if kind is float:
            flat.append(arg)
        elif kind is list:
            flat.extend(arg)
        else:
            raise evaluation_error(
                f"{name}() takes doubles and doubleVecs, not a {type_name(arg)}", position, TYPE_MISMATCH
            )
    return flat


def _nonempty(name: str, args: list, position: int) -> list[float]:
    values = flatten(name, args, position)
    if not values:
        # Undocumented in Batch; Shoal fails the evaluation (semantics.md §7.2).
        raise evaluation_error(f"{name}() of an empty vector", position, EMPTY_VECTOR)
    return values


def _aggregate(name: str, compute: Callable[[list[float]], float]) -> Function:
    def function(args: list, position: int, context: Context) -> float:
        return compute(_nonempty(name, args, position))

    return function


def _std(values: list[float]) -> float:
    # Sample standard deviation (n - 1); a single sample has no spread.
    count = len(values)
    if count < 2:
        return 0.0
    mean = math.fsum(values) / count
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1))


# ----------------------------------------------------- element-wise functions
def _log(base_log: Callable[[float], float]) -> Callable[[float], float]:
    # IEEE results where Python raises: log(0) = -Infinity, log(<0) = NaN.
    def safe(x: float) -> float:
        if x > 0:
            return base_log(x)
        if x == 0:
            return -math.inf
        return math.nan

    return safe


def _finite(rounder: Callable[[float], float]) -> Callable[[float], float]:
    # math.floor(inf) raises; a non-finite value rounds to itself.
    return lambda x: float(rounder(x)) if math.isfinite(x) else x


def _round_half_away(x: float) -> float:
    magnitude = abs(x)
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:
        whole += 1
    return math.copysign(whole, x)


def _elementwise(name: str, scalar: Callable[[float], float]) -> Function:
    """A double for one double argument, otherwise a doubleVec (like lg(vec(x)))."""

    def function(args: list, position: int, context: Context) -> Value:
        if len(args) == 1 and type(args[0]) is float:
            return scalar(args[0])
        if not args:
            raise evaluation_error(f"{name}() takes at least one argument", position, ARGUMENTS)
        return [scalar(v) for v in flatten(name, args, position)]

    return function


# ------------------------------------------------------------ other functions
def _percentile(args: list, position: int, context: Context) -> float:
    if len(args) != 2:
        raise evaluation_error("percentile() takes a doubleVec and a percentage", position, ARGUMENTS)
    vector, percent = args
    if type(vector) is not list or type(percent) is not float:
        raise evaluation_error(
            f"percentile() takes (doubleVec, double), not ({type_name(vector)}, {type_name(percent)})",
            position,
            TYPE_MISMATCH,
        )
    if not vector:
        raise evaluation_error("percentile() of an empty vector", position, EMPTY_VECTOR)
    if not 0 <= percent <= 100:
        raise evaluation_error("percentile must be between 0 and 100", position, INVALID_VALUE)
    # Nearest rank: the smallest element with at least p% of the data at or below it.
    ordered = sorted(vector)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _val(args: list, position: int, context: Context) -> float:
    if len(args) != 2:
        raise evaluation_error("val() takes a doubleVec and an index", position, ARGUMENTS)
    vector, index = args
    if type(vector) is not list or type(index) is not float:
        raise evaluation_error(
            f"val() takes (doubleVec, double), not ({type_name(vector)}, {type_name(index)})",
            position,
            TYPE_MISMATCH,
        )
    if not 0 <= index < len(vector):
        raise evaluation_error(
            f"val() index {index:g} is outside a doubleVec of {len(vector)} elements", position, INVALID_VALUE
        )
    return vector[int(index)]


def _len(args: list, position: int, context: Context) -> float:
    # Counting is meaningful on an empty vector, unlike the aggregates.
    return float(len(flatten("len", args, position)))


def _vec(args: list, position: int, context: Context) -> list:
    return list(flatten("vec", args, position))


def _rand(args: list, position: int, context: Context) -> float:
    if args:
        raise evaluation_error("rand() takes no arguments", position, ARGUMENTS)
    return context.random()


def _stop(args: list, position: int, context: Context) -> Value:
    if args:
        raise evaluation_error("stop() takes no arguments", position, ARGUMENTS)
    raise StopEvaluation


def _time(args: list, position: int, context: Context) -> Timestamp:
    if not args:
        return Timestamp(context.now_ticks)
    if len(args) != 1 or type(args[0]) is not str:
        raise evaluation_error("time() takes one string argument", position, TYPE_MISMATCH)
    text = args[0].strip()
    if not text:
        return Timestamp(context.now_ticks)
    ticks = parse_time(text)
    if ticks is None:
        raise evaluation_error(f"time() cannot read {args[0]!r}", position, INVALID_VALUE)
    return checked_timestamp(ticks, position)


# W3C-DTF (a profile of ISO 8601): YYYY[-MM[-DD[Thh:mm[:ss[.f+]]TZD]]].
_W3C = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?)?)?)?"
)
_RFC1123 = re.compile(r"(?:[A-Za-z]{3}, *)?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) *(GMT|UTC|Z)")
_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}


def parse_time(text: str) -> int | None:
    """UTC ticks of a W3C-DTF or RFC 1123 date, or None if it is neither."""
    try:
        match = _W3C.fullmatch(text)
        if match:
            year, month, day, hour, minute, second, fraction, zone = match.groups()
            moment = datetime(
                int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0),
                tzinfo=UTC,
            )
            if zone and zone not in "Zz":
                sign = 1 if zone[0] == "+" else -1
                digits = zone[1:].replace(":", "")
                moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            # Fractions finer than the 100 ns tick are dropped.
            extra = int((fraction or "").ljust(7, "0")[:7]) if fraction else 0
            return datetime_to_ticks(moment) + extra
        match = _RFC1123.fullmatch(text)
        if match:
            day, month_name, year, hour, minute, second, _ = match.groups()
            month = _MONTHS.get(month_name.lower())
            if month is None:
                return None
            moment = datetime(int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=UTC)
            return datetime_to_ticks(moment)
    except (ValueError, OverflowError):
        return None
    return None


FUNCTIONS: dict[str, Function] = {
    "avg": _aggregate("avg", lambda v: math.fsum(v) / len(v)),
    "max": _aggregate("max", max),
    "min": _aggregate("min", min),
    "norm": _aggregate("norm", lambda v: math.sqrt(math.fsum(x * x for x in v))),
    "range": _aggregate("range", lambda v: max(v) - min(v)),
    "std": _aggregate("std", _std),
    "sum": _aggregate("sum", math.fsum),
    "len": _len,
    "ceil": _elementwise("ceil", _finite(math.ceil)),
    "floor": _elementwise("floor", _finite(math.floor)),
    "round": _elementwise("round", _finite(_round_half_away)),
    "lg": _elementwise("lg", _log(math.log2)),
    "ln": _elementwise("ln", _log(math.log)),
    "log": _elementwise("log", _log(math.log10)),
    "percentile": _percentile,
    "val": _val,
    "vec": _vec,
    "rand": _rand,
    "stop": _stop,
    "time": _time,
}

# Members of a timestamp (§1.3); weekday is ISO, 1 = Monday .. 7 = Sunday (§7.4).
TIMESTAMP_MEMBERS: dict[str, Callable[[datetime], int]] = {
    "year": lambda d: d.year,
    "month": lambda d: d.month,
    "day": lambda d: d.day,
    "weekday": lambda d: d.isoweekday(),
    "hour": lambda d: d.hour,
    "minute": lambda d: d.minute,
    "second": lambda d: d.second,
}

