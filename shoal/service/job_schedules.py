"""Job schedules (semantics §2.7, §3.8): the records, their state machine, and the pass of the
schedule duty that starts their jobs.

A schedule's times (doNotRunUntil, nextRunTime, …) live on the server's scaled timeline
(shoal/timebase.py), so `--time-scale` makes recurrences fast; the arithmetic is
shoal.service.schedule_times, from plain data. The duty reads only schedules that are due,
through the index on `due_at`, a bounded batch per pass.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from shoal import clock
from shoal.errors import BatchError, Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.model.states import JobState
from shoal.service import auto_pools, quotas, request_body, schedule_times
from shoal.service import jobs as job_service
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import job_schedules, jobs

log = logging.getLogger("shoal.schedules")

ACTIVE, DISABLED, TERMINATING, COMPLETED, DELETING = "active", "disabled", "terminating", "completed", "deleting"
MIN_INTERVAL = timedelta(minutes=1)
# Schedules the duty handles per pass: one bounded transaction, however many are due.
DUE_PER_PASS = 200
# How often a deleting schedule is looked at again until its jobs are gone.
DELETE_RECHECK = timedelta(seconds=1)


def not_found() -> NotFound:
    return NotFound("The specified job schedule does not exist.", code="JobScheduleNotFound")


def load(conn: Connection, ctx: Context, schedule_id: str) -> Any:
    row = conn.execute(select(job_schedules).where(job_schedules.c.account == ctx.account,
                                                   job_schedules.c.key == schedule_id.lower())).first()
    if row is None:
        raise not_found()
    return row


def _time(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    parsed = clock.parse_iso(value)
    if parsed is None:
        raise InvalidProperty(f"schedule.{name}", str(value)[:64], "The value must be an ISO 8601 date and time.")
    return parsed


def parse_schedule(body: Any) -> schedule_times.Schedule:
    """`schedule` as schedule_times reads it; times are normalised in `body` for storing."""
    if not isinstance(body, dict):
        raise InvalidProperty("schedule", "…", "The value must be a JSON object.")
    until, after = _time(body, "doNotRunUntil"), _time(body, "doNotRunAfter")
    if until is not None and after is not None and after <= until:
        raise InvalidProperty("schedule.doNotRunAfter", body["doNotRunAfter"],
                              "doNotRunAfter must be later than doNotRunUntil.")
    window = v.duration(body, "startWindow", minimum=MIN_INTERVAL, path="schedule.startWindow")
    recurrence = v.duration(body, "recurrenceInterval", minimum=MIN_INTERVAL, path="schedule.recurrenceInterval")
    for name, value in (("doNotRunUntil", until), ("doNotRunAfter", after)):
        if value is not None:
            body[name] = clock.iso(value)
    for name, delta in (("startWindow", window), ("recurrenceInterval", recurrence)):
        if delta is not None:
            body[name] = clock.format_duration(delta)
    return schedule_times.Schedule(until, after, window, recurrence)


def _job_specification(schedule_id: str, spec: Any) -> dict[str, Any]:
    """The jobSpecification, validated by the job rules (shoal.service.jobs) as the job it makes."""
    if not isinstance(spec, dict):
        raise InvalidProperty("jobSpecification", "…", "The value must be a JSON object.")
    body = {**spec, "id": schedule_id}
    try:
        parsed = job_service.parse_create(body, in_schedule=True)
        # What validation normalised (integers sent as strings, enum spellings) is stored so.
        spec.update({name: body[name] for name in spec})
        return parsed
    except BatchError as exc:
        name = exc.values.get("PropertyName")
        if name:
            exc.values["PropertyName"] = f"jobSpecification.{name}"
        raise


def parse_create(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    request_body.check(body, "jobschedule.create")
    schedule_id = v.resource_id(body)
    v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    v.name_value_pairs(body, "metadata")
    if body.get("schedule") is None:
        raise MissingProperty("schedule")
    if body.get("jobSpecification") is None:
        raise MissingProperty("jobSpecification")
    parse_schedule(body["schedule"])
    _job_specification(schedule_id, body["jobSpecification"])
    spec = {name: body[name] for name in ("displayName", "schedule", "jobSpecification", "metadata")
            if body.get(name) is not None}
    return {"id": schedule_id, "spec": spec}


def times_of(spec: dict[str, Any]) -> schedule_times.Schedule:
    return parse_schedule(dict(spec["schedule"]))


def add(ctx: Context, parsed: dict[str, Any]) -> None:
    schedule_id, spec = parsed["id"], parsed["spec"]
    now, virtual_now = clock.now(), ctx.timebase.now()
    with ctx.engine.begin() as conn:
        if conn.execute(select(job_schedules.c.seq).where(job_schedules.c.account == ctx.account,
                                                          job_schedules.c.key == schedule_id.lower())).first():
            raise Conflict("The specified job schedule already exists.", code="JobScheduleExists")
        if conn.execute(select(jobs.c.seq).where(jobs.c.account == ctx.account,
                                                 jobs.c.key == schedule_id.lower())).first():
            raise Conflict("A job with the same id as the specified job schedule exists.",
                           code="JobWithSameIdExists")
        quotas.check_active_jobs(ctx, conn)
        first = schedule_times.first_run(times_of(spec), virtual_now)
        conn.execute(insert(job_schedules).values(
            account=ctx.account, id=schedule_id, key=schedule_id.lower(), state=ACTIVE, spec=spec,
            execution_info=_execution_info({}, first), job_count=0, due_at=first or virtual_now,
            etag=clock.new_etag(), last_modified=now, creation_time=now, state_transition_time=now))


def _execution_info(info: dict[str, Any], next_run: datetime | None) -> dict[str, Any]:
    out = {k: val for k, val in info.items() if k != "nextRunTime"}
    if next_run is not None:
        out["nextRunTime"] = clock.iso(next_run)
    return out


def _next_run(row: Any) -> datetime | None:
    return clock.parse_iso((row.execution_info or {}).get("nextRunTime"))


def get(ctx: Context, schedule_id: str) -> Any:
    with ctx.engine.connect() as conn:
        return load(conn, ctx, schedule_id)


def etag_of(ctx: Context, schedule_id: str) -> tuple[str, Any]:
    row = get(ctx, schedule_id)
    return row.etag, row.last_modified


def exists(ctx: Context, schedule_id: str) -> bool:
    try:
        get(ctx, schedule_id)
    except NotFound:
        return False
    return True


def list_all(ctx: Context) -> list[Any]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(job_schedules).where(job_schedules.c.account == ctx.account)
                                 .order_by(job_schedules.c.key)).all())


def list_jobs(ctx: Context, schedule_id: str) -> list[Any]:
    """The jobs a schedule created, oldest first (Job_ListFromJobSchedule)."""
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, schedule_id)
        return list(conn.execute(select(jobs).where(jobs.c.schedule_seq == row.seq).order_by(jobs.c.seq)).all())


def _touch(conn: Connection, row: Any, **values: Any) -> None:
    conn.execute(update(job_schedules).where(job_schedules.c.seq == row.seq).values(
        etag=clock.new_etag(), last_modified=clock.now(), **values))


def _set_state(conn: Connection, row: Any, state: str, **values: Any) -> None:
    _touch(conn, row, state=state, previous_state=row.state,
           previous_state_transition_time=row.state_transition_time, state_transition_time=clock.now(), **values)


def _guard_changeable(row: Any) -> None:
    if row.state == DELETING:
        raise Conflict("The specified job schedule has been marked for deletion and is being reclaimed.",
                       code="JobScheduleBeingDeleted")
    if row.state in (COMPLETED, TERMINATING):
        raise Conflict("The specified job schedule is already in a completed state.", code="JobScheduleCompleted")


def _update(ctx: Context, schedule_id: str, body: Any, *, replace: bool) -> None:
    body = v.require_object(body)
    request_body.check(body, "jobschedule.replace" if replace else "jobschedule.patch")
    if replace:
        for name in ("schedule", "jobSpecification"):
            if body.get(name) is None:
                raise MissingProperty(name)
    if body.get("schedule") is not None:
        parse_schedule(body["schedule"])
    v.name_value_pairs(body, "metadata")
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, schedule_id)
        _guard_changeable(row)
        if body.get("jobSpecification") is not None:
            _job_specification(row.id, body["jobSpecification"])
        spec = dict(row.spec)
        for name in ("schedule", "jobSpecification", "metadata"):
            if body.get(name) is not None:
                spec[name] = body[name]
            elif replace and name == "metadata":
                spec.pop(name, None)
        values: dict[str, Any] = {"spec": spec}
        if body.get("schedule") is not None:
            next_run = _rescheduled(times_of(spec), row, ctx.timebase.now())
            values["execution_info"] = _execution_info(row.execution_info, next_run)
            if row.state == ACTIVE:
                values["due_at"] = next_run or ctx.timebase.now()
        _touch(conn, row, **values)


def _rescheduled(times: schedule_times.Schedule, row: Any, now: datetime) -> datetime | None:
    """The next run under a changed schedule: its first occurrence if no job ran yet, else the
    first one after now."""
    first = schedule_times.first_run(times, now)
    if first is None or row.job_count == 0 or first > now:
        return first
    return schedule_times.following(times, first, now)


def patch(ctx: Context, schedule_id: str, body: Any) -> None:
    _update(ctx, schedule_id, body, replace=False)


def replace(ctx: Context, schedule_id: str, body: Any) -> None:
    _update(ctx, schedule_id, body, replace=True)


def disable(ctx: Context, schedule_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, schedule_id)
        if row.state == DISABLED:
            return
        _guard_changeable(row)
        _set_state(conn, row, DISABLED, due_at=None)


def enable(ctx: Context, schedule_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, schedule_id)
        if row.state == ACTIVE:
            return
        _guard_changeable(row)
        _set_state(conn, row, ACTIVE, due_at=ctx.timebase.now())


def terminate(ctx: Context, schedule_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, schedule_id)
        _guard_changeable(row)
        _end(ctx, conn, row)


def _end(ctx: Context, conn: Connection, row: Any) -> None:
    """terminating → completed: its running job terminates (TerminateJobSchedule)."""
    if row.active_job_seq is not None:
        job = conn.execute(select(jobs).where(jobs.c.seq == row.active_job_seq)).first()
        if job is not None and job.state not in (JobState.COMPLETED, JobState.DELETING):
            job_service.terminate_in(ctx, conn, job, "TerminateJobSchedule")
    info = _execution_info(row.execution_info, None)
    info["endTime"] = clock.iso(clock.now())
    _set_state(conn, row, COMPLETED, execution_info=info, due_at=None, active_job_seq=None)
    _release_pool(ctx, conn, row)


def _release_pool(ctx: Context, conn: Connection, row: Any) -> None:
    spec = auto_pools.spec_of(row.spec.get("jobSpecification") or {})
    if spec is not None and not spec.get("keepAlive"):
        auto_pools.delete_in(ctx, conn, row.auto_pool_id)


def delete_schedule(ctx: Context, schedule_id: str) -> None:
    touched: set[str] = set()
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, schedule_id)
        if row.state == DELETING:
            return
        for job in conn.execute(select(jobs).where(jobs.c.schedule_seq == row.seq,
                                                   jobs.c.state != JobState.DELETING)).all():
            touched |= job_service.delete_in(ctx, conn, job)
        _set_state(conn, row, DELETING, due_at=ctx.timebase.now(), active_job_seq=None)
        _release_pool(ctx, conn, row)
    for node_id in touched:
        ctx.signals.wake_node(node_id)
    ctx.signals.wake_provider()


def run_due(ctx: Context) -> int:
    """One pass of the schedule duty: the schedules due by now, a bounded batch in due order."""
    now = ctx.timebase.now()
    created = 0
    with ctx.engine.begin() as conn:
        due = conn.execute(select(job_schedules).where(job_schedules.c.due_at <= now)
                           .order_by(job_schedules.c.due_at).limit(DUE_PER_PASS)).all()
        if not due:
            return 0
        # The quota is counted once a pass, not once a job: counting walks every active record.
        room = [quotas.current().active_jobs_and_schedules - quotas.active_jobs_and_schedules(ctx, conn)]
        for row in due:
            created += _run_one(ctx, conn, row, now, room)
    if created:
        ctx.signals.wake_scheduler()
        ctx.signals.wake_provider()
    return created


def _run_one(ctx: Context, conn: Connection, row: Any, now: datetime, room: list[int]) -> int:
    if row.state == DELETING:
        left = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.schedule_seq == row.seq)).scalar_one()
        if left:
            _touch_quietly(conn, row, due_at=now + DELETE_RECHECK)
        else:
            conn.execute(delete(job_schedules).where(job_schedules.c.seq == row.seq))
        return 0
    if row.state != ACTIVE:
        _touch_quietly(conn, row, due_at=None)
        return 0
    job_running = row.active_job_seq is not None
    decision = schedule_times.decide(times_of(row.spec), _next_run(row), now, job_running)
    if decision.complete:
        _end(ctx, conn, row)
        return 0
    values: dict[str, Any] = {"due_at": decision.due_at,
                              "execution_info": _execution_info(row.execution_info, decision.next_run)}
    created = 0
    if decision.create_job:
        started = _start_job(ctx, conn, row, room)
        if started is not None:
            job_seq, job_id, pool_id = started
            created = 1
            values.update(active_job_seq=job_seq, job_count=row.job_count + 1, auto_pool_id=pool_id)
            values["execution_info"]["recentJob"] = {"id": job_id, "url": f"{ctx.base_url}/jobs/{job_id}"}
    if decision.due_at is None and not created and not job_running:
        # Nothing to wait for (no next run, no job: the last one was skipped or could not be
        # made): the next pass completes the schedule.
        values["due_at"] = now
    if values["execution_info"] == row.execution_info and not created:
        _touch_quietly(conn, row, due_at=values["due_at"])
    else:
        _touch(conn, row, **values)
    return created


def _touch_quietly(conn: Connection, row: Any, **values: Any) -> None:
    """Bookkeeping of the duty that changes nothing a client sees: no new ETag."""
    conn.execute(update(job_schedules).where(job_schedules.c.seq == row.seq).values(**values))


def _start_job(ctx: Context, conn: Connection, row: Any, room: list[int]) -> tuple[int, str, str | None] | None:
    """Create the schedule's next job (`<id>:job-<n>`); None when it cannot be (the quota, a pool
    that cannot be made): that occurrence is skipped, as Batch skips one it cannot run. `room`
    holds how many more jobs the active-job quota allows this pass."""
    job_id = f"{row.id}:job-{row.job_count + 1}"
    if room[0] <= 0:
        log.warning("job schedule %s could not start job %s: the active job quota is reached", row.id, job_id)
        return None
    try:
        parsed = job_service.parse_create({**row.spec["jobSpecification"], "id": row.id}, in_schedule=True)
        parsed["id"] = job_id
        pool_id = row.auto_pool_id
        auto = parsed.get("auto_pool")
        with conn.begin_nested():
            if auto is not None and auto["lifetime"] == "jobschedule" and pool_id is None:
                pool_id = auto_pools.create_in(ctx, conn, auto)
            seq = job_service.insert_in(ctx, conn, parsed, schedule_seq=row.seq, quota_checked=True,
                                        pool_id=pool_id if auto is not None and auto["lifetime"] == "jobschedule"
                                        else None)
    except BatchError as exc:
        log.warning("job schedule %s could not start job %s: %s %s", row.id, job_id, exc.code, exc.message)
        return None
    except SQLAlchemyError:
        # Rolled back to the savepoint: one schedule the store refuses never stalls the others.
        log.exception("job schedule %s could not start job %s", row.id, job_id)
        return None
    room[0] -= 1
    return seq, job_id, pool_id
