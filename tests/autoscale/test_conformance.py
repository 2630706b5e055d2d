"""Conformance table for the autoscale formula language.

Each case is: formula text + sample inputs + evaluation time -> expected
variable values (as Batch would print them), targets, or error code/reason.
The table follows semantics.md §1 and the Shoal decisions of §7 (restated in
shoal/autoscale/README.md); a case id names the rule it checks.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from shoal.autoscale import (
    EVALUATION_ERROR,
    INSUFFICIENT_SAMPLE_DATA,
    METRICS,
    SYNTAX_ERROR,
    TOO_LONG,
    EvaluationInput,
    FormulaError,
    SampleHistory,
    evaluate,
    format_value,
    parse_formula,
)

# Thursday 13 Oct 2016, 19:18:47.805 UTC: the moment of the published results example.
NOW = datetime(2016, 10, 13, 19, 18, 47, 805000, tzinfo=UTC)
PERIOD = 30


def series(values: list[float], newest_age: float = 0.0, now: datetime = NOW) -> list[tuple[datetime, float]]:
    """Samples 30 s apart, oldest first, the newest `newest_age` seconds before now."""
    count = len(values)
    return [(now - timedelta(seconds=newest_age + PERIOD * (count - 1 - i)), v) for i, v in enumerate(values)]


# An hour of samples for every metric; each metric has its own constant value
# so a case can tell which history was read.
METRIC_VALUE = {name: float(i + 1) for i, name in enumerate(sorted(METRICS))}
FULL_HOUR = {name: series([value] * 120) for name, value in METRIC_VALUE.items()}
RAMP = series([float(i) for i in range(1, 121)])  # 1..120, newest = 120 at NOW
# 40 samples with the last minute of history missing: a 10-minute window shows 18 of 20 (§1.7
# worked numbers). The gap is a real one; the visibility lag alone never makes one.
WORKED = series([5.0] * 40, newest_age=60)


@dataclass
class Case:
    id: str
    formula: str
    expect: dict[str, object] = field(default_factory=dict)  # name -> rendered text or float (approx)
    dedicated: int | None = None
    low: int | None = None
    option: str | None = None
    error: str | None = None  # Batch-style code
    reason: str | None = None
    samples: dict | None = None
    current: dict | None = None
    lag: int = 0
    now: datetime = NOW
    results: str | None = None


def C(id: str, formula: str, **kw: object) -> Case:  # noqa: N802 - reads as a table row
    return Case(id, formula, **kw)  # type: ignore[arg-type]


def err(id: str, formula: str, reason: str | None = None, code: str = EVALUATION_ERROR, **kw: object) -> Case:
    return Case(id, formula, error=code, reason=reason, **kw)  # type: ignore[arg-type]


def syn(id: str, formula: str, reason: str | None = "Syntax") -> Case:
    return Case(id, formula, error=SYNTAX_ERROR, reason=reason)


V3 = "v = vec(1, 2, 3); "
TS = 't = time("2016-10-13T19:18:47.805Z"); '
TYPE, UNKNOWN, UNKNOWN_FN, ARGS, EMPTY, INVALID = (
    "TypeMismatch", "UnknownName", "UnknownFunction", "InvalidArguments", "EmptyVector", "InvalidValue")

CASES: list[Case] = [
    # ---------------------------------------------------------------- types
    C("double-integer", "x = 5", expect={"x": "5"}),
    C("double-fraction", "x = 2.5", expect={"x": "2.5"}),
    C("double-exponent", "x = 1e3; y = 2.5E-1", expect={"x": "1000", "y": "0.25"}),
    C("double-boolean-is-1-or-0", "x = 3 > 2; y = 3 < 2", expect={"x": "1", "y": "0"}),
    C("string-literal", 's = "hello world"', expect={"s": "hello world"}),
    C("bare-deallocation-word-is-a-string", "w = taskcompletion", expect={"w": "taskcompletion"}),
    C("doubleVec-from-GetSample", "v = $ActiveTasks.GetSample(3)", samples={"$ActiveTasks": RAMP},
      expect={"v": "[118,119,120]"}),
    C("timestamp-rendered-with-ms", TS, expect={"t": "2016-10-13T19:18:47.805Z"}),
    C("timeinterval-zero", "d = TimeInterval_Zero", expect={"d": "00:00:00"}),
    C("timeinterval-100ns", "d = TimeInterval_100ns", expect={"d": "00:00:00.0000001"}),
    C("timeinterval-microsecond", "d = TimeInterval_Microsecond", expect={"d": "00:00:00.0000010"}),
    C("timeinterval-millisecond", "d = TimeInterval_Millisecond", expect={"d": "00:00:00.0010000"}),
    C("timeinterval-second", "d = TimeInterval_Second", expect={"d": "00:00:01"}),
    C("timeinterval-minute", "d = TimeInterval_Minute", expect={"d": "00:01:00"}),
    C("timeinterval-hour", "d = TimeInterval_Hour", expect={"d": "01:00:00"}),
    C("timeinterval-day", "d = TimeInterval_Day", expect={"d": "1.00:00:00"}),
    C("timeinterval-week", "d = TimeInterval_Week", expect={"d": "7.00:00:00"}),
    C("timeinterval-year-is-365-days", "d = TimeInterval_Year", expect={"d": "365.00:00:00"}),
    C("timeinterval-negative", "d = -TimeInterval_Hour", expect={"d": "-01:00:00"}),
    C("timestamp-members", TS + "y=t.year; mo=t.month; d=t.day; h=t.hour; mi=t.minute; s=t.second",
      expect={"y": "2016", "mo": "10", "d": "13", "h": "19", "mi": "18", "s": "47"}),
    C("weekday-thursday-is-4", "w = time().weekday", expect={"w": "4"}),
    C("weekday-monday-is-1", 'w = time("2016-10-10T00:00:00Z").weekday', expect={"w": "1"}),
    C("weekday-sunday-is-7", 'w = time("2016-10-16T12:00:00Z").weekday', expect={"w": "7"}),
    err("member-unknown", TS + "x = t.millisecond", UNKNOWN),
    err("member-on-double", "x = (5).year", TYPE),
    err("member-on-timeinterval", "x = TimeInterval_Hour.hour", TYPE),

    # ------------------------------------------------ operators: valid pairs
    C("double+double", "x = 2 + 3", expect={"x": "5"}),
    C("double-double", "x = 2 - 3", expect={"x": "-1"}),
    C("double*double", "x = 2 * 3", expect={"x": "6"}),
    C("double/double", "x = 3 / 2", expect={"x": "1.5"}),
    C("double/zero-is-infinity", "x = 1 / 0; y = -1 / 0", expect={"x": "Infinity", "y": "-Infinity"}),
    C("zero/zero-is-nan", "x = 0 / 0", expect={"x": "NaN"}),
    C("min-cap-survives-division-by-zero", "x = min(25, 10 / 0)", expect={"x": "25"}),
    C("double*timeinterval", "d = 2 * TimeInterval_Minute", expect={"d": "00:02:00"}),
    C("doubleVec+double", V3 + "w = v + 1", expect={"w": "[2,3,4]"}),
    C("doubleVec-double", V3 + "w = v - 1", expect={"w": "[0,1,2]"}),
    C("doubleVec*double", V3 + "w = v * 2", expect={"w": "[2,4,6]"}),
    C("doubleVec/double", V3 + "w = v / 2", expect={"w": "[0.5,1,1.5]"}),
    C("doubleVec+doubleVec", V3 + "w = v + v", expect={"w": "[2,4,6]"}),
    C("doubleVec-doubleVec", V3 + "w = v - v", expect={"w": "[0,0,0]"}),
    C("doubleVec*doubleVec", V3 + "w = v * v", expect={"w": "[1,4,9]"}),
    C("doubleVec/doubleVec", V3 + "w = v / v", expect={"w": "[1,1,1]"}),
    C("timeinterval*double", "d = TimeInterval_Minute * 1.5", expect={"d": "00:01:30"}),
    C("timeinterval/double", "d = TimeInterval_Hour / 4", expect={"d": "00:15:00"}),
    C("timeinterval+timeinterval", "d = TimeInterval_Hour + TimeInterval_Minute", expect={"d": "01:01:00"}),
    C("timeinterval-timeinterval", "d = TimeInterval_Hour - TimeInterval_Minute", expect={"d": "00:59:00"}),
    C("timeinterval+timestamp", TS + "u = TimeInterval_Day + t", expect={"u": "2016-10-14T19:18:47.805Z"}),
    C("timestamp+timeinterval", TS + "u = t + TimeInterval_Hour", expect={"u": "2016-10-13T20:18:47.805Z"}),
    C("timestamp+negative-interval-is-utc-offset", "h = (time() + (-6 * TimeInterval_Hour)).hour", expect={"h": "13"}),
    C("timestamp-timestamp", TS + "d = time() - t; e = t - (t + TimeInterval_Minute)",
      expect={"d": "00:00:00", "e": "-00:01:00"}),
    C("unary-minus-double", "x = -(2 + 3)", expect={"x": "-5"}),
    C("unary-not-double", "a = !0; b = !5; c = !!7", expect={"a": "1", "b": "0", "c": "1"}),
    C("unary-minus-timeinterval", "d = -TimeInterval_Second", expect={"d": "-00:00:01"}),
    C("compare-double", "a = 1 < 2; b = 2 <= 2; c = 2 == 2; d = 3 >= 4; e = 3 > 4; f = 3 != 4",
      expect={"a": "1", "b": "1", "c": "1", "d": "0", "e": "0", "f": "1"}),
    C("compare-string", 'a = "abc" == "abc"; b = "abc" < "abd"; c = "a" != "b"; d = "b" >= "a"; e = "a" > "b"; f = "a" <= "a"',
      expect={"a": "1", "b": "1", "c": "1", "d": "1", "e": "0", "f": "1"}),
    C("compare-timestamp", TS + "a = t < time(); b = t == time(); c = t + TimeInterval_Second > time()",
      expect={"a": "0", "b": "1", "c": "1"}),
    C("compare-timeinterval", "a = TimeInterval_Minute > TimeInterval_Second; b = TimeInterval_Hour <= 60 * TimeInterval_Minute",
      expect={"a": "1", "b": "1"}),
    C("logical-and-or", "a = 1 && 2; b = 1 && 0; c = 0 || 3; d = 0 || 0", expect={"a": "1", "b": "0", "c": "1", "d": "0"}),
    C("deallocation-option-compare", "a = $NodeDeallocationOption == requeue", expect={"a": "1"}),
    # precedence (C order) and associativity
    C("precedence-mul-over-add", "x = 1 + 2 * 3", expect={"x": "7"}),
    C("precedence-parentheses", "x = (1 + 2) * 3", expect={"x": "9"}),
    C("left-assoc-minus", "x = 1 - 2 - 3", expect={"x": "-4"}),
    C("left-assoc-divide", "x = 8 / 4 / 2", expect={"x": "1"}),
    C("unary-binds-tighter", "x = !0 + 1; y = -2 * 3", expect={"x": "2", "y": "-6"}),
    C("relational-over-equality", "x = 1 < 2 == 1", expect={"x": "1"}),
    C("and-over-or", "x = 1 || 0 && 0", expect={"x": "1"}),
    C("ternary-right-assoc", "x = 0 ? 1 : 0 ? 2 : 3", expect={"x": "3"}),
    C("ternary-lowest", "x = 1 ? 2 : 3 + 10", expect={"x": "2"}),
    C("ternary-nested-in-branch", "x = 1 ? (0 ? 5 : 6) : 7", expect={"x": "6"}),

    # ---------------------------------------------- operators: invalid pairs
    err("double+timeinterval", "x = 1 + TimeInterval_Second", TYPE),
    err("double/timeinterval", "x = 1 / TimeInterval_Second", TYPE),
    err("timeinterval+double", "x = TimeInterval_Second + 1", TYPE),
    err("timeinterval*timeinterval", "x = TimeInterval_Second * TimeInterval_Second", TYPE),
    err("timestamp+timestamp", TS + "x = t + t", TYPE),
    err("timestamp-timeinterval-not-listed", TS + "x = t - TimeInterval_Hour", TYPE),
    err("timeinterval-timestamp", TS + "x = TimeInterval_Hour - t", TYPE),
    err("timestamp*double", TS + "x = t * 2", TYPE),
    err("double+doubleVec-not-listed", V3 + "x = 1 + v", TYPE),
    err("doubleVec*timeinterval", V3 + "x = v * TimeInterval_Second", TYPE),
    err("string+string", 'x = "a" + "b"', TYPE),
    err("string*double", 'x = "a" * 2', TYPE),
    err("string<double", 'x = "a" < 1', TYPE),
    err("double==timestamp", TS + "x = 1 == t", TYPE),
    err("doubleVec<doubleVec", V3 + "x = v < v", TYPE),
    err("doubleVec==double", V3 + "x = v == 1", TYPE),
    err("unary-minus-doubleVec", V3 + "x = -v", TYPE),
    err("unary-minus-timestamp", TS + "x = -t", TYPE),
    err("unary-minus-string", 'x = -"a"', TYPE),
    err("unary-not-timeinterval", "x = !TimeInterval_Second", TYPE),
    err("unary-not-string", 'x = !"a"', TYPE),
    err("and-with-timestamp", TS + "x = t && 1", TYPE),
    err("or-with-doubleVec", V3 + "x = 0 || v", TYPE),
    err("ternary-condition-string", 'x = "a" ? 1 : 2', TYPE),
    err("ternary-condition-doubleVec", V3 + "x = v ? 1 : 2", TYPE),
    err("ternary-condition-timeinterval", "x = TimeInterval_Second ? 1 : 2", TYPE),
    err("doubleVec-unequal-lengths", V3 + "x = v + vec(1, 2)", INVALID),
    err("timeinterval/zero", "x = TimeInterval_Hour / 0", INVALID),
    err("timestamp-out-of-range", "x = time() + 10000 * TimeInterval_Year", INVALID),

    # ------------------------------------------------------------ functions
    C("avg", "x = avg(1, 2, 3, 6)", expect={"x": "3"}),
    C("avg-flattens-doubleVecList", V3 + "x = avg(v, 7); y = avg(1, 2, 3, 7)", expect={"x": "3.25", "y": "3.25"}),
    C("ceil-scalar-and-vector", "a = ceil(1.2); b = ceil(-1.2); c = ceil(vec(0.5, 1.5))",
      expect={"a": "2", "b": "-1", "c": "[1,2]"}),
    C("floor-scalar-and-vector", "a = floor(1.8); b = floor(-1.2); c = floor(vec(0.5, 1.5))",
      expect={"a": "1", "b": "-2", "c": "[0,1]"}),
    C("round-halves-away-from-zero", "a = round(2.5); b = round(-2.5); c = round(0.49999999999999994); d = round(vec(1.5, 2.4))",
      expect={"a": "3", "b": "-3", "c": "0", "d": "[2,2]"}),
    C("len", V3 + "a = len(v); b = len(v, 4, v); c = len($CPUPercent.GetSample(0))", expect={"a": "3", "b": "7", "c": "0"}),
    C("lg", "a = lg(8); b = lg(vec(8)); c = lg(2, 4)", expect={"a": "3", "b": "[3]", "c": "[1,2]"}),
    C("ln", "a = ln(1); b = ln(vec(1, 1))", expect={"a": "0", "b": "[0,0]"}),
    C("ln-of-e", "a = ln(2.718281828459045)", expect={"a": 1.0}),
    C("log", "a = log(100); b = log(vec(10, 1000))", expect={"a": "2", "b": "[1,3]"}),
    C("log-of-zero-and-negative", "a = log(0); b = ln(-1)", expect={"a": "-Infinity", "b": "NaN"}),
    C("max", V3 + "a = max(v); b = max(v, 10); c = max(-1, -2)", expect={"a": "3", "b": "10", "c": "-1"}),
    C("min", V3 + "a = min(v); b = min(25, v); c = min(25, 30)", expect={"a": "1", "b": "1", "c": "25"}),
    C("norm", "a = norm(3, 4); b = norm(vec(3, 4))", expect={"a": "5", "b": "5"}),
    C("percentile", "v = vec(15, 20, 35, 40, 50); a = percentile(v, 40); b = percentile(v, 100); c = percentile(v, 0); d = percentile(v, 50)",
      expect={"a": "20", "b": "50", "c": "15", "d": "35"}),
    C("range", V3 + "a = range(v, 10)", expect={"a": "9"}),
    C("std-is-sample-deviation", "a = std(2, 4, 4, 4, 5, 5, 7, 9); b = std(5)", expect={"a": 2.138089935299395, "b": "0"}),
    C("sum", V3 + "a = sum(v, 4)", expect={"a": "10"}),
    C("val-zero-based", V3 + "a = val(v, 0); b = val(v, 2)", expect={"a": "1", "b": "3"}),
    C("vec-forces-vector", "a = vec(5); b = vec(1, vec(2, 3))", expect={"a": "[5]", "b": "[1,2,3]"}),
    C("time-now", "t = time(); u = time(\"\")", expect={"t": "2016-10-13T19:18:47.805Z", "u": "2016-10-13T19:18:47.805Z"}),
    C("time-w3c-fraction", 't = time("2024-10-30T00:00:00.880011Z")', expect={"t": "2024-10-30T00:00:00.880Z"}),
    C("time-w3c-offset", 't = time("2024-10-30T02:00:00+02:00")', expect={"t": "2024-10-30T00:00:00.000Z"}),
    C("time-w3c-date-only", 't = time("2024-10-30")', expect={"t": "2024-10-30T00:00:00.000Z"}),
    C("time-w3c-seven-digit-fraction", 't = time("2024-10-30T00:00:00.1234567Z")', expect={"t": "2024-10-30T00:00:00.123Z"}),
    C("time-rfc1123", 't = time("Thu, 13 Oct 2016 19:00:00 GMT")', expect={"t": "2016-10-13T19:00:00.000Z"}),
    C("rand-in-unit-interval", "r = rand(); ok = r >= 0 && r <= 1", expect={"ok": "1"}),
    C("stop-keeps-earlier-assignments", "$TargetDedicatedNodes = 4; stop(); $TargetDedicatedNodes = 9; x = 1",
      dedicated=4, expect={"$TargetDedicatedNodes": "4"}),
    C("stop-inside-ternary", "$TargetDedicatedNodes = 2; x = 1 ? stop() : 3; $TargetDedicatedNodes = 5", dedicated=2),
    C("stop-unchosen-branch", "x = 0 ? stop() : 3; $TargetDedicatedNodes = x", dedicated=3),
    err("avg-no-arguments", "x = avg()", EMPTY),
    err("avg-empty-vector", "x = avg($CPUPercent.GetSample(0))", EMPTY),
    err("max-empty-vector", "x = max($CPUPercent.GetSample(0))", EMPTY),
    err("min-empty-vector", "x = min($CPUPercent.GetSample(0))", EMPTY),
    err("sum-empty-vector", "x = sum($CPUPercent.GetSample(0))", EMPTY),
    err("std-empty-vector", "x = std($CPUPercent.GetSample(0))", EMPTY),
    err("norm-empty-vector", "x = norm($CPUPercent.GetSample(0))", EMPTY),
    err("range-empty-vector", "x = range($CPUPercent.GetSample(0))", EMPTY),
    err("percentile-empty-vector", "x = percentile($CPUPercent.GetSample(0), 50)", EMPTY),
    err("avg-of-string", 'x = avg("a")', TYPE),
    err("sum-of-timeinterval", "x = sum(1, TimeInterval_Second)", TYPE),
    err("lg-of-string", 'x = lg("a")', TYPE),
    err("lg-no-arguments", "x = lg()", ARGS),
    err("val-index-out-of-range", V3 + "x = val(v, 3)", INVALID),
    err("val-negative-index", V3 + "x = val(v, -1)", INVALID),
    err("val-of-double", "x = val(5, 0)", TYPE),
    err("val-wrong-arity", V3 + "x = val(v)", ARGS),
    err("percentile-above-100", V3 + "x = percentile(v, 150)", INVALID),
    err("percentile-of-double", "x = percentile(5, 50)", TYPE),
    err("percentile-wrong-arity", V3 + "x = percentile(v)", ARGS),
    err("time-garbage", 'x = time("yesterday")', INVALID),
    err("time-bad-date", 'x = time("2016-02-30T00:00:00Z")', INVALID),
    err("time-of-double", "x = time(5)", TYPE),
    err("rand-with-argument", "x = rand(1)", ARGS),
    err("stop-with-argument", "stop(1)", ARGS),
    err("unknown-function", "x = foo(1)", UNKNOWN_FN),
    err("function-names-are-case-sensitive", "x = Avg(1)", UNKNOWN_FN),
    err("unknown-function-statement", "foo()", UNKNOWN_FN),
    C("unknown-function-in-unchosen-branch", "x = 1 ? 5 : foo(1)", expect={"x": "5"}),

    # -------------------------------------------------------- sample methods
    C("GetSample-count-1", "v = $PendingTasks.GetSample(1)", samples={"$PendingTasks": RAMP}, expect={"v": "[120]"}),
    C("GetSample-count-oldest-first", "v = $PendingTasks.GetSample(3)", samples={"$PendingTasks": RAMP}, expect={"v": "[118,119,120]"}),
    C("GetSample-count-zero", "v = $PendingTasks.GetSample(0)", samples={"$PendingTasks": RAMP}, expect={"v": "[]"}),
    C("GetSample-count-however-old", "n = len($PendingTasks.GetSample(120))",
      samples={"$PendingTasks": series([float(i) for i in range(120)], newest_age=3600)}, expect={"n": "120"}),
    err("GetSample-count-more-than-held", "n = len($PendingTasks.GetSample(500))", "InsufficientSamples",
        code=INSUFFICIENT_SAMPLE_DATA, samples={"$PendingTasks": RAMP}),
    C("GetSample-count-fraction-truncates", "v = $PendingTasks.GetSample(1.9)", samples={"$PendingTasks": RAMP}, expect={"v": "[120]"}),
    C("GetSample-count-respects-lag", "v = $PendingTasks.GetSample(1)", samples={"$PendingTasks": RAMP}, lag=60, expect={"v": "[118]"}),
    err("GetSample-negative-count", "v = $PendingTasks.GetSample(-1)", INVALID, samples={"$PendingTasks": RAMP}),
    C("GetSample-interval", "n = len($PendingTasks.GetSample(TimeInterval_Minute * 10))", samples={"$PendingTasks": RAMP},
      expect={"n": "20"}),
    C("GetSample-interval-values", "v = $PendingTasks.GetSample(TimeInterval_Minute)", samples={"$PendingTasks": RAMP},
      expect={"v": "[119,120]"}),
    C("GetSample-window", "n = len($PendingTasks.GetSample(1 * TimeInterval_Minute, 6 * TimeInterval_Minute))",
      samples={"$PendingTasks": RAMP}, expect={"n": "10"}),
    C("GetSample-window-args-any-order", "n = len($PendingTasks.GetSample(6 * TimeInterval_Minute, 1 * TimeInterval_Minute))",
      samples={"$PendingTasks": RAMP}, expect={"n": "10"}),
    C("GetSample-window-percent-ok", "n = len($PendingTasks.GetSample(TimeInterval_Minute, 6 * TimeInterval_Minute, 100))",
      samples={"$PendingTasks": RAMP}, expect={"n": "10"}),
    C("GetSample-timestamp-start", "n = len($PendingTasks.GetSample(time() + (-5 * TimeInterval_Minute)))",
      samples={"$PendingTasks": RAMP}, expect={"n": "10"}),
    C("GetSample-timestamp-window", "s = time() + (-6 * TimeInterval_Minute); e = time() + (-1 * TimeInterval_Minute); "
      "n = len($PendingTasks.GetSample(s, e))", samples={"$PendingTasks": RAMP}, expect={"n": "10"}),
    C("worked-example-80-percent-passes", "n = len($PendingTasks.GetSample(TimeInterval_Minute * 10, 80))",
      samples={"$PendingTasks": WORKED}, expect={"n": "18"}),
    err("worked-example-95-percent-fails", "n = len($PendingTasks.GetSample(TimeInterval_Minute * 10, 95))",
        "InsufficientSamples", code=INSUFFICIENT_SAMPLE_DATA, samples={"$PendingTasks": WORKED}),
    err("GetSample-window-percent-fails", "v = $PendingTasks.GetSample(0 * TimeInterval_Minute, TimeInterval_Minute * 6, 100)",
        "InsufficientSamples", code=INSUFFICIENT_SAMPLE_DATA, samples={"$PendingTasks": WORKED}),
    err("GetSample-percent-on-empty-history", "v = $CPUPercent.GetSample(TimeInterval_Minute * 10, 10)",
        "InsufficientSamples", code=INSUFFICIENT_SAMPLE_DATA, samples={}),
    C("GetSample-percent-zero-on-empty-history", "n = len($CPUPercent.GetSample(TimeInterval_Minute * 10, 0))",
      samples={}, expect={"n": "0"}),
    err("GetSample-percent-out-of-range", "v = $PendingTasks.GetSample(TimeInterval_Minute, 101)", INVALID,
        samples={"$PendingTasks": RAMP}),
    err("GetSample-string-argument", 'v = $PendingTasks.GetSample("x")', TYPE, samples={"$PendingTasks": RAMP}),
    err("GetSample-no-arguments", "v = $PendingTasks.GetSample()", ARGS),
    err("GetSample-too-many-arguments", "v = $PendingTasks.GetSample(TimeInterval_Minute, TimeInterval_Hour, 10, 1)", ARGS),
    err("GetSample-count-with-percent", "v = $PendingTasks.GetSample(10, 50)", TYPE),
    C("GetSamplePercent-interval", "p = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10)",
      samples={"$PendingTasks": WORKED}, expect={"p": "90"}),
    C("GetSamplePercent-full-history-despite-lag", "p = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10)",
      samples={"$PendingTasks": RAMP}, lag=60, expect={"p": "100"}),
    C("GetSamplePercent-window", "p = $PendingTasks.GetSamplePercent(TimeInterval_Minute, TimeInterval_Minute * 6)",
      samples={"$PendingTasks": WORKED}, lag=60, expect={"p": "100"}),
    C("GetSamplePercent-capped-at-100", "p = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10)",
      samples={"$PendingTasks": series([1.0] * 60, 0) + series([1.0] * 60, 15)}, expect={"p": "100"}),
    C("GetSamplePercent-is-a-double", "a = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10) < 95",
      samples={"$PendingTasks": WORKED}, expect={"a": "1"}),
    err("GetSamplePercent-no-arguments", "p = $PendingTasks.GetSamplePercent()", ARGS),
    C("GetSamplePeriod", "d = $CPUPercent.GetSamplePeriod()", expect={"d": "00:00:30"}),
    err("GetSamplePeriod-with-argument", "d = $CPUPercent.GetSamplePeriod(1)", ARGS),
    C("Count", "n = $PendingTasks.Count()", samples={"$PendingTasks": RAMP}, expect={"n": "120"}),
    C("Count-visible-only", "n = $PendingTasks.Count()", samples={"$PendingTasks": RAMP}, lag=60, expect={"n": "118"}),
    C("Count-empty", "n = $CPUPercent.Count()", samples={}, expect={"n": "0"}),
    C("HistoryBeginTime", "t = $PendingTasks.HistoryBeginTime()", samples={"$PendingTasks": RAMP},
      expect={"t": "2016-10-13T18:19:17.805Z"}),
    err("HistoryBeginTime-empty", "t = $CPUPercent.HistoryBeginTime()", INVALID, samples={}),
    err("method-on-user-variable", "x = 1; y = x.GetSample(1)", TYPE),
    err("method-on-target", "y = $TargetDedicatedNodes.GetSample(1)", TYPE),
    err("unknown-method", "y = $CPUPercent.GetSamples(1)", UNKNOWN_FN),
    err("method-names-case-sensitive", "y = $CPUPercent.getsample(1)", UNKNOWN_FN),
    C("samples-in-the-future-are-invisible", "n = $PendingTasks.Count()",
      samples={"$PendingTasks": series([1.0] * 10, newest_age=-60)}, expect={"n": "8"}),
    C("unsorted-samples-are-ordered", "v = $PendingTasks.GetSample(2)",
      samples={"$PendingTasks": list(reversed(series([1.0, 2.0, 3.0])))}, expect={"v": "[2,3]"}),

    # ------------------------------------------- service-defined variables
    C("target-dedicated", "$TargetDedicatedNodes = 3", dedicated=3, low=0),
    C("target-dedicated-alias", "$TargetDedicated = 3", dedicated=3),
    C("target-low-priority", "$TargetLowPriorityNodes = 4", low=4, dedicated=0),
    C("target-low-priority-alias", "$TargetLowPriority = 4", low=4),
    C("full-name-wins-over-alias", "$TargetDedicatedNodes = 3; $TargetDedicated = 7", dedicated=3),
    C("full-name-wins-over-alias-reversed", "$TargetDedicated = 7; $TargetDedicatedNodes = 3", dedicated=3),
    C("target-read-before-assign-is-current", "x = $TargetDedicatedNodes; y = $TargetLowPriority",
      current={"$TargetDedicatedNodes": 6, "$TargetLowPriorityNodes": 2}, expect={"x": "6", "y": "2"}, dedicated=6, low=2),
    C("target-read-after-assign", "$TargetDedicatedNodes = 2; x = $TargetDedicatedNodes + 1; $TargetDedicated = 8; y = $TargetDedicatedNodes",
      expect={"x": "3", "y": "8"}, dedicated=2),
    C("target-unassigned-keeps-current", "x = 1", current={"$TargetDedicatedNodes": 5, "$TargetLowPriorityNodes": 1},
      dedicated=5, low=1),
    C("target-fraction-truncates", "$TargetDedicatedNodes = 2.7; $TargetLowPriorityNodes = (5 + 3) / 3", dedicated=2, low=2),
    C("target-negative-clamps", "$TargetDedicatedNodes = -3; $TargetLowPriorityNodes = -0.5", dedicated=0, low=0),
    err("target-infinite", "$TargetDedicatedNodes = 1 / 0", INVALID, current={"$TargetDedicatedNodes": 4}, dedicated=4),
    err("target-nan", "$TargetLowPriorityNodes = 0 / 0", INVALID),
    err("target-string", '$TargetDedicatedNodes = "5"', TYPE),
    err("target-doubleVec", "$TargetDedicatedNodes = vec(1, 2)", TYPE),
    err("target-timeinterval", "$TargetLowPriorityNodes = TimeInterval_Second", TYPE),
    C("option-requeue", "$NodeDeallocationOption = requeue", option="requeue"),
    C("option-terminate", "$NodeDeallocationOption = terminate", option="terminate"),
    C("option-taskcompletion", "$NodeDeallocationOption = taskcompletion", option="taskcompletion"),
    C("option-retaineddata", "$NodeDeallocationOption = retaineddata", option="retaineddata"),
    C("option-as-string", '$NodeDeallocationOption = "Terminate"', option="terminate"),
    C("option-unassigned-is-none", "x = 1", option=None),
    C("option-read-default", "o = $NodeDeallocationOption", expect={"o": "requeue"}),
    C("option-read-current", "o = $NodeDeallocationOption", current={"$NodeDeallocationOption": "terminate"},
      expect={"o": "terminate"}),
    C("option-conditional", "$NodeDeallocationOption = $CurrentDedicatedNodes > 5 ? taskcompletion : requeue",
      current={"$CurrentDedicatedNodes": 9}, option="taskcompletion"),
    err("option-invalid-word", '$NodeDeallocationOption = "drain"', INVALID),
    err("option-double", "$NodeDeallocationOption = 1", TYPE),
    C("node-count-as-scalar", "x = $CurrentDedicatedNodes * 1.1", current={"$CurrentDedicatedNodes": 10}, expect={"x": 11.0}),
    C("metric-scalar-falls-back-to-latest-sample", "x = $PendingTasks", samples={"$PendingTasks": RAMP}, expect={"x": "120"}),
    err("metric-scalar-without-value", "x = $PendingTasks", INVALID, samples={}),
    C("legacy-current-dedicated", "x = $CurrentDedicated; v = $CurrentDedicated.GetSample(1)",
      current={"$CurrentDedicatedNodes": 3}, samples={"$CurrentDedicatedNodes": series([2.0])}, expect={"x": "3", "v": "[2]"}),
    C("preempted-node-count", "x = $PreemptedNodeCount", current={"$PreemptedNodeCount": 2}, expect={"x": "2"}),
    C("usable-node-count", "x = $UsableNodeCount.GetSample(1)", samples={"$UsableNodeCount": series([4.0])}, expect={"x": "[4]"}),
    C("task-slots-per-node", "x = $TaskSlotsPerNode", current={"$TaskSlotsPerNode": 4}, expect={"x": "4"}),

    # ----------------------------------- variables, statements and comments
    C("reassignment-overwrites", "x = 1; x = x + 1", expect={"x": "2"}),
    C("dollar-and-plain-names-differ", "$x = 1; x = 2", expect={"$x": "1", "x": "2"}),
    err("read-before-assign", "y = x + 1", UNKNOWN),
    err("unknown-dollar-variable", "y = $NoSuchThing", UNKNOWN),
    err("user-names-case-sensitive", "x = 1; y = X", UNKNOWN),
    C("service-names-exact-case", "$targetdedicatednodes = 5", dedicated=0, expect={"$targetdedicatednodes": "5"}),
    C("unknown-name-in-unchosen-branch", "x = 0 ? undefined : 2", expect={"x": "2"}),
    C("unchosen-branch-not-sampled", "x = 1 ? 2 : avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 100))",
      samples={}, expect={"x": "2"}),
    C("and-short-circuits", "x = 0 && foo(); y = 1 || undefined", expect={"x": "0", "y": "1"}),
    C("line-comments", "// leading comment\n$TargetDedicatedNodes = 1; // trailing ; x = 2\n// end", dedicated=1,
      expect={}),
    C("comment-at-end-without-newline", "$TargetDedicatedNodes = 2; // done", dedicated=2),
    C("comment-between-tokens", "x = 1 + // one\n 2", expect={"x": "3"}),
    C("final-semicolon-optional", "x = 1; y = 2", expect={"y": "2"}),
    C("empty-statements", ";; x = 1;;; y = 2;;", expect={"x": "1", "y": "2"}),
    C("missing-semicolon-before-assignment", "x = 1\ny = x + 1;\n$TargetDedicatedNodes = y", expect={"y": "2"}, dedicated=2),
    C("whitespace-crlf-tabs", "x\t=\r\n1;\r\n", expect={"x": "1"}),
    C("multi-line-expression", "x =\n  (1 +\n   2)\n  * 3;", expect={"x": "9"}),

    # ---------------------------------------------------- malformed formulas
    syn("empty-formula", ""),
    syn("blank-formula", "  \n\t "),
    syn("only-comment", "// nothing here"),
    syn("only-semicolons", ";;;"),
    # Batch parses a lone name and fails the evaluation when it is undefined
    # (recorded: azure-sdk-for-node/batchservice-tests.json, evaluateautoscale "something_useless").
    err("name-only", "x", UNKNOWN),
    err("undefined-name-statement", "something_useless", UNKNOWN, results="$TargetDedicatedNodes=0;"
        "$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"),
    C("defined-name-statement", "x = 2; x", expect={"x": "2"}),
    syn("missing-value", "x ="),
    syn("missing-target", "= 5"),
    syn("dangling-operator", "x = 5 +"),
    syn("unclosed-paren", "x = (1"),
    syn("extra-close-paren", "x = 1)"),
    syn("two-values", "x = 1 2"),
    syn("equality-as-statement", "x == 1"),
    syn("expression-statement", "1 + 2"),
    syn("double-operator", "x = 1 +* 2"),
    syn("single-quotes", "x = 'a'"),
    syn("unterminated-string", 'x = "abc'),
    syn("string-across-lines", 'x = "ab\ncd"'),
    syn("number-into-name", "x = 5x"),
    syn("number-trailing-dot", "x = 1."),
    syn("number-leading-dot", "x = .5"),
    syn("unknown-character-hash", "x = #"),
    syn("lone-dollar", "x = $"),
    syn("double-dot", "x = a..b"),
    syn("member-with-dollar", "x = time().$y"),
    syn("trailing-comma", "x = max(1,)"),
    syn("leading-comma", "x = max(,1)"),
    syn("ternary-missing-colon", "x = 1 ? 2"),
    syn("ternary-missing-else", "x = 1 ? 2 :"),
    syn("number-as-target", "5 = x"),
    syn("unary-plus", "x = +1"),
    syn("modulo", "x = 5 % 2"),
    syn("exponent", "x = 2 ^ 3"),
    syn("brackets", "x = [1, 2]"),
    syn("block-comment", "/* hi */ x = 1"),
    syn("non-ascii-operator", "x = 2 \u00d7 3"),
    syn("nul-character", "x = 1\x00"),
    syn("call-then-operator", "stop() + 1"),
    syn("assign-in-expression", "x = (y = 1)"),
    syn("single-ampersand", "x = 1 & 1"),
    syn("single-pipe", "x = 1 | 1"),
    syn("assignment-chain", "x = y = 1"),
    syn("keyword-as-target", "requeue = 1", "ReadOnlyVariable"),
    syn("timeinterval-constant-as-target", "TimeInterval_Second = 2", "ReadOnlyVariable"),
]

# Every read-only service variable is refused as an assignment target, and
# every metric can be read with every sample method.
for _name in sorted(METRICS | {"$CurrentDedicated"}):
    CASES.append(syn(f"read-only-{_name}", f"{_name} = 1", "ReadOnlyVariable"))
for _name in sorted(METRICS):
    _value = format_value(METRIC_VALUE[_name])
    CASES.append(C(
        f"metric-{_name}",
        f"a = {_name}.GetSample(1); b = avg({_name}.GetSample(TimeInterval_Minute * 5, 100)); "
        f"c = {_name}.GetSamplePercent(TimeInterval_Hour); d = {_name}.Count(); e = {_name}.HistoryBeginTime(); "
        f"f = {_name}.GetSamplePeriod(); g = {_name}",
        samples=FULL_HOUR,
        expect={"a": f"[{_value}]", "b": _value, "c": "100", "d": "120", "e": "2016-10-13T18:19:17.805Z",
                "f": "00:00:30", "g": _value},
    ))

# --------------------------------------------- published examples (§1.1-1.8)
EXAMPLES: list[Case] = [
    C("example-working-hours",
      "$curTime = time();\n"
      "$workHours = $curTime.hour >= 8 && $curTime.hour < 18;\n"
      "$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;\n"
      "$isWorkingWeekdayHour = $workHours && $isWeekday;\n"
      "$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;\n"
      "$NodeDeallocationOption = taskcompletion;",
      dedicated=10,
      results="$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;$curTime=2016-10-13T19:18:47.805Z;"
              "$isWeekday=1;$isWorkingWeekdayHour=0;$workHours=0"),
    C("example-working-hours-in-office",
      "$curTime = time();\n"
      "$workHours = $curTime.hour >= 8 && $curTime.hour < 18;\n"
      "$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;\n"
      "$TargetDedicatedNodes = ($workHours && $isWeekday) ? 20:10;",
      now=datetime(2016, 10, 13, 9, 0, tzinfo=UTC), dedicated=20),
    # The PowerShell example: a pool with no nodes has no CPU history, so it picks 5.
    C("example-cpu-percent-no-history",
      "totalNodes = (($CPUPercent.GetSamplePercent(TimeInterval_Minute * 0, TimeInterval_Minute * 10) < 70) ? 5 :\n"
      "  (min($CPUPercent.GetSample(TimeInterval_Minute * 0, TimeInterval_Minute * 10)) > 80 ?\n"
      "   ($CurrentDedicated * 1.1) : $CurrentDedicated));\n"
      "$TargetDedicated = totalNodes;",
      samples={}, dedicated=5, results="$TargetDedicated=5;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;totalNodes=5"),
    # Pending-tasks formula: a fresh pool holds one zero sample (§1.7), 1 of 6 expected -> starts one VM.
    C("example-pending-tasks-fresh-pool",
      "startingNumberOfVMs = 1;\nmaxNumberofVMs = 25;\n"
      "pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);\n"
      "pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs : avg($PendingTasks.GetSample(180 * TimeInterval_Second));\n"
      "$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);\n"
      "$NodeDeallocationOption = taskcompletion;",
      samples={"$PendingTasks": series([0.0])}, dedicated=1, option="taskcompletion"),
    C("example-pending-tasks-busy-pool",
      "startingNumberOfVMs = 1;\nmaxNumberofVMs = 25;\n"
      "pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);\n"
      "pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs : avg($PendingTasks.GetSample(180 * TimeInterval_Second));\n"
      "$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);\n"
      "$NodeDeallocationOption = taskcompletion;",
      samples={"$PendingTasks": series([40.0] * 10)}, dedicated=25),
    C("example-preempted-nodes",
      "maxNumberofVMs = 25;\n"
      "$TargetDedicatedNodes = min(maxNumberofVMs, $PreemptedNodeCount.GetSample(180 * TimeInterval_Second));\n"
      "$TargetLowPriorityNodes = min(maxNumberofVMs , maxNumberofVMs - $TargetDedicatedNodes);\n"
      "$NodeDeallocationOption = taskcompletion;",
      samples={"$PreemptedNodeCount": series([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])}, dedicated=3, low=22,
      results="$TargetDedicatedNodes=3;$TargetLowPriorityNodes=22;$NodeDeallocationOption=taskcompletion;maxNumberofVMs=25"),
    C("example-cpu-grow-and-shrink",
      "$totalDedicatedNodes =\n"
      "    (min($CPUPercent.GetSample(TimeInterval_Minute * 10)) > 0.7) ?\n"
      "    ($CurrentDedicatedNodes * 1.1) : $CurrentDedicatedNodes;\n"
      "$totalDedicatedNodes =\n"
      "    (avg($CPUPercent.GetSample(TimeInterval_Minute * 60)) < 0.2) ?\n"
      "    ($CurrentDedicatedNodes * 0.9) : $totalDedicatedNodes;\n"
      "$TargetDedicatedNodes = min(400, $totalDedicatedNodes);",
      samples={"$CPUPercent": series([50.0] * 120)}, current={"$CurrentDedicatedNodes": 10}, dedicated=11),
    C("example-task-slots-and-clamp",
      "// Size the pool to the queued work, four tasks per node, within bounds.\n"
      "$samples = $ActiveTasks.GetSamplePercent(TimeInterval_Minute * 15);\n"
      "$tasks = $samples < 70 ? max(0, $ActiveTasks.GetSample(1)) : max($ActiveTasks.GetSample(1), avg($ActiveTasks.GetSample(TimeInterval_Minute * 15)));\n"
      "$targetVMs = $tasks > 0 ? ($tasks + $TaskSlotsPerNode - 1) / $TaskSlotsPerNode : max(0, $TargetDedicatedNodes / 2);\n"
      "cappedPoolSize = 20;\n"
      "$TargetDedicatedNodes = max(0, min($targetVMs, cappedPoolSize));\n"
      "$NodeDeallocationOption = taskcompletion;",
      samples={"$ActiveTasks": series([9.0] * 30)}, current={"$TaskSlotsPerNode": 4, "$TargetDedicatedNodes": 6},
      dedicated=3),
    C("example-task-slots-idle-halves",
      "$tasks = max(0, $ActiveTasks.GetSample(1));\n"
      "$targetVMs = $tasks > 0 ? $tasks : max(0, $TargetDedicatedNodes / 2);\n"
      "$TargetDedicatedNodes = max(0, min($targetVMs, 20))",
      samples={"$ActiveTasks": series([0.0] * 30)}, current={"$TargetDedicatedNodes": 7}, dedicated=3),
    C("example-lifespan-scale-to-zero",
      "lifespan = time() - time(\"2016-10-13T19:00:00Z\");\n"
      "span = TimeInterval_Minute * 5;\n"
      "startup = TimeInterval_Minute * 10;\n"
      "ratio = 50;\n"
      "$TargetDedicatedNodes = (lifespan > startup ? (max($RunningTasks.GetSample(span, ratio), $ActiveTasks.GetSample(span, ratio)) == 0 ? 0 : $TargetDedicatedNodes) : 4);",
      samples={"$RunningTasks": series([0.0] * 20), "$ActiveTasks": series([0.0] * 20)},
      current={"$TargetDedicatedNodes": 4}, dedicated=0),
    C("example-missing-semicolon-2015",
      "$averageActiveTaskCount = avg($ActiveTasks.GetSample(TimeInterval_Minute * 15))\n"
      "$TargetDedicated = $averageActiveTaskCount > 5 ? 3 : 1;",
      samples={"$ActiveTasks": series([8.0] * 30)}, dedicated=3),
    C("example-last-sample-val",
      "$lastSampledActive = val($ActiveTasks.GetSample(1), 0);\n"
      "$TargetDedicatedNodes = $lastSampledActive > 0 ? $lastSampledActive : 0",
      samples={"$ActiveTasks": series([1.0, 2.0])}, dedicated=2),
]


def _run(case: Case):
    formula = parse_formula(case.formula)
    data = EvaluationInput(
        now=case.now,
        samples=FULL_HOUR if case.samples is None else case.samples,
        current=case.current or {},
        visibility_lag=timedelta(seconds=case.lag),
    )
    return evaluate(formula, data)


def _check(case: Case) -> None:
    if case.error in (SYNTAX_ERROR, TOO_LONG):
        with pytest.raises(FormulaError) as caught:
            parse_formula(case.formula)
        assert caught.value.code == case.error, caught.value
        if case.reason:
            assert caught.value.reason == case.reason, caught.value
        return
    result = _run(case)
    if case.error:
        assert result.error is not None, f"expected {case.error}, got {result.variables}"
        assert result.error.code == case.error, result.error
        if case.reason:
            assert result.error.reason == case.reason, result.error
    else:
        assert result.error is None, result.error
    for name, expected in case.expect.items():
        assert name in result.variables, f"{name} not assigned: {result.variables}"
        value = result.variables[name]
        if isinstance(expected, float):
            assert value == pytest.approx(expected), (name, value)
        else:
            assert format_value(value) == expected, (name, value)
    if case.dedicated is not None:
        assert result.target_dedicated == case.dedicated
    if case.low is not None:
        assert result.target_low_priority == case.low
    if case.option is not None or case.id.startswith("option-unassigned"):
        assert result.node_deallocation_option == case.option
    if case.results is not None:
        assert result.results_string() == case.results


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(case: Case) -> None:
    _check(case)


@pytest.mark.parametrize("case", EXAMPLES, ids=[c.id for c in EXAMPLES])
def test_published_example(case: Case) -> None:
    _check(case)


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES + EXAMPLES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------ limits
def test_8192_characters_accepted() -> None:
    body = "$TargetDedicatedNodes = 1;\n"
    text = body + "//" + "x" * (8192 - len(body) - 2)
    assert len(text) == 8192
    assert evaluate(parse_formula(text), EvaluationInput(now=NOW)).target_dedicated == 1


def test_8193_characters_refused() -> None:
    text = "$TargetDedicatedNodes = 1;\n//" + "x" * 8192
    with pytest.raises(FormulaError) as caught:
        parse_formula(text[:8193])
    assert caught.value.code == TOO_LONG
    assert caught.value.position is None


def test_100_statements_accepted() -> None:
    text = "".join(f"x{i} = {i};" for i in range(99)) + "$TargetDedicatedNodes = x98"
    result = evaluate(parse_formula(text), EvaluationInput(now=NOW))
    assert result.target_dedicated == 98
    assert len(result.variables) == 100


def test_101_statements_refused() -> None:
    text = "".join(f"x{i} = {i};" for i in range(101))
    with pytest.raises(FormulaError) as caught:
        parse_formula(text)
    assert caught.value.code == SYNTAX_ERROR and caught.value.reason == "Limit"


def test_empty_statements_do_not_count() -> None:
    parse_formula(";" * 300 + "x = 1")


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "(" * 5000 + "1" + ")" * 5000,
        "x = " + "-" * 8000 + "1",
        "x = " + "1+" * 4000 + "1",
        "x = " + "max(" * 2000 + "1" + ")" * 2000,
        "x = " + "1 ? " * 2000 + "1" + " : 1" * 2000,
        "x = " + "!" * 8000 + "1",
    ],
    ids=["parens", "unary-minus", "long-chain", "nested-calls", "nested-ternary", "unary-not"],
)
def test_pathological_nesting_is_a_formula_error(text: str) -> None:
    text = text[:8192]
    with pytest.raises(FormulaError) as caught:
        parse_formula(text)
    assert caught.value.code in (SYNTAX_ERROR, TOO_LONG)


def test_deepest_allowed_formula_evaluates_deep_in_a_call_stack() -> None:
    text = ("a = " + "1+" * 99 + "1; b = " + "max(1+" * 31 + "1" + ")" * 31 + "; c = " + "-" * 31 + "1; d = "
            + "1?" * 31 + "1" + ":1" * 31)

    def nested(depth: int):
        return nested(depth - 1) if depth else evaluate(parse_formula(text), EvaluationInput(now=NOW))

    result = nested(250)  # callers (web server, scheduler loop) have frames of their own
    assert result.error is None
    assert [format_value(result.variables[k]) for k in "abcd"] == ["100", "32", "-1", "1"]


def test_random_token_soup_never_crashes() -> None:
    tokens = ["x", "$y", "=", "==", "1", "2.5", '"s"', "(", ")", ",", ";", "?", ":", "+", "-", "*", "/", "!", "&&",
              "||", "<", ">=", ".", "GetSample", "$CPUPercent", "avg", "time", "TimeInterval_Minute", "requeue",
              "$TargetDedicatedNodes", "\n", "//c\n", "stop", "val", "weekday"]
    rng = random.Random(1234)
    outcomes = {"parsed": 0, "syntax": 0}
    for _ in range(3000):
        prefix = "x = " if rng.random() < 0.5 else ""
        text = prefix + " ".join(rng.choice(tokens) for _ in range(rng.randint(1, rng.choice((3, 25)))))
        try:
            formula = parse_formula(text)
        except FormulaError as exc:
            assert exc.code in (SYNTAX_ERROR, TOO_LONG)
            outcomes["syntax"] += 1
            continue
        outcomes["parsed"] += 1
        result = evaluate(formula, EvaluationInput(now=NOW, samples=FULL_HOUR))
        assert result.error is None or result.error.code in (EVALUATION_ERROR, INSUFFICIENT_SAMPLE_DATA)
        result.results_string()
    assert outcomes["parsed"] > 0 and outcomes["syntax"] > 0


def test_random_valid_expressions_never_crash() -> None:
    atoms = ["1", "0", "2.5", "v", "t", "d", '"s"', "$CPUPercent.GetSample(3)", "$CPUPercent.GetSample(d)",
             "time()", "TimeInterval_Hour", "avg(v)", "rand()", "len(v)", "1/0", "0/0"]
    binary = ["+", "-", "*", "/", "<", "==", "!=", "&&", "||"]
    rng = random.Random(99)

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        kind = rng.random()
        if kind < 0.6:
            return f"({expr(depth - 1)} {rng.choice(binary)} {expr(depth - 1)})"
        if kind < 0.8:
            return f"({expr(depth - 1)} ? {expr(depth - 1)} : {expr(depth - 1)})"
        return f"{rng.choice(['-', '!'])}{expr(depth - 1)}"

    prefix = "v = vec(1, 2, 3); t = time(); d = TimeInterval_Minute; "
    for _ in range(2000):
        text = prefix + "x = " + expr(4) + "; $TargetDedicatedNodes = 1"
        result = evaluate(parse_formula(text), EvaluationInput(now=NOW, samples=FULL_HOUR))
        assert result.error is None or result.error.code == EVALUATION_ERROR
        if result.error is None:
            assert result.target_dedicated == 1


# ----------------------------------------------------- errors and inputs
def test_syntax_error_carries_position_line_and_column() -> None:
    with pytest.raises(FormulaError) as caught:
        parse_formula("x = 1;\ny = (2 +;")
    error = caught.value
    assert error.code == SYNTAX_ERROR
    assert error.position == 15 and (error.line, error.column) == (2, 9)
    assert error.values == [{"key": "Message", "value": error.detail_with_location}]
    assert error.detail_with_location.startswith("Line 2, Col 9: ")
    assert error.message


def test_evaluation_error_is_captured_and_targets_unchanged() -> None:
    formula = parse_formula("$TargetDedicatedNodes = 5;\n$TargetLowPriorityNodes = 2;\nx = foo(1);")
    current = {"$TargetDedicatedNodes": 3.0, "$TargetLowPriorityNodes": 1.0}
    result = evaluate(formula, EvaluationInput(now=NOW, current=current))
    assert result.error is not None and result.error.code == EVALUATION_ERROR
    assert (result.target_dedicated, result.target_low_priority) == (3, 1)
    assert (result.error.line, result.error.column) == (3, 5)
    assert list(result.variables) == ["$TargetDedicatedNodes", "$TargetLowPriorityNodes"]


def test_insufficient_sample_data_error_matches_batch_shape() -> None:
    formula = parse_formula("$TargetDedicatedNodes = avg($RunningTasks.GetSample(TimeInterval_Minute * 10, 70));")
    result = evaluate(formula, EvaluationInput(now=NOW, samples={"$RunningTasks": series([1.0] * 10)}))
    assert result.error is not None
    body = result.error.to_autoscale_run_error()
    assert body == {
        "code": "InsufficientSampleData",
        "message": "Autoscale evaluation failed due to insufficient sample data",
        "values": [{"name": "Message",
                    "value": "Line 1, Col 43: Insufficient data from data set: $RunningTasks wanted 70%, received 50%"}],
    }


def test_sample_history_object_and_naive_datetimes_are_accepted() -> None:
    naive_now = NOW.replace(tzinfo=None)
    pairs = [(moment.replace(tzinfo=None), value) for moment, value in RAMP]
    formula = parse_formula("a = $PendingTasks.GetSample(2); b = $ActiveTasks.GetSample(2)")
    result = evaluate(formula, EvaluationInput(
        now=naive_now, samples={"$PendingTasks": pairs, "$ActiveTasks": SampleHistory.from_pairs(RAMP)}))
    assert result.error is None
    assert result.variables["a"] == result.variables["b"] == [119.0, 120.0]


def test_evaluation_is_pure_and_repeatable() -> None:
    formula = parse_formula("r = rand(); $TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Hour)) + r")
    data = EvaluationInput(now=NOW, samples=FULL_HOUR)
    first, second = evaluate(formula, data), evaluate(formula, data)
    assert first.variables == second.variables
    other_seed = evaluate(formula, EvaluationInput(now=NOW, samples=FULL_HOUR, random_seed=7))
    assert other_seed.variables["r"] != first.variables["r"]


def test_sample_period_and_lag_are_inputs() -> None:
    formula = parse_formula("p = $PendingTasks.GetSamplePeriod(); n = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10)")
    samples = {"$PendingTasks": series([1.0] * 40)}
    result = evaluate(formula, EvaluationInput(now=NOW, samples=samples, sample_period=timedelta(seconds=15)))
    assert format_value(result.variables["p"]) == "00:00:15"
    assert result.variables["n"] == 50.0  # 20 samples of 40 expected at a 15 s period


def test_variables_keep_assignment_order() -> None:
    result = evaluate(parse_formula("b = 1; a = 2; $TargetDedicatedNodes = 3; b = 4"), EvaluationInput(now=NOW))
    assert list(result.variables) == ["b", "a", "$TargetDedicatedNodes"]
    assert result.variables["b"] == 4.0


def test_formula_is_reusable_across_times() -> None:
    formula = parse_formula("$TargetDedicatedNodes = time().hour")
    for hour in (0, 7, 23):
        assert evaluate(formula, EvaluationInput(now=NOW.replace(hour=hour))).target_dedicated == hour


def test_every_function_is_covered_by_the_table() -> None:
    from shoal.autoscale.functions import FUNCTIONS

    text = "\n".join(c.formula for c in CASES + EXAMPLES)
    assert [name for name in FUNCTIONS if f"{name}(" not in text] == []
    for method in ("GetSample(", "GetSamplePercent(", "GetSamplePeriod(", "Count(", "HistoryBeginTime("):
        assert method in text


def test_every_operator_combination_is_decided() -> None:
    """Every (operator, left type, right type) either has a case that succeeds
    or fails with TypeMismatch; nothing else (e.g. a Python exception) happens."""
    values = {"double": "2", "doubleVec": "vec(1, 2)", "string": '"s"', "timestamp": "time()",
              "timeinterval": "TimeInterval_Minute"}
    operators = ["+", "-", "*", "/", "<", "<=", "==", ">=", ">", "!=", "&&", "||"]
    for (ln, left), (rn, right), op in itertools.product(values.items(), values.items(), operators):
        result = evaluate(parse_formula(f"x = {left} {op} {right}"), EvaluationInput(now=NOW))
        if result.error is not None:
            assert result.error.reason == "TypeMismatch", (ln, op, rn, result.error)
    for (name, operand), op in itertools.product(values.items(), ["-", "!"]):
        result = evaluate(parse_formula(f"x = {op}{operand}"), EvaluationInput(now=NOW))
        assert (result.error is None) == ((op, name) in {("-", "double"), ("!", "double"), ("-", "timeinterval")})


def test_nan_inputs_do_not_crash() -> None:
    samples = {"$CPUPercent": series([math.nan, math.inf, 1.0])}
    formula = parse_formula("a = avg($CPUPercent.GetSample(3)); b = ceil($CPUPercent.GetSample(3)); "
                            "c = round(0/0); d = percentile($CPUPercent.GetSample(3), 50)")
    assert evaluate(formula, EvaluationInput(now=NOW, samples=samples)).error is None


# ----------------------------------------------------------- results string
RESULTS: list[tuple[str, str, str, dict]] = [
    ("documented-alias-example", "totalNodes = 5; $TargetDedicated = totalNodes;",
     "$TargetDedicated=5;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;totalNodes=5", {}),
    ("brief-example", "$TargetDedicatedNodes = 2; $TargetLowPriorityNodes = 0; $x = 5",
     "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;$x=5", {}),
    ("unassigned-target-shows-current", "x = 1",
     "$TargetDedicatedNodes=4;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;x=1", {"$TargetDedicatedNodes": 4}),
    # Both targets are always listed (recorded: test_batch.pyTestBatchtest_batch_scale_pools[sync].json
    # and azure-sdk-for-node/batchservice-tests.json, evaluateautoscale), the spot one as it stands.
    ("low-priority-always-listed", "$TargetDedicatedNodes = 1",
     "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=3;$NodeDeallocationOption=requeue", {"$TargetLowPriorityNodes": 3}),
    ("low-priority-alias-as-written", "$TargetLowPriority = 2",
     "$TargetDedicatedNodes=0;$TargetLowPriority=2;$NodeDeallocationOption=requeue", {}),
    ("full-name-wins-and-alias-hidden", "$TargetDedicated = 9; $TargetDedicatedNodes = 1",
     "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue", {}),
    ("option-always-present-and-as-assigned", "$NodeDeallocationOption = retaineddata; $TargetDedicatedNodes = 1",
     "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=retaineddata", {}),
    ("others-sorted-ordinal", "zeta = 1; Alpha = 2; $beta = 3; alpha = 4",
     "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;$beta=3;Alpha=2;alpha=4;zeta=1", {}),
    ("target-shown-truncated", "$TargetDedicatedNodes = 2.9; $TargetLowPriorityNodes = -4",
     "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue", {}),
    ("value-rendering", 'a = 2.5; b = -0; c = 1e20; d = 0.1 + 0.2; e = vec(1, 2.5); f = "txt"; g = TimeInterval_Minute * 90; '
     'h = time("2016-10-13T19:18:47.8051Z"); i = 1/0; j = 0/0; k = requeue',
     "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;a=2.5;b=0;c=1e+20;d=0.30000000000000004;e=[1,2.5];f=txt;"
     "g=01:30:00;h=2016-10-13T19:18:47.805Z;i=Infinity;j=NaN;k=requeue", {}),
    ("read-only-metrics-not-listed", "x = $CPUPercent.GetSample(1)",
     "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;x=[" + format_value(METRIC_VALUE["$CPUPercent"]) + "]", {}),
    ("on-error-targets-unchanged-partial-variables", "a = 1; $TargetDedicatedNodes = 7; b = nope",
     "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;a=1", {"$TargetDedicatedNodes": 2}),
]


@pytest.mark.parametrize(("formula", "expected", "current"), [r[1:] for r in RESULTS], ids=[r[0] for r in RESULTS])
def test_results_string(formula: str, expected: str, current: dict) -> None:
    result = evaluate(parse_formula(formula), EvaluationInput(now=NOW, samples=FULL_HOUR, current=current))
    assert result.results_string() == expected
