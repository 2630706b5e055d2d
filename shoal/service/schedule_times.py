"""When a job schedule runs (semantics §3.8), from plain data: no store, no clock of its own.

A schedule's occurrences are doNotRunUntil (or its creation) + k × recurrenceInterval. An
occurrence may start a job from its time until its startWindow has passed; one whose window
passes while the previous job still runs is skipped, not carried forward. Without a
recurrence there is exactly one occurrence. Nothing runs after doNotRunAfter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Schedule:
    do_not_run_until: datetime | None
    do_not_run_after: datetime | None
    start_window: timedelta | None  # None: unlimited
    recurrence: timedelta | None  # None: one job only


@dataclass(frozen=True)
class Decision:
    """What the schedule duty does for one due schedule."""

    create_job: bool
    next_run: datetime | None  # the occurrence after the one acted on (None: no more)
    due_at: datetime | None  # when to look at the schedule again (None: only when its job completes)
    complete: bool  # the schedule has nothing left to run: it is completed


def first_run(schedule: Schedule, created: datetime) -> datetime | None:
    """The first occurrence, or None when doNotRunAfter is already past it. doNotRunUntil is
    the earliest time a job may be made: one already past means now, as none does."""
    start = max(schedule.do_not_run_until or created, created)
    if schedule.do_not_run_after is not None and start > schedule.do_not_run_after:
        return None
    return start


def window_end(schedule: Schedule, occurrence: datetime) -> datetime | None:
    """The last moment a job for `occurrence` may start; a window longer than the recurrence
    is as good as unlimited (the next occurrence takes over)."""
    if schedule.start_window is None:
        return None
    if schedule.recurrence is not None and schedule.start_window >= schedule.recurrence:
        return None
    try:
        return occurrence + schedule.start_window
    except OverflowError:
        return None


def following(schedule: Schedule, occurrence: datetime, now: datetime) -> datetime | None:
    """The first occurrence after `occurrence` that is later than `now` (skipping those wholly
    in the past), or None when there is none before doNotRunAfter."""
    if schedule.recurrence is None:
        return None
    step = schedule.recurrence
    try:
        nxt = occurrence + step
        if nxt <= now:
            # Whole intervals passed: jump over them in one step, not one interval at a time.
            nxt = occurrence + step * ((now - occurrence) // step + 1)
    except OverflowError:
        return None
    if schedule.do_not_run_after is not None and nxt > schedule.do_not_run_after:
        return None
    return nxt


def decide(schedule: Schedule, next_run: datetime | None, now: datetime, job_running: bool) -> Decision:
    """What to do for a schedule whose next occurrence is `next_run`, at `now`."""
    if next_run is None:
        # No occurrence left: done once the last job has finished.
        return Decision(False, None, None, complete=not job_running)
    if next_run > now:
        return Decision(False, next_run, next_run, complete=False)
    if schedule.do_not_run_after is not None and now > schedule.do_not_run_after:
        # An occurrence from before doNotRunAfter that could not start in time: no job is
        # created after doNotRunAfter.
        return Decision(False, None, None, complete=not job_running)
    end = window_end(schedule, next_run)
    missed = end is not None and now > end
    if missed:
        later = following(schedule, next_run, now)
        if later is None:
            return Decision(False, None, None, complete=not job_running)
        return Decision(False, later, later, complete=False)
    if job_running:
        # Wait for the job within the window; its completion makes the schedule due again.
        return Decision(False, next_run, end, complete=False)
    later = following(schedule, next_run, now)
    return Decision(True, later, later, complete=False)
