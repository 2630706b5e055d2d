"""Sample histories of the service-defined metrics, the sample methods, and the one model of
when samples are taken and what a formula can see of them.

A history is two parallel lists (timestamps as integer ticks, values as
floats), oldest first, so that windows are found by bisection and returned as
list slices without a Python object per sample.

The model (semantics.md §1.7, §7.5), shared by the server (service/metrics.py, the sampler
duty) and `shoal autoscale simulate`:
- Samples are taken on a fixed grid: every SAMPLE_PERIOD, at whole multiples of it (:00 and :30
  of every minute), so a continuous history holds exactly one sample per period of any window.
- A formula evaluated at `now` sees the history as it stood at `now - visibility_lag` (its
  horizon): later samples do not exist yet. Time-interval arguments look back from the horizon,
  not from `now`, which is why a pool with a full history reads 100 % in any window, as Azure
  reports for long-running pools, while `GetSample(1)` is up to a lag (plus a period) old.
- A timestamp argument is absolute; a moment past the horizon is the horizon.  A window is the
  half-open range (older, newer], so a 10-minute window holds 20 samples.
- Expected samples in a window = window length // sample period, but at least one for a
  window that is not empty (Azure answers `GetSample(10 * TimeInterval_Second, 0 *
  TimeInterval_Second, 100)` with "wanted 100%, received 0%"); the percentage is capped at 100.
- `GetSample(n)` wants the n newest samples; fewer is insufficient data, as a window with too
  few samples and a `samplePercent` is.
- A new pool's history starts with one zero-valued sample stamped so its first evaluation can
  already see it (`seed_sample_time`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta

from .errors import (
    ARGUMENTS,
    INSUFFICIENT,
    INSUFFICIENT_SAMPLE_DATA,
    INVALID_VALUE,
    TYPE_MISMATCH,
    FormulaError,
    evaluation_error,
)
from .types import TimeInterval, Timestamp, Value, datetime_to_ticks, timedelta_to_ticks, type_name

SAMPLE_PERIOD = timedelta(seconds=30)
# Batch's samples reach formulas about a minute after they are taken (semantics.md §1.7).
SAMPLE_LAG = timedelta(seconds=60)


def next_sample_time(after: datetime, period: timedelta = SAMPLE_PERIOD) -> datetime:
    """The first instant of the sample grid strictly after `after`."""
    step = timedelta_to_ticks(period)
    return Timestamp((datetime_to_ticks(after) // step + 1) * step).to_datetime()


def seed_sample_time(created: datetime, lag: timedelta, period: timedelta = SAMPLE_PERIOD) -> datetime:
    """When a new pool's zero-valued sample is stamped: the grid instant at or before the horizon
    of its creation, so the evaluation that runs as the pool is created can read it."""
    step = timedelta_to_ticks(period)
    return Timestamp(datetime_to_ticks(created - lag) // step * step).to_datetime()

# Metrics that hold a sample history (read-only service-defined variables,
# semantics.md §1.6).  Legacy names read the history of the current name.
METRIC_ALIASES = {"$CurrentDedicated": "$CurrentDedicatedNodes"}
METRICS = frozenset(
    {
        "$CPUPercent",
        "$WallClockSeconds",
        "$MemoryBytes",
        "$DiskBytes",
        "$DiskReadBytes",
        "$DiskWriteBytes",
        "$DiskReadOps",
        "$DiskWriteOps",
        "$NetworkInBytes",
        "$NetworkOutBytes",
        "$SampleNodeCount",
        "$ActiveTasks",
        "$RunningTasks",
        "$PendingTasks",
        "$SucceededTasks",
        "$FailedTasks",
        "$TaskSlotsPerNode",
        "$CurrentDedicatedNodes",
        "$CurrentLowPriorityNodes",
        "$UsableNodeCount",
        "$PreemptedNodeCount",
    }
)
READ_ONLY_VARIABLES = METRICS | frozenset(METRIC_ALIASES)

SAMPLE_METHODS = frozenset({"GetSample", "GetSamplePercent", "GetSamplePeriod", "Count", "HistoryBeginTime"})


class SampleHistory:
    """The recorded samples of one metric, oldest first."""

    __slots__ = ("ticks", "values")

    def __init__(self, ticks: list[int], values: list[float]) -> None:
        self.ticks = ticks
        self.values = values

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[datetime, float]]) -> SampleHistory:
        ticks = [datetime_to_ticks(moment) for moment, _ in pairs]
        values = [float(value) for _, value in pairs]
        if any(later < earlier for earlier, later in zip(ticks, ticks[1:], strict=False)):
            order = sorted(range(len(ticks)), key=ticks.__getitem__)
            ticks = [ticks[i] for i in order]
            values = [values[i] for i in order]
        return cls(ticks, values)


EMPTY_HISTORY = SampleHistory([], [])


class MetricView:
    """One metric's history as seen by one evaluation (fixed now, lag, period)."""

    __slots__ = ("name", "history", "horizon", "visible", "period")

    def __init__(self, name: str, history: SampleHistory, now: int, lag: int, period: int) -> None:
        self.name = name
        self.history = history
        # The evaluation sees the history as it stood `lag` ago; look-backs start there.
        self.horizon = now - max(0, lag)
        self.period = period
        # Index one past the newest visible sample.
        self.visible = bisect_right(history.ticks, self.horizon)

    # -- the sample methods ---------------------------------------------------
    def call(self, method: str, args: list, position: int) -> Value:
        if method == "GetSample":
            return self._get_sample(args, position)
        if method == "GetSamplePercent":
            if len(args) not in (1, 2):
                raise _arity(method, "1 or 2", position)
            low, high = self._window(args[0], args[1] if len(args) == 2 else None, position)
            return self._percent(low, high)[0]
        if args:
            raise _arity(method, "no", position)
        if method == "GetSamplePeriod":
            return TimeInterval(self.period)
        if method == "Count":
            return float(self.visible)
        if method == "HistoryBeginTime":
            if not self.visible:
                raise evaluation_error(f"{self.name} has no samples yet", position, INVALID_VALUE)
            return Timestamp(self.history.ticks[0])
        raise evaluation_error(f"{self.name} has no method {method}()", position, ARGUMENTS)

    def latest(self, position: int) -> float:
        """The newest visible sample, for a metric read as a plain scalar."""
        if not self.visible:
            raise evaluation_error(f"{self.name} has no value yet", position, INVALID_VALUE)
        return self.history.values[self.visible - 1]

    def _get_sample(self, args: list, position: int) -> list:
        if not 1 <= len(args) <= 3:
            raise _arity("GetSample", "1 to 3", position)
        first = args[0]
        if type(first) is float and len(args) == 1:
            # GetSample(n): the n newest samples, however old; fewer is insufficient data.
            if not first >= 0:  # also refuses NaN
                raise evaluation_error("GetSample count must be >= 0", position, INVALID_VALUE)
            count = int(first)
            if count > self.visible:
                raise self._insufficient(100.0, self.visible * 100.0 / count, position)
            return self.history.values[self.visible - count:self.visible]
        end = None
        percent = None
        if len(args) == 3:
            end, percent = args[1], args[2]
        elif len(args) == 2:
            if type(args[1]) is float:
                percent = args[1]
            else:
                end = args[1]
        low, high = self._window(first, end, position)
        if percent is not None:
            if type(percent) is not float:
                raise _type("samplePercent", percent, position)
            if not 0 <= percent <= 100:
                raise evaluation_error("samplePercent must be between 0 and 100", position, INVALID_VALUE)
            received, _, _ = self._percent(low, high)
            if received < percent:
                raise self._insufficient(percent, received, position)
        start, stop = self._indices(low, high)
        return self.history.values[start:stop]

    def _insufficient(self, wanted: float, received: float, position: int) -> FormulaError:
        return FormulaError(
            INSUFFICIENT_SAMPLE_DATA,
            f"Insufficient data from data set: {self.name} wanted {_pct(wanted)}%, received {_pct(received)}%",
            position,
            reason=INSUFFICIENT,
        )

    # -- windows --------------------------------------------------------------
    def _instant(self, value: object, position: int) -> int:
        kind = type(value)
        if kind is TimeInterval:
            return self.horizon - value.ticks  # type: ignore[attr-defined]
        if kind is Timestamp:
            return min(value.ticks, self.horizon)  # type: ignore[attr-defined]
        raise _type("time argument", value, position)

    def _window(self, start: object, end: object | None, position: int) -> tuple[int, int]:
        first = self._instant(start, position)
        second = self.horizon if end is None else self._instant(end, position)
        return (first, second) if first <= second else (second, first)

    def _indices(self, low: int, high: int) -> tuple[int, int]:
        ticks = self.history.ticks
        stop = min(bisect_right(ticks, high), self.visible)
        start = min(bisect_right(ticks, low), stop)
        return start, stop

    def _percent(self, low: int, high: int) -> tuple[float, int, int]:
        start, stop = self._indices(low, high)
        available = stop - start
        if high <= low or self.period <= 0:
            return 100.0, available, 0
        expected = max(1, (high - low) // self.period)
        return min(100.0, available * 100.0 / expected), available, expected


def _pct(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _arity(method: str, expected: str, position: int) -> FormulaError:
    return evaluation_error(f"{method}() takes {expected} arguments", position, ARGUMENTS)


def _type(what: str, value: object, position: int) -> FormulaError:
    return evaluation_error(f"{what} cannot be a {type_name(value)}", position, TYPE_MISMATCH)
