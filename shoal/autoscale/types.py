"""Value types of the formula language, their operators and their rendering.

Representation (chosen for evaluation speed, not for looks):
  double        -> float (booleans are 1.0 / 0.0)
  doubleVec     -> list[float] (never mutated after creation)
  string        -> str (string literals and the bare deallocation words)
  timestamp     -> Timestamp (100 ns ticks since the Unix epoch, UTC)
  timeinterval  -> TimeInterval (100 ns ticks, like .NET TimeSpan)
doubleVecList is not a value: it only exists as a function's argument list and
is flattened by `functions.flatten`.

Ticks are integers so that `TimeInterval_100ns` is exact and window bounds
compare exactly with sample timestamps.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .errors import INVALID_VALUE, TYPE_MISMATCH, evaluation_error

TICKS_PER_SECOND = 10_000_000
_TICKS_PER_US = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# datetime's range; a timestamp outside it cannot be shown or decomposed.
_MIN_TICKS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_US * _TICKS_PER_US
_MAX_TICKS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_US * _TICKS_PER_US


def datetime_to_ticks(value: datetime) -> int:
    """UTC ticks of a datetime; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_US * _TICKS_PER_US


def timedelta_to_ticks(value: timedelta) -> int:
    return value // _ONE_US * _TICKS_PER_US


class TimeInterval:
    """A duration (Batch `timeinterval`)."""

    __slots__ = ("ticks",)

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimeInterval) and other.ticks == self.ticks

    def __hash__(self) -> int:
        return hash(("ti", self.ticks))

    def __repr__(self) -> str:
        return f"TimeInterval({format_interval(self)})"

    def to_timedelta(self) -> timedelta:
        return timedelta(microseconds=self.ticks / _TICKS_PER_US)


class Timestamp:
    """A point in time, UTC (Batch `timestamp`)."""

    __slots__ = ("ticks",)

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timestamp) and other.ticks == self.ticks

    def __hash__(self) -> int:
        return hash(("ts", self.ticks))

    def __repr__(self) -> str:
        return f"Timestamp({format_timestamp(self)})"

    def to_datetime(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.ticks // _TICKS_PER_US)


# The published constants; `TimeInterval_Year` has no published length, Shoal
# uses 365 days (semantics.md §7.4).
_SECOND = TICKS_PER_SECOND
TIME_INTERVAL_CONSTANTS: dict[str, TimeInterval] = {
    "TimeInterval_Zero": TimeInterval(0),
    "TimeInterval_100ns": TimeInterval(1),
    "TimeInterval_Microsecond": TimeInterval(10),
    "TimeInterval_Millisecond": TimeInterval(10_000),
    "TimeInterval_Second": TimeInterval(_SECOND),
    "TimeInterval_Minute": TimeInterval(60 * _SECOND),
    "TimeInterval_Hour": TimeInterval(3600 * _SECOND),
    "TimeInterval_Day": TimeInterval(86400 * _SECOND),
    "TimeInterval_Week": TimeInterval(7 * 86400 * _SECOND),
    "TimeInterval_Year": TimeInterval(365 * 86400 * _SECOND),
}

Value = float | list | str | Timestamp | TimeInterval

_TYPE_NAMES: dict[type, str] = {
    float: "double",
    list: "doubleVec",
    str: "string",
    Timestamp: "timestamp",
    TimeInterval: "timeinterval",
}


def type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def checked_timestamp(ticks: int, position: int | None) -> Timestamp:
    if not _MIN_TICKS <= ticks <= _MAX_TICKS:
        raise evaluation_error("timestamp out of range", position, INVALID_VALUE)
    return Timestamp(ticks)


# ---------------------------------------------------------------- arithmetic
# Python raises on x/0; the language is IEEE doubles (as Batch's .NET
# evaluator is), where x/0 is +-Infinity and 0/0 is NaN.  Published formulas
# rely on min(cap, work / $CurrentDedicatedNodes) surviving an empty pool.
def divide(left: float, right: float) -> float:
    if right:
        return left / right
    if left == 0 or left != left:
        return math.nan
    return math.copysign(math.inf, left) * math.copysign(1.0, right)


def _vector_scalar(op: Callable[[float, float], float]) -> Callable[[list, float], list]:
    return lambda vec, x: [op(v, x) for v in vec]


def _vector_vector(op: Callable[[float, float], float]) -> Callable[[list, list], list]:
    def apply(left: list, right: list) -> list:
        if len(left) != len(right):
            # Unequal lengths are undocumented; Shoal refuses them rather than
            # guessing a broadcast rule.
            raise ValueError(f"doubleVec lengths differ ({len(left)} and {len(right)})")
        return [op(a, b) for a, b in zip(left, right, strict=True)]

    return apply


def _interval_times(ti: TimeInterval, x: float) -> TimeInterval:
    if not math.isfinite(x):
        raise ValueError("timeinterval multiplied by a non-finite double")
    return TimeInterval(round(ti.ticks * x))


def _interval_div(ti: TimeInterval, x: float) -> TimeInterval:
    if x == 0 or not math.isfinite(x):
        raise ValueError("timeinterval divided by zero or a non-finite double")
    return TimeInterval(round(ti.ticks / x))


_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": divide}

# (operator, left type, right type) -> implementation.  This IS the table of
# semantics.md §1.4; any combination not listed is an evaluation error.
BINARY_OPERATORS: dict[tuple[str, type, type], Callable] = {}
for _sym, _fn in _ARITH.items():
    BINARY_OPERATORS[(_sym, float, float)] = _fn
    BINARY_OPERATORS[(_sym, list, float)] = _vector_scalar(_fn)
    BINARY_OPERATORS[(_sym, list, list)] = _vector_vector(_fn)
BINARY_OPERATORS.update(
    {
        ("*", float, TimeInterval): lambda x, ti: _interval_times(ti, x),
        ("*", TimeInterval, float): _interval_times,
        ("/", TimeInterval, float): _interval_div,
        ("+", TimeInterval, TimeInterval): lambda a, b: TimeInterval(a.ticks + b.ticks),
        ("-", TimeInterval, TimeInterval): lambda a, b: TimeInterval(a.ticks - b.ticks),
        ("+", TimeInterval, Timestamp): lambda a, b: Timestamp(a.ticks + b.ticks),
        ("+", Timestamp, TimeInterval): lambda a, b: Timestamp(a.ticks + b.ticks),
        ("-", Timestamp, Timestamp): lambda a, b: TimeInterval(a.ticks - b.ticks),
    }
)

_COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
    "!=": operator.ne,
}
for _sym, _fn in _COMPARE.items():
    BINARY_OPERATORS[(_sym, float, float)] = lambda a, b, _f=_fn: 1.0 if _f(a, b) else 0.0
    BINARY_OPERATORS[(_sym, str, str)] = lambda a, b, _f=_fn: 1.0 if _f(a, b) else 0.0
    for _cls in (Timestamp, TimeInterval):
        BINARY_OPERATORS[(_sym, _cls, _cls)] = lambda a, b, _f=_fn: 1.0 if _f(a.ticks, b.ticks) else 0.0

UNARY_OPERATORS: dict[tuple[str, type], Callable] = {
    ("-", float): operator.neg,
    ("!", float): lambda x: 0.0 if x else 1.0,
    ("-", TimeInterval): lambda ti: TimeInterval(-ti.ticks),
}


def apply_binary(symbol: str, left: Value, right: Value, position: int) -> Value:
    """Apply a binary arithmetic/comparison operator, or fail as Batch would."""
    implementation = BINARY_OPERATORS.get((symbol, type(left), type(right)))
    if implementation is None:
        raise evaluation_error(
            f"operator '{symbol}' is not defined for {type_name(left)} and {type_name(right)}",
            position,
            TYPE_MISMATCH,
        )
    try:
        result = implementation(left, right)
    except (ValueError, OverflowError) as exc:
        raise evaluation_error(str(exc), position, INVALID_VALUE) from exc
    if type(result) is Timestamp:
        return checked_timestamp(result.ticks, position)
    return result


def apply_unary(symbol: str, operand: Value, position: int) -> Value:
    implementation = UNARY_OPERATORS.get((symbol, type(operand)))
    if implementation is None:
        raise evaluation_error(
            f"unary '{symbol}' is not defined for {type_name(operand)}", position, TYPE_MISMATCH
        )
    return implementation(operand)


# ----------------------------------------------------------------- rendering
def format_double(value: float) -> str:
    """Shortest form, as Batch prints results: 10, 0, 2.5."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))  # also turns -0.0 into "0"
    return repr(value)


def format_timestamp(value: Timestamp) -> str:
    """ISO-8601 UTC with milliseconds: 2016-10-13T19:18:47.805Z."""
    moment = value.to_datetime()
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_interval(value: TimeInterval) -> str:
    """.NET TimeSpan constant format, [-][d.]hh:mm:ss[.fffffff] (Batch runs on .NET)."""
    ticks = abs(value.ticks)
    sign = "-" if value.ticks < 0 else ""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    text = f"{sign}{days}." if days else sign
    text += f"{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += f".{fraction:07d}"
    return text


def format_value(value: Value) -> str:
    kind = type(value)
    if kind is float:
        return format_double(value)  # type: ignore[arg-type]
    if kind is list:
        return "[" + ",".join(format_double(v) for v in value) + "]"  # type: ignore[union-attr, arg-type]
    if kind is Timestamp:
        return format_timestamp(value)  # type: ignore[arg-type]
    if kind is TimeInterval:
        return format_interval(value)  # type: ignore[arg-type]
    return str(value)
