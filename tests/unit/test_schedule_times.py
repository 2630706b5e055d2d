"""The recurrence arithmetic of job schedules (semantics §3.8), from plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shoal.service.schedule_times import Schedule, decide, first_run, following, window_end

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def every(minutes: float, **kwargs: object) -> Schedule:
    values: dict[str, object] = {"do_not_run_until": None, "do_not_run_after": None, "start_window": None,
                                 "recurrence": timedelta(minutes=minutes)}
    values.update(kwargs)
    return Schedule(**values)  # type: ignore[arg-type]


def test_the_first_run_is_do_not_run_until_or_creation() -> None:
    assert first_run(every(5), T0) == T0
    assert first_run(every(5, do_not_run_until=T0 + MINUTE), T0) == T0 + MINUTE
    # A doNotRunUntil already past is no constraint: the first job runs at creation, within its
    # start window (replaying azure-sdk-for-node/batchservice-tests.json years after it was made).
    assert first_run(every(5, do_not_run_until=T0 - timedelta(days=300)), T0) == T0
    # doNotRunAfter before the first run: nothing ever runs.
    assert first_run(every(5, do_not_run_until=T0 + 2 * MINUTE, do_not_run_after=T0 + MINUTE), T0) is None


def test_a_due_occurrence_starts_a_job_and_the_next_is_one_interval_later() -> None:
    decision = decide(every(5), T0, T0 + timedelta(seconds=1), job_running=False)
    assert decision.create_job and decision.next_run == T0 + 5 * MINUTE and decision.due_at == T0 + 5 * MINUTE
    assert not decision.complete


def test_intervals_wholly_in_the_past_are_skipped_in_one_step() -> None:
    late = T0 + timedelta(days=365)
    assert following(every(1), T0, late) == late + MINUTE
    decision = decide(every(1), T0, late, job_running=False)
    assert decision.create_job and decision.next_run == late + MINUTE


def test_not_yet_due_waits_until_its_time() -> None:
    decision = decide(every(5), T0 + MINUTE, T0, job_running=False)
    assert not decision.create_job and decision.due_at == T0 + MINUTE


def test_a_running_job_holds_the_next_one_within_the_start_window() -> None:
    schedule = every(10, start_window=2 * MINUTE)
    waiting = decide(schedule, T0, T0 + MINUTE, job_running=True)
    assert not waiting.create_job and waiting.next_run == T0 and waiting.due_at == T0 + 2 * MINUTE
    # The job finishes within the window: the occurrence runs late.
    assert decide(schedule, T0, T0 + 90 * timedelta(seconds=1), job_running=False).create_job


def test_an_occurrence_whose_start_window_passed_is_skipped_not_carried_forward() -> None:
    schedule = every(10, start_window=2 * MINUTE)
    missed = decide(schedule, T0, T0 + 3 * MINUTE, job_running=False)
    assert not missed.create_job and missed.next_run == T0 + 10 * MINUTE
    assert window_end(schedule, T0) == T0 + 2 * MINUTE


def test_a_start_window_longer_than_the_recurrence_is_unlimited() -> None:
    assert window_end(every(1, start_window=5 * MINUTE), T0) is None
    waiting = decide(every(1, start_window=5 * MINUTE), T0, T0 + timedelta(hours=1), job_running=True)
    assert not waiting.create_job and waiting.due_at is None  # its job's completion wakes it


def test_without_recurrence_one_job_runs_and_then_the_schedule_completes() -> None:
    once = every(1, recurrence=None)
    started = decide(once, T0, T0, job_running=False)
    assert started.create_job and started.next_run is None
    assert not decide(once, None, T0 + MINUTE, job_running=True).complete
    assert decide(once, None, T0 + MINUTE, job_running=False).complete


def test_do_not_run_after_ends_the_recurrence() -> None:
    schedule = every(1, do_not_run_after=T0 + 90 * timedelta(seconds=1))
    assert following(schedule, T0, T0) == T0 + MINUTE
    assert following(schedule, T0 + MINUTE, T0 + MINUTE) is None
    missed = decide(every(1, start_window=MINUTE / 2, do_not_run_after=T0 + MINUTE), T0, T0 + 2 * MINUTE,
                    job_running=False)
    assert missed.complete


def test_huge_intervals_do_not_overflow() -> None:
    huge = every(1, recurrence=timedelta(days=10675199))
    assert following(huge, T0, T0) is None  # past the calendar: no next run
    assert decide(huge, T0, T0, job_running=False).create_job
    assert window_end(every(1, recurrence=None, start_window=timedelta(days=10675199)), T0) is None


def test_no_job_starts_after_do_not_run_after_even_for_an_earlier_occurrence() -> None:
    schedule = every(1, do_not_run_after=T0 + 90 * timedelta(seconds=1))
    late = decide(schedule, T0 + MINUTE, T0 + 2 * MINUTE, job_running=False)
    assert not late.create_job and late.complete
    assert not decide(schedule, T0 + MINUTE, T0 + 2 * MINUTE, job_running=True).complete
