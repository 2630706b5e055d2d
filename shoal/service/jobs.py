"""Jobs: creation, updates and the job state machine (semantics §2.4)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, delete, insert, select, update

from shoal import clock
from shoal.errors import Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.model.states import JobState, TaskState
from shoal.service import auto_pools, job_prep, job_prep_nodes, quotas, request_body, transitions
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import job_schedules, job_task_counts, jobs, nodes, pools, tasks

# Properties a client may set that Shoal keeps verbatim in `spec` (and shows again).
KEPT_PROPERTIES = ("displayName", "constraints", "commonEnvironmentSettings", "poolInfo", "onAllTasksComplete",
         "onTaskFailure", "metadata", "usesTaskDependencies")
# What Shoal does not carry out yet: refused when given, never stored and ignored. A boolean is
# "given" when true (false asks for nothing); `allowTaskPreemption` would let higher-priority jobs
# requeue this job's tasks, which Shoal's scheduler never does.
UNSUPPORTED_ON_CREATE = ("networkConfiguration", "allowTaskPreemption")
UNSUPPORTED_ON_UPDATE = ("networkConfiguration", "allowTaskPreemption")
DISABLE_OPTIONS = ("requeue", "terminate", "wait")
# What `add` stores with a new job, in its transaction: (connection, the job's row, now).
WithJob = Callable[[Connection, Any, datetime], None]


def job_not_found() -> NotFound:
    return NotFound("The specified job does not exist.", code="JobNotFound")


def load(conn: Connection, ctx: Context, job_id: str) -> Any:
    row = conn.execute(select(jobs).where(jobs.c.account == ctx.account, jobs.c.key == job_id.lower())).first()
    if row is None:
        raise job_not_found()
    return row


def _validate_constraints(body: dict[str, Any]) -> None:
    constraints = v.obj(body, "constraints")
    if constraints is not None:
        v.duration(constraints, "maxWallClockTime", path="constraints.maxWallClockTime")
        v.integer(constraints, "maxTaskRetryCount", minimum=-1, path="constraints.maxTaskRetryCount")


def _validate_mutable(body: dict[str, Any], *, auto_pool_allowed: bool = False) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    priority = v.integer(body, "priority", minimum=-1000, maximum=1000)
    if priority is not None:
        fields["priority"] = priority
    parallel = v.integer(body, "maxParallelTasks", minimum=-1)
    if parallel is not None:
        if parallel == 0:
            raise InvalidProperty("maxParallelTasks", 0, "The value must be -1 or greater than 0.")
        fields["max_parallel_tasks"] = parallel
    # Enum values are matched without case but stored in their canonical lower-case spelling,
    # which is what the rest of the service compares against.
    for name, options in (("onAllTasksComplete", ("noaction", "terminatejob")),
                          ("onTaskFailure", ("noaction", "performexitoptionsjobaction"))):
        value = v.choice(body, name, options)
        if value is not None:
            body[name] = value
    _validate_constraints(body)
    v.name_value_pairs(body, "metadata")
    pool_info = v.obj(body, "poolInfo")
    if pool_info is not None and auto_pool_allowed and pool_info.get("autoPoolSpecification") is not None:
        fields["auto_pool"] = auto_pools.parse(pool_info)
    elif pool_info is not None:
        request_body.refuse_unsupported(body, ("poolInfo.autoPoolSpecification",))
        pool_id = v.string(pool_info, "poolId", required=True, path="poolInfo.poolId")
        assert pool_id is not None
        fields["pool_key"] = pool_id.lower()
    return fields


def create(ctx: Context, body: Any) -> None:
    """A job without a job manager (one with is created by service/job_manager.py)."""
    job = parse_create(body)
    request_body.refuse_unsupported(body, ("jobManagerTask",))
    add(ctx, job)


def parse_create(body: Any, *, in_schedule: bool = False) -> dict[str, Any]:
    """Validate a job-create body into what `add` stores (pure: the API may run it off the loop).
    A schedule's jobSpecification is validated by the same rules (`in_schedule`), where an auto
    pool may also live as long as the schedule."""
    body = v.require_object(body)
    request_body.check(body, "job.create")
    job_id = v.resource_id(body)
    if body.get("poolInfo") is None:
        raise MissingProperty("poolInfo")
    v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    request_body.refuse_unsupported(body, UNSUPPORTED_ON_CREATE)
    if in_schedule:
        # The schedule duty creates its jobs without service/job_manager.py: refused, not dropped.
        request_body.refuse_unsupported(body, ("jobManagerTask",), root="jobSpecification")
    # Fixed at creation (JobUpdateParameter has no such property): tasks are checked against it.
    v.boolean(body, "usesTaskDependencies")
    fields = _validate_mutable(body, auto_pool_allowed=True)
    auto_pool = fields.pop("auto_pool", None)
    if auto_pool is not None and auto_pool["lifetime"] == "jobschedule" and not in_schedule:
        raise InvalidProperty("poolInfo.autoPoolSpecification.poolLifetimeOption", "jobschedule",
                              "A job that no job schedule created cannot have a pool that lives as long as "
                              "its job schedule.")
    v.environment_settings(body, "commonEnvironmentSettings")
    spec = {name: body[name] for name in KEPT_PROPERTIES if body.get(name) is not None}
    preparation = job_prep.parse(body)
    spec.update(preparation)
    if job_prep.PREP in preparation:
        fields["prep_wait"] = preparation[job_prep.PREP]["waitForSuccess"]
    return {"id": job_id, "fields": fields, "spec": spec, "pool_id": body["poolInfo"].get("poolId"),
            "auto_pool": auto_pool}


def add(ctx: Context, job: dict[str, Any], with_job: WithJob | None = None) -> None:
    """Store a job `parse_create` accepted, within the account's active-job quota; `with_job`
    stores what comes with it (its job manager task: service/job_manager.py) in the same
    transaction."""
    with ctx.engine.begin() as conn:
        insert_in(ctx, conn, job, with_job=with_job)
    ctx.signals.wake_provider()
    if with_job is not None:
        ctx.signals.wake_scheduler()


def insert_in(ctx: Context, conn: Connection, job: dict[str, Any], *, schedule_seq: int | None = None,
              pool_id: str | None = None, quota_checked: bool = False, with_job: WithJob | None = None) -> int:
    """Store a job within `conn`; its auto pool, if it asks for one and `pool_id` (a schedule's
    pool) does not name it, is created with it. Returns the job's seq. `quota_checked`: the
    caller made room within the active-job quota already (the schedule duty, once per pass)."""
    job_id, fields, spec = job["id"], job["fields"], job["spec"]
    now = clock.now()
    if conn.execute(select(jobs.c.seq).where(jobs.c.account == ctx.account,
                                             jobs.c.key == job_id.lower())).first():
        raise Conflict("The specified job already exists.", code="JobExists")
    if conn.execute(select(job_schedules.c.seq).where(job_schedules.c.account == ctx.account,
                                                      job_schedules.c.key == job_id.lower())).first():
        # Jobs and job schedules share one namespace of ids (semantics §2.4).
        raise Conflict("A job schedule with the same id as the specified job exists.",
                       code="JobScheduleWithSameIdExists")
    if not quota_checked:
        quotas.check_active_jobs(ctx, conn)
    pool_id = pool_id or job["pool_id"]
    if pool_id is None:
        pool_id = auto_pools.create_in(ctx, conn, job["auto_pool"])
    seq = int(conn.execute(insert(jobs).values(
        account=ctx.account, id=job_id, key=job_id.lower(), state=JobState.ACTIVE,
        priority=fields.get("priority", 0), pool_key=pool_id.lower(),
        max_parallel_tasks=fields.get("max_parallel_tasks", -1), spec=spec, prep_wait=fields.get("prep_wait"),
        execution_info={"startTime": clock.iso(now), "poolId": pool_id}, schedule_seq=schedule_seq,
        etag=clock.new_etag(), last_modified=now, creation_time=now,
        state_transition_time=now)).inserted_primary_key[0])  # type: ignore[index]
    if with_job is not None:
        with_job(conn, load(conn, ctx, job_id), now)
    return seq


def get(ctx: Context, job_id: str) -> Any:
    """The job's row, as the API shows it (shoal/api/render.py)."""
    with ctx.engine.connect() as conn:
        return load(conn, ctx, job_id)


def etag_of(ctx: Context, job_id: str) -> tuple[str, Any]:
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, job_id)
        return row.etag, row.last_modified


def list_all(ctx: Context) -> list[Any]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(jobs).where(jobs.c.account == ctx.account).order_by(jobs.c.key)).all())


def _guard_changeable(row: Any) -> None:
    if row.state == JobState.DELETING:
        raise Conflict("The specified job has been marked for deletion and is being reclaimed.",
                       code="JobBeingDeleted")
    if row.state in (JobState.COMPLETED, JobState.TERMINATING):
        raise Conflict("The specified job is already in a completed state.", code="JobCompleted")


def _set_state(conn: Connection, row: Any, state: str, **values: Any) -> None:
    now = clock.now()
    conn.execute(update(jobs).where(jobs.c.seq == row.seq).values(
        state=state, previous_state=row.state, previous_state_transition_time=row.state_transition_time,
        state_transition_time=now, etag=clock.new_etag(), last_modified=now, **values))


def _apply_update(ctx: Context, job_id: str, body: Any, *, replace: bool) -> None:
    body = v.require_object(body)
    request_body.check(body, "job.replace" if replace else "job.patch")
    request_body.refuse_unsupported(body, UNSUPPORTED_ON_UPDATE)
    if replace and body.get("poolInfo") is None:
        # PUT replaces the whole job and a job always has a pool (JobUpdateParameter requires it).
        raise MissingProperty("poolInfo")
    # An auto-pool job's poolInfo may be sent back as it is (a GET, changed, PUT back); it is
    # compared with the job's own below, never applied.
    auto_pool_info = auto_pools.given_in(body)
    if auto_pool_info is not None:
        body = {**body, "poolInfo": None}
    fields = _validate_mutable(body)
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, job_id)
        _guard_changeable(row)
        if auto_pool_info is not None:
            auto_pools.check_unchanged(row, auto_pool_info)
        if "pool_key" in fields and fields["pool_key"] != row.pool_key and row.state != JobState.DISABLED:
            raise Conflict("The pool of a job can only be changed while the job is disabled.",
                           code="JobNotDisabled")
        spec = dict(row.spec)
        for name in ("constraints", "poolInfo", "onAllTasksComplete", "metadata"):
            if name in body and body[name] is not None:
                spec[name] = body[name]
            elif replace and name not in ("poolInfo",):
                spec.pop(name, None)
        if replace:
            fields.setdefault("priority", 0)
            fields.setdefault("max_parallel_tasks", -1)
        if "pool_key" in fields and fields["pool_key"] != row.pool_key:
            fields["execution_info"] = {**row.execution_info, "poolId": body["poolInfo"]["poolId"]}
        now = clock.now()
        conn.execute(update(jobs).where(jobs.c.seq == row.seq).values(
            spec=spec, etag=clock.new_etag(), last_modified=now, **fields))
    ctx.signals.wake_scheduler()


def patch(ctx: Context, job_id: str, body: Any) -> None:
    _apply_update(ctx, job_id, body, replace=False)


def replace(ctx: Context, job_id: str, body: Any) -> None:
    _apply_update(ctx, job_id, body, replace=True)


def disable(ctx: Context, job_id: str, body: Any) -> None:
    body = v.require_object(body)
    request_body.check(body, "job.disable")
    if body.get("disableTasks") is None:
        raise MissingProperty("disableTasks")
    option = v.choice(body, "disableTasks", DISABLE_OPTIONS)
    assert option is not None  # required above
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, job_id)
        if row.state in (JobState.DISABLING, JobState.DISABLED):
            return
        if row.state != JobState.ACTIVE:
            raise Conflict(f"The specified job is in state {row.state} and cannot be disabled.",
                           code="JobNotActive")
        touched = disable_in(conn, row, option)
    for node_id in touched:
        ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()


def disable_in(conn: Connection, row: Any, option: str) -> set[str]:
    """active → disabling/disabled with the disableTasks option; returns the nodes whose tasks moved."""
    running = conn.execute(select(tasks).where(tasks.c.job_seq == row.seq,
                                               tasks.c.state == TaskState.RUNNING)).all()
    touched = transitions.stop_running(conn, running, option)
    transitions.refresh_node_busy(conn, touched)
    waiting = option == "wait" and bool(running)
    _set_state(conn, row, JobState.DISABLING if waiting else JobState.DISABLED, disable_option=option)
    return touched


def apply_task_failure_actions(ctx: Context, conn: Connection, actions: dict[int, str]) -> set[str]:
    """onTaskFailure=performexitoptionsjobaction: the jobAction of a failed task's exit options
    disables the job (as disable with requeue) or terminates it (reason TaskFailed). Returns the
    nodes to wake."""
    touched: set[str] = set()
    if not actions:
        return touched
    for row in conn.execute(select(jobs).where(jobs.c.seq.in_(list(actions)),
                                               jobs.c.state == JobState.ACTIVE)).all():
        if row.spec.get("onTaskFailure") != "performexitoptionsjobaction":
            continue
        if actions[row.seq] == "terminate":
            terminate_in(ctx, conn, row, "TaskFailed")
        elif actions[row.seq] == "disable":
            touched |= disable_in(conn, row, "requeue")
    return touched


def enable(ctx: Context, job_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, job_id)
        if row.state == JobState.ACTIVE:
            return
        if row.state not in (JobState.DISABLED, JobState.DISABLING):
            raise Conflict(f"The specified job is in state {row.state} and cannot be enabled.",
                           code="JobNotDisabled")
        _set_state(conn, row, JobState.ACTIVE, disable_option=None)
    ctx.signals.wake_scheduler()


def terminate(ctx: Context, job_id: str, body: Any, reason: str = "UserTerminate") -> None:
    body = v.require_object(body or {})
    request_body.check(body, "job.terminate")
    reason = v.string(body, "terminateReason", max_len=64) or reason
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, job_id)
        _guard_changeable(row)
        terminate_in(ctx, conn, row, reason)


def terminate_in(ctx: Context, conn: Connection, row: Any, reason: str) -> None:
    """terminating → completed: running tasks are killed; active tasks stay active, never to run.
    A job whose release task is owed on some node stays `terminating` until those have run
    (`finish_released_jobs`)."""
    running = conn.execute(select(tasks).where(tasks.c.job_seq == row.seq, tasks.c.state == TaskState.RUNNING)).all()
    touched = transitions.terminate(conn, running)
    transitions.refresh_node_busy(conn, touched)
    info = dict(row.execution_info)
    info["terminateReason"] = reason
    if job_prep_nodes.start_releases(conn, row):
        touched |= set(job_prep_nodes.nodes_owing(conn, row.seq))
        _set_state(conn, row, JobState.TERMINATING, execution_info=info)
    else:
        info["endTime"] = clock.iso(clock.now())
        _set_state(conn, row, JobState.COMPLETED, execution_info=info)
        _ended(ctx, conn, row)
    for node_id in touched:
        ctx.signals.wake_node(node_id)


def finish_released_jobs(ctx: Context, conn: Connection, job_seqs: list[int] | None = None) -> None:
    """A terminating job completes once no node that is still there owes it its release task
    (whether the releases succeeded or not)."""
    query = select(jobs).where(jobs.c.account == ctx.account, jobs.c.state == JobState.TERMINATING)
    if job_seqs is not None:
        if not job_seqs:
            return
        query = query.where(jobs.c.seq.in_(job_seqs))
    for row in conn.execute(query).all():
        if job_prep_nodes.releases_owed(conn, row.seq):
            continue
        info = {**row.execution_info, "endTime": clock.iso(clock.now())}
        conn.execute(update(jobs).where(jobs.c.seq == row.seq).values(
            state=JobState.COMPLETED, previous_state=row.state,
            previous_state_transition_time=row.state_transition_time, state_transition_time=clock.now(),
            etag=clock.new_etag(), last_modified=clock.now(), execution_info=info))
        _ended(ctx, conn, row)


def _ended(ctx: Context, conn: Connection, row: Any) -> None:
    """A job completed or is being deleted: its auto pool goes (unless kept alive), and its
    schedule may run its next job."""
    auto_pools.job_ended(ctx, conn, row)
    if row.schedule_seq is not None:
        conn.execute(update(job_schedules).where(job_schedules.c.seq == row.schedule_seq,
                                                 job_schedules.c.active_job_seq == row.seq)
                     .values(active_job_seq=None, due_at=ctx.timebase.now()))


def delete_job(ctx: Context, job_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, job_id)
        touched = delete_in(ctx, conn, row)
    for node_id in touched:
        ctx.signals.wake_node(node_id)
    ctx.signals.wake_provider()


def delete_in(ctx: Context, conn: Connection, row: Any) -> set[str]:
    """Mark a job deleting within `conn` (its running tasks killed); the nodes to wake."""
    if row.state == JobState.DELETING:
        return set()
    running = conn.execute(select(tasks).where(tasks.c.job_seq == row.seq,
                                               tasks.c.state == TaskState.RUNNING)).all()
    touched = transitions.terminate(conn, running)
    transitions.refresh_node_busy(conn, touched)
    if row.state not in (JobState.COMPLETED, JobState.TERMINATING) and job_prep_nodes.start_releases(conn, row):
        # Deleting an active job runs its release tasks first (its folders go after them).
        touched |= set(job_prep_nodes.nodes_owing(conn, row.seq))
    _set_state(conn, row, JobState.DELETING)
    if row.state != JobState.COMPLETED:
        _ended(ctx, conn, row)
    return set(touched)


def task_counts(ctx: Context, job_id: str) -> dict[str, Any]:
    """The job's counters (kept by the store in the transaction of every task change): O(1).
    A completed task counts as succeeded or failed only by its result: one terminated before it
    ever ran has neither."""
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, job_id)
        counters = counts_of(conn, [row.seq]).get(row.seq)
    counts = {name: int(getattr(counters, name, 0) or 0) for name in COUNT_BUCKETS}
    slots = {name: int(getattr(counters, f"{name}_slots", 0) or 0) for name in COUNT_BUCKETS}
    return {"taskCounts": counts, "taskSlotCounts": slots}


COUNT_BUCKETS = ("active", "running", "completed", "succeeded", "failed")


def counts_of(conn: Connection, job_seqs: list[int]) -> dict[int, Any]:
    """The counter rows of some jobs, by job seq."""
    if not job_seqs:
        return {}
    rows = conn.execute(select(job_task_counts).where(job_task_counts.c.job_seq.in_(job_seqs))).all()
    return {row.job_seq: row for row in rows}


def finish_all_complete_jobs(ctx: Context, conn: Connection, job_seqs: list[int] | None = None) -> None:
    """onAllTasksComplete=terminatejob: a job whose tasks are all completed terminates."""
    query = (select(jobs, job_task_counts.c.active, job_task_counts.c.running)
             .join(job_task_counts, job_task_counts.c.job_seq == jobs.c.seq)
             .where(jobs.c.account == ctx.account, jobs.c.state == JobState.ACTIVE))
    if job_seqs is not None:
        if not job_seqs:
            return
        query = query.where(jobs.c.seq.in_(job_seqs))
    for row in conn.execute(query).all():
        if _job_manager_ended(conn, row):
            terminate_in(ctx, conn, row, "JMComplete")
            continue
        if row.spec.get("onAllTasksComplete") != "terminatejob":
            continue
        if row.active + row.running == 0:
            terminate_in(ctx, conn, row, "AllTasksComplete")


def _job_manager_ended(conn: Connection, row: Any) -> bool:
    """killJobOnCompletion: the job's manager has completed, finally (retries exhausted or not
    needed), whatever its result: one index seek (uq_tasks_job_key), only for jobs with one."""
    manager = row.spec.get("jobManagerTask")
    if not manager or not manager.get("killJobOnCompletion", True):
        return False
    state = conn.execute(select(tasks.c.state).where(tasks.c.job_seq == row.seq,
                                                     tasks.c.key == manager["id"].lower())).scalar()
    return state == TaskState.COMPLETED


# Tasks of deleted jobs removed per pass: one pass is one bounded transaction on the writer,
# however many tasks the job had.
REAP_TASKS_PER_PASS = 5000


class EmptiedJob(NamedTuple):
    seq: int
    id: str
    node_ids: list[str]  # the nodes of its pool, which may hold its folder


def reap_deleted(ctx: Context, ordered: set[int]) -> list[EmptiedJob]:
    """Remove up to REAP_TASKS_PER_PASS tasks of jobs being deleted; returns the jobs left with
    none, whose folders the caller orders deleted on their pool's nodes (the nodes are read
    only for jobs not in ``ordered``) before `remove_deleted_jobs` drops their records."""
    emptied = []
    budget = REAP_TASKS_PER_PASS
    with ctx.engine.begin() as conn:
        for row in conn.execute(select(jobs.c.seq, jobs.c.id, jobs.c.pool_key)
                                .where(jobs.c.account == ctx.account, jobs.c.state == JobState.DELETING)).all():
            if budget > 0:
                chunk = select(tasks.c.seq).where(tasks.c.job_seq == row.seq).limit(budget).scalar_subquery()
                budget -= conn.execute(delete(tasks).where(tasks.c.seq.in_(chunk))).rowcount
            if conn.execute(select(tasks.c.seq).where(tasks.c.job_seq == row.seq).limit(1)).first() is not None:
                continue
            if job_prep_nodes.releases_owed(conn, row.seq):
                continue  # its folders go once its release tasks have run
            node_ids: list[str] = []
            if row.seq not in ordered:
                node_ids = list(conn.execute(
                    select(nodes.c.id).join(pools, pools.c.seq == nodes.c.pool_seq)
                    .where(pools.c.account == ctx.account, pools.c.key == row.pool_key)).scalars())
            emptied.append(EmptiedJob(row.seq, row.id, node_ids))
    return emptied


def remove_deleted_jobs(ctx: Context, seqs: list[int]) -> None:
    """Drop the records of deleted jobs whose tasks and folders are gone."""
    if seqs:
        with ctx.engine.begin() as conn:
            conn.execute(delete(jobs).where(jobs.c.seq.in_(seqs), jobs.c.state == JobState.DELETING))


def finish_waiting_disables(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        for row in conn.execute(select(jobs, job_task_counts.c.running)
                                .join(job_task_counts, job_task_counts.c.job_seq == jobs.c.seq)
                                .where(jobs.c.account == ctx.account, jobs.c.state == JobState.DISABLING)).all():
            if row.running == 0:
                _set_state(conn, row, JobState.DISABLED)


def enforce_max_wall_clock(ctx: Context) -> None:
    """A job whose constraints.maxWallClockTime has passed since it was created terminates
    with reason MaxWallClockTimeExpiry (semantics §2.4)."""
    now = clock.now()
    with ctx.engine.begin() as conn:
        for row in conn.execute(select(jobs).where(jobs.c.account == ctx.account,
                                                   jobs.c.state.in_((JobState.ACTIVE, JobState.DISABLED,
                                                                     JobState.DISABLING)))).all():
            limit = (row.spec.get("constraints") or {}).get("maxWallClockTime")
            if not limit:
                continue
            created = clock.as_utc(row.creation_time)
            assert created is not None
            if now - created > clock.parse_duration(limit):
                terminate_in(ctx, conn, row, "MaxWallClockTimeExpiry")


def counts_of_job(ctx: Context, job_id: str) -> Any:
    """The job's counter row (None before its first task): what `task_counts` reads."""
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, job_id)
        return counts_of(conn, [row.seq]).get(row.seq)
