"""Tasks: adding (one or a collection), reading, changing and ending tasks (semantics §2.5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from shoal import clock
from shoal import odata as odata_sql
from shoal.agent.layout import task_folder
from shoal.config import MAX_COLLECTION_BODY_BYTES, MAX_TASKS_PER_COLLECTION
from shoal.errors import (
    BatchError,
    BodyTooLarge,
    Conflict,
    InvalidProperty,
    MissingProperty,
    NotFound,
)
from shoal.model.states import JobState, TaskState
from shoal.service import applications as application_service
from shoal.service import (
    dependencies,
    exit_conditions,
    job_prep,
    multi_instance,
    request_body,
    subtasks,
    task_files,
    task_outputs,
    transitions,
)
from shoal.service import jobs as job_service
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import jobs, nodes, task_attempts, tasks

# Properties a client may set that Shoal keeps verbatim in `spec` (and shows again).
KEPT_PROPERTIES = ("displayName", "commandLine", "environmentSettings", "affinityInfo", "constraints", "userIdentity",
                   "exitConditions", "dependsOn", "resourceFiles", "outputFiles", "authenticationTokenSettings",
                   "multiInstanceSettings", "applicationPackageReferences")
# The scopes a task authentication token can be given (Batch's AccessScope): its own job.
TOKEN_ACCESS_SCOPES = ("job",)


def task_not_found() -> NotFound:
    return NotFound("The specified task does not exist.", code="TaskNotFound")


# Accepted by the API but not carried out by Shoal's nodes yet: refused when given (non-empty),
# never stored and ignored. An empty list is what some clients send for "none", so it passes.
UNSUPPORTED = ("containerSettings",)


def _validate(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    request_body.check(body, "task.create")
    task_id = v.resource_id(body)
    v.command_line(body)
    v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    required_slots = v.integer(body, "requiredSlots", default=1, minimum=1)
    v.environment_settings(body)
    constraints = v.obj(body, "constraints")
    if constraints is not None:
        _validate_constraints(constraints)
    v.user_identity(body)
    task_files.resource_files(body)
    task_files.output_files(body)
    request_body.refuse_unsupported(body, UNSUPPORTED)
    packages = application_service.parse_references(body)
    _token_settings(body)
    exit_conditions.validate(body)
    instances = multi_instance.parse(body, required_slots)
    depends = dependencies.parse(body, task_id)
    spec = {name: body[name] for name in KEPT_PROPERTIES if body.get(name) is not None}
    if depends is None:
        spec.pop("dependsOn", None)  # an empty dependsOn asks for nothing
    if packages:
        spec["applicationPackageReferences"] = packages
    else:
        spec.pop("applicationPackageReferences", None)
    return {"id": task_id, "spec": spec, "required_slots": required_slots,
            "dependencies": depends[0] if depends else None, "instances": instances}


def _token_settings(body: dict[str, Any]) -> None:
    """`authenticationTokenSettings.access`: a list of scopes, of which Batch knows one, `job`
    (shoal/api/auth.py then allows the token the task's job and nothing else)."""
    settings = v.obj(body, "authenticationTokenSettings")
    access = None if settings is None else settings.get("access")
    if access is None:
        return
    name = "authenticationTokenSettings.access"
    if not isinstance(access, list):
        raise InvalidProperty(name, access, "The value must be a list of access scopes.")
    for scope in access:
        if not isinstance(scope, str) or scope.lower() not in TOKEN_ACCESS_SCOPES:
            raise InvalidProperty(name, scope, f"The access scopes are {', '.join(TOKEN_ACCESS_SCOPES)}.")


def wants_job_token(spec: dict[str, Any]) -> bool:
    """Whether a task's attempts get AZ_BATCH_AUTHENTICATION_TOKEN."""
    access = (spec.get("authenticationTokenSettings") or {}).get("access") or []
    return any(isinstance(scope, str) and scope.lower() == "job" for scope in access)


def _refusal_by_job(job: Any, task: dict[str, Any], pool_spec: dict[str, Any] | None = None) -> BatchError | None:
    """What the task's job says against its dependencies or exit options, if anything."""
    reserved = job_prep.reserved_id_conflict(job.spec, task["id"])
    if reserved is not None:
        return Conflict("A task cannot have the id of its job's preparation or release task.", code=reserved)
    if task["dependencies"] is not None and not job.spec.get("usesTaskDependencies"):
        return Conflict("The job does not use task dependencies: a task of it cannot depend on others.",
                        code="TaskDependenciesNotSpecifiedOnJob")
    refusal = multi_instance.refusal_by_pool(job, task.get("instances", 0), pool_spec)
    if refusal is not None:
        return refusal
    named = exit_conditions.names_job_action(task["spec"].get("exitConditions"))
    if named is not None and job.spec.get("onTaskFailure") != "performexitoptionsjobaction":
        return InvalidProperty(named[0], named[1], "A jobAction takes effect only on a job whose onTaskFailure is "
                               "performexitoptionsjobaction.")
    return None


def _refusal_by_store(conn: Connection, job: Any, task: dict[str, Any]) -> BatchError | None:
    """What the account's applications say against the task's package references."""
    try:
        application_service.check_references(conn, job.account, task["spec"].get("applicationPackageReferences"),
                                             for_pool=False)
    except BatchError as error:
        return error
    return None


def _with_dependencies(conn: Connection, job: Any, task: dict[str, Any], values: dict[str, Any]) -> Any:
    """The task's row values with its blocked count, and the edges to store once it has a seq."""
    values["id_number"] = dependencies.id_number(task["id"])
    values["unsatisfied"] = 0
    if task["dependencies"] is None:
        return None
    edges = dependencies.prepare(conn, job.seq, task["dependencies"])
    values["unsatisfied"] = edges.unsatisfied
    return edges


def _validate_constraints(constraints: dict[str, Any]) -> None:
    v.duration(constraints, "maxWallClockTime", path="constraints.maxWallClockTime")
    v.duration(constraints, "retentionTime", path="constraints.retentionTime")
    v.integer(constraints, "maxTaskRetryCount", minimum=-1, path="constraints.maxTaskRetryCount")


def _job_for_adding(conn: Connection, ctx: Context, job_id: str) -> Any:
    job = job_service.load(conn, ctx, job_id)
    if job.state in (JobState.COMPLETED, JobState.TERMINATING):
        raise Conflict("The specified job is already in a completed state.", code="JobCompleted")
    if job.state == JobState.DELETING:
        raise Conflict("The specified job has been marked for deletion and is being reclaimed.",
                       code="JobBeingDeleted")
    return job


def _row_values(job: Any, task: dict[str, Any], now: Any) -> dict[str, Any]:
    return {"job_seq": job.seq, "id": task["id"], "key": task["id"].lower(), "state": TaskState.ACTIVE,
            "required_slots": task["required_slots"], "attempt": 0, "spec": task["spec"],
            "instances": task.get("instances", 0),
            "execution_info": {"retryCount": 0, "requeueCount": 0}, "etag": clock.new_etag(),
            "last_modified": now, "creation_time": now, "state_transition_time": now}


def create(ctx: Context, job_id: str, body: Any) -> dict[str, Any]:
    return add(ctx, job_id, parse_task(body))


def parse_task(body: Any) -> dict[str, Any]:
    """Validate one task body (pure: the API may run it off the event loop)."""
    return _validate(body)


def add(ctx: Context, job_id: str, task: dict[str, Any]) -> dict[str, Any]:
    """Store a task `parse_task` accepted."""
    now = clock.now()
    with ctx.engine.begin() as conn:
        job = _job_for_adding(conn, ctx, job_id)
        if conn.execute(select(tasks.c.seq).where(tasks.c.job_seq == job.seq,
                                                  tasks.c.key == task["id"].lower())).first():
            raise Conflict("The specified task already exists.", code="TaskExists")
        values = insert_new(conn, job, task, now)
    ctx.signals.wake_scheduler()
    return {"etag": values["etag"], "last_modified": now, "id": task["id"]}


def insert_new(conn: Connection, job: Any, task: dict[str, Any], now: Any) -> dict[str, Any]:
    """Store a task `parse_task` accepted in a job known to take it (the job manager too); its row values."""
    refusal = (_refusal_by_job(job, task, multi_instance.pool_spec_of(conn, job, [task]))
               or _refusal_by_store(conn, job, task))
    if refusal is not None:
        raise refusal
    values = _row_values(job, task, now)
    edges = _with_dependencies(conn, job, task, values)
    inserted = conn.execute(insert(tasks).values(**values)).inserted_primary_key
    if edges is not None and inserted is not None:
        dependencies.store(conn, inserted[0], edges)
        dependencies.check_no_cycle(conn, job.seq, task["id"], task["dependencies"])
    values["seq"] = inserted[0] if inserted is not None else None
    return values


def create_collection(ctx: Context, job_id: str, body: Any, body_size: int) -> list[dict[str, Any]]:
    return add_collection(ctx, job_id, parse_collection(body, body_size))


def parse_collection(body: Any, body_size: int) -> list[dict[str, Any]]:
    """Validate a whole task collection (pure: the API may run it off the event loop)."""
    if body_size > MAX_COLLECTION_BODY_BYTES:
        raise BodyTooLarge("The request body is too large and exceeds the maximum permissible limit.",
                           values={"MaxLimit": str(MAX_COLLECTION_BODY_BYTES)})
    body = v.require_object(body)
    if set(body) - {"value"}:
        raise request_body.UnknownProperty(sorted(set(body) - {"value"})[0], sorted(set(body) - {"value"})[0],
                                           "task collection")
    items = body.get("value")
    if items is None:
        raise MissingProperty("value")
    if not isinstance(items, list):
        raise InvalidProperty("value", items, "The value must be an array of tasks.")
    if len(items) > MAX_TASKS_PER_COLLECTION:
        raise BodyTooLarge("The number of tasks in the collection exceeds the maximum permissible limit.",
                           values={"MaxLimit": str(MAX_TASKS_PER_COLLECTION)})
    # The whole collection is validated before anything is stored: one bad task is a 400 for
    # the request, and stored state stays as it was.
    parsed = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            task = _validate(item)
        except BatchError as exc:
            exc.values.setdefault("TaskIndex", str(index))
            raise
        key = task["id"].lower()
        if key in seen:
            raise InvalidProperty("value", task["id"], "The collection contains the same task id twice.")
        seen.add(key)
        parsed.append(task)
    dependencies.check_request_size(task["dependencies"] for task in parsed)
    return parsed


def add_collection(ctx: Context, job_id: str, parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store the tasks `parse_collection` accepted; ids the job already has are per-task errors."""
    seen = {task["id"].lower() for task in parsed}
    now = clock.now()
    results: list[dict[str, Any]] = []
    with ctx.engine.begin() as conn:
        job = _job_for_adding(conn, ctx, job_id)
        existing = set(conn.execute(select(tasks.c.key).where(
            tasks.c.job_seq == job.seq, tasks.c.key.in_(list(seen)))).scalars().all())
        rows = []
        edges_of: dict[str, Any] = {}
        pool_spec = multi_instance.pool_spec_of(conn, job, parsed)
        for task in parsed:
            refusal = Conflict("The specified task already exists.", code="TaskExists") \
                if task["id"].lower() in existing else (_refusal_by_job(job, task, pool_spec)
                                                        or _refusal_by_store(conn, job, task))
            if refusal is not None:
                results.append({"status": "clienterror", "taskId": task["id"], "error": {
                    "code": refusal.code, "message": {"lang": "en-US", "value": refusal.message},
                    **({"values": [{"key": k, "value": val} for k, val in refusal.values.items()]}
                       if refusal.values else {})}})
                continue
            values = _row_values(job, task, now)
            edges = _with_dependencies(conn, job, task, values)
            if edges is not None:
                edges_of[values["key"]] = edges
            rows.append(values)
            results.append({"status": "success", "taskId": task["id"], "eTag": values["etag"],
                            "lastModified": clock.iso(now),
                            "location": f"{ctx.base_url}/jobs/{job.id}/tasks/{task['id']}"})
        if rows:
            conn.execute(insert(tasks), rows)
        if edges_of:
            for key, seq in conn.execute(select(tasks.c.key, tasks.c.seq).where(
                    tasks.c.job_seq == job.seq, tasks.c.key.in_(list(edges_of)))).all():
                dependencies.store(conn, seq, edges_of[key])
            # After all are stored, so tasks of one collection that wait for each other are seen
            # (the whole request is refused then, and nothing of it is kept).
            budget = dependencies.WalkBudget()
            for task in parsed:
                if task["id"].lower() in edges_of:
                    dependencies.check_no_cycle(conn, job.seq, task["id"], task["dependencies"], budget)
    ctx.signals.wake_scheduler()
    return results


def load(conn: Connection, ctx: Context, job_id: str, task_id: str) -> tuple[Any, Any]:
    job = job_service.load(conn, ctx, job_id)
    row = conn.execute(select(tasks).where(tasks.c.job_seq == job.seq, tasks.c.key == task_id.lower())).first()
    if row is None:
        raise task_not_found()
    return job, row


class TaskRecord(NamedTuple):
    """A task as the API shows it (shoal/api/render.py): its job's row and its own."""

    job: Any
    row: Any


def get(ctx: Context, job_id: str, task_id: str) -> TaskRecord:
    with ctx.engine.connect() as conn:
        return TaskRecord(*load(conn, ctx, job_id, task_id))


def subtasks_of(ctx: Context, job_id: str, task_id: str) -> list[dict[str, Any]]:
    """Task_ListSubtasks: the instances of a multi-instance task's current or last attempt
    (none for an ordinary task, or one that has not run)."""
    with ctx.engine.connect() as conn:
        _job, row = load(conn, ctx, job_id, task_id)
        return subtasks.list_of(conn, row.seq) if row.instances else []


def etag_of(ctx: Context, job_id: str, task_id: str) -> tuple[str, Any]:
    with ctx.engine.connect() as conn:
        _job, row = load(conn, ctx, job_id, task_id)
        return row.etag, row.last_modified


# What a task list may filter on in SQL: the wire properties that are store columns, by their
# lower-cased OData path (see shoal/api/odata.py SqlProperty for what each kind promises).
FILTER_PROPERTIES = {
    "id": odata_sql.SqlProperty(tasks.c.id, "text"),
    "state": odata_sql.SqlProperty(tasks.c.state, "text"),
    "previousstate": odata_sql.SqlProperty(tasks.c.previous_state, "text", nullable=True),
    "requiredslots": odata_sql.SqlProperty(tasks.c.required_slots, "int"),
    "creationtime": odata_sql.SqlProperty(tasks.c.creation_time, "time"),
    "statetransitiontime": odata_sql.SqlProperty(tasks.c.state_transition_time, "time"),
    "lastmodified": odata_sql.SqlProperty(tasks.c.last_modified, "time"),
    # `outcome` is executionInfo.result, stored with every completion and cleared on reactivation.
    "executioninfo/result": odata_sql.SqlProperty(tasks.c.outcome, "text", nullable=True),
    "executioninfo/exitcode": odata_sql.SqlProperty(tasks.c.execution_info, "json_int", key="exitCode"),
    "executioninfo/retrycount": odata_sql.SqlProperty(tasks.c.execution_info, "json_int", key="retryCount"),
    "executioninfo/requeuecount": odata_sql.SqlProperty(tasks.c.execution_info, "json_int", key="requeueCount"),
}

# Work one list request may do before it answers with what it found and a continuation token:
# index entries walked when SQL decides, rows turned into their wire form when Python decides.
MAX_INDEX_ENTRIES_PER_PAGE = 100_000
MAX_EVALUATED_ROWS_PER_PAGE = 2_000
_SQL_WINDOW = 20_000
_PYTHON_WINDOW = 1_000


def list_page(ctx: Context, job_id: str, *, after_seq: int, limit: int, conditions: Sequence[Any] = (),
              predicate: Callable[[TaskRecord], bool] | None = None,
              index_served: bool = False) -> tuple[list[TaskRecord], int | None]:
    """Tasks in insertion order after `after_seq` that meet the SQL `conditions` and `predicate`
    (over the record: the API judges the wire form); returns the page and the seq to continue
    from (None at the end).

    Every query walks the job's tasks in seq order through an index, from the token on (keyset
    paging, never an offset). Without a filter, or when `index_served` (the conditions are what
    an index seeks, like a state), one query answers the page. Otherwise the job is examined in
    windows of index order, within a bound per request: a page may come back short, with a token
    to go on from where this request stopped."""
    with ctx.engine.connect() as conn:
        job = job_service.load(conn, ctx, job_id)
        in_job = tasks.c.job_seq == job.seq
        if predicate is None and (not conditions or index_served):
            rows = conn.execute(select(tasks).where(in_job, *conditions, tasks.c.seq > after_seq)
                                .order_by(tasks.c.seq).limit(limit + 1)).all()
            page = rows[:limit]
            return [TaskRecord(job, row) for row in page], (page[-1].seq if len(rows) > limit else None)
        return _list_in_windows(conn, ctx, job, after_seq, limit, list(conditions), predicate)


def _list_in_windows(conn: Connection, ctx: Context, job: Any, cursor: int, limit: int, conditions: list[Any],
                     predicate: Callable[[TaskRecord], bool] | None) -> tuple[list[TaskRecord], int | None]:
    in_job = tasks.c.job_seq == job.seq
    window = _SQL_WINDOW if predicate is None else _PYTHON_WINDOW
    out: list[TaskRecord] = []
    walked = evaluated = 0
    while walked < MAX_INDEX_ENTRIES_PER_PAGE and evaluated < MAX_EVALUATED_ROWS_PER_PAGE:
        # The seq `window` entries on (None past the job's last task): an index-only walk.
        upper = conn.execute(select(tasks.c.seq).where(in_job, tasks.c.seq > cursor).order_by(tasks.c.seq)
                             .offset(window - 1).limit(1)).scalar()
        bounds = [tasks.c.seq > cursor] + ([tasks.c.seq <= upper] if upper is not None else [])
        query = select(tasks).where(in_job, *conditions, *bounds).order_by(tasks.c.seq)
        if predicate is None:
            query = query.limit(limit - len(out))
        rows = conn.execute(query).all()
        evaluated += len(rows)
        for row in rows:
            record = TaskRecord(job, row)
            if predicate is None or predicate(record):
                out.append(record)
                if len(out) == limit:
                    return out, (row.seq if _any_after(conn, job.seq, row.seq) else None)
        if upper is None:
            return out, None
        walked += window
        cursor = upper
    return out, cursor


def _any_after(conn: Connection, job_seq: int, seq: int) -> bool:
    return conn.execute(select(tasks.c.seq).where(tasks.c.job_seq == job_seq, tasks.c.seq > seq)
                        .order_by(tasks.c.seq).limit(1)).first() is not None


def update_constraints(ctx: Context, job_id: str, task_id: str, body: Any) -> None:
    body = v.require_object(body)
    request_body.check(body, "task.update")
    constraints = v.obj(body, "constraints") or {}
    _validate_constraints(constraints)
    with ctx.engine.begin() as conn:
        _job, row = load(conn, ctx, job_id, task_id)
        spec = dict(row.spec)
        if constraints:
            spec["constraints"] = constraints
        else:
            spec.pop("constraints", None)
        conn.execute(update(tasks).where(tasks.c.seq == row.seq).values(
            spec=spec, etag=clock.new_etag(), last_modified=clock.now()))


def terminate(ctx: Context, job_id: str, task_id: str) -> None:
    with ctx.engine.begin() as conn:
        job, row = load(conn, ctx, job_id, task_id)
        if row.state == TaskState.COMPLETED:
            return
        touched = transitions.terminate(conn, [row])
        transitions.refresh_node_busy(conn, touched)
        job_service.finish_all_complete_jobs(ctx, conn, [job.seq])
    for node_id in touched:
        ctx.signals.wake_node(node_id)
    ctx.signals.wake_scheduler()


def reactivate(ctx: Context, job_id: str, task_id: str) -> None:
    with ctx.engine.begin() as conn:
        job, row = load(conn, ctx, job_id, task_id)
        if job.state in (JobState.COMPLETED, JobState.TERMINATING, JobState.DELETING):
            raise Conflict("The job of the task is completed or being deleted.", code="JobCompleted")
        info = dict(row.execution_info)
        # Refused only for a task that has not completed or that succeeded: one terminated
        # before it ran (no result at all) may run again, as Azure allows.
        if row.state != TaskState.COMPLETED or info.get("result") == "success":
            raise Conflict("Only a completed task that did not succeed can be reactivated.",
                           code="TaskNotReactivatable")
        for name in ("exitCode", "failureInfo", "result", "endTime", "startTime"):
            info.pop(name, None)
        info["retryCount"] = 0
        now = clock.now()
        conn.execute(update(tasks).where(tasks.c.seq == row.seq).values(
            state=TaskState.ACTIVE, previous_state=row.state, previous_state_transition_time=row.state_transition_time,
            state_transition_time=now, execution_info=info, etag=clock.new_etag(), last_modified=now,
            retention_deadline=None, outcome=None, satisfies_dependents=None))
    ctx.signals.wake_scheduler()


def delete_task(ctx: Context, job_id: str, task_id: str) -> tuple[list[str], str, str]:
    """Returns (the nodes holding the task's folder: its own, and its subtasks' for a
    multi-instance task; job id, task id) for the caller to order the folders deleted
    (shoal.service.folder_orders)."""
    with ctx.engine.begin() as conn:
        job, row = load(conn, ctx, job_id, task_id)
        instance_nodes = subtasks.nodes_of(conn, row.seq) if row.instances else set()
        touched = transitions.terminate(conn, [row]) if row.state == TaskState.RUNNING else set()
        transitions.refresh_node_busy(conn, touched)
        # A task deleted on its own leaves its nodes' recentTasks (Shoal's reading; a deleted
        # job's tasks stay there, as recorded: see store.schema.task_attempts).
        conn.execute(delete(task_attempts).where(task_attempts.c.task_seq == row.seq))
        conn.execute(delete(tasks).where(tasks.c.seq == row.seq))
        # A deleted job manager leaves its job with none: SQLite may give its seq to a new task.
        conn.execute(update(jobs).where(jobs.c.seq == job.seq, jobs.c.manager_seq == row.seq).values(
            manager_seq=None, manager_exclusive=None, manager_dedicated_only=None))
        held = ({(row.node_info or {}).get("nodeId")} | instance_nodes) - {None}
        present = sorted(conn.execute(select(nodes.c.id).where(nodes.c.id.in_(held))).scalars()) if held else []
        job_service.finish_all_complete_jobs(ctx, conn, [job.seq])
    for touched_id in touched:
        ctx.signals.wake_node(touched_id)
    ctx.signals.wake_scheduler()
    return (present, job.id, row.id)


def node_of(ctx: Context, job_id: str, task_id: str) -> tuple[Any, str, list[task_outputs.KeptFile] | None]:
    """The node row holding a task's files and the task's directory on it; or, when that node is
    gone or cannot answer and copies of the task's output were kept, (None, directory, copies)."""
    with ctx.engine.connect() as conn:
        job, row = load(conn, ctx, job_id, task_id)
        node_id = (row.node_info or {}).get("nodeId")
        node = None
        if node_id:
            node = conn.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if task_outputs.serves_copies(node):
            kept = task_outputs.kept_files(conn, row.seq)
            if kept:
                return None, task_folder(job.id, row.id), kept
        if node is None:
            raise NotFound("The task has no files: it has not run on a node that still exists.",
                           code="FileNotFound")
        return node, task_folder(job.id, row.id), None


class ExpiredFolder(NamedTuple):
    seq: int
    deadline: datetime
    node_id: str | None  # None: the node is gone, and the folder with it
    job_id: str
    task_id: str


def expired_statement(after: tuple[datetime, int] | None, now: datetime, limit: int) -> Any:
    """The next ``limit`` completed tasks whose retention has passed: a walk of ix_tasks_retention
    from ``after``. It names no job, since a join on the account's jobs let SQLite walk every
    completed task of every job and sort them (`USE TEMP B-TREE`) once a lifecycle pass."""
    deadline = tasks.c.retention_deadline
    query = (select(tasks.c.seq, deadline, tasks.c.id, tasks.c.node_info, tasks.c.job_seq)
             .where(deadline.is_not(None), deadline < now, tasks.c.state == TaskState.COMPLETED)
             .order_by(deadline, tasks.c.seq).limit(limit))
    if after is not None:
        query = query.where(or_(deadline > after[0], and_(deadline == after[0], tasks.c.seq > after[1])))
    return query


def expired_folders(ctx: Context, after: tuple[datetime, int] | None,
                    limit: int) -> tuple[list[ExpiredFolder], tuple[datetime, int] | None]:
    """Up to ``limit`` completed tasks whose retentionTime has passed, in deadline order after
    ``after``, and where the next call resumes (None: the walk reached the end). Tasks of
    another account's jobs count toward ``limit`` and are stepped past."""
    with ctx.engine.connect() as conn:
        rows = conn.execute(expired_statement(after, clock.now(), limit)).all()
        job_seqs = {row.job_seq for row in rows}
        job_ids = dict(conn.execute(select(jobs.c.seq, jobs.c.id).where(
            jobs.c.seq.in_(job_seqs), jobs.c.account == ctx.account)).all()) if job_seqs else {}
        named = {(row.node_info or {}).get("nodeId") for row in rows} - {None}
        present = set(conn.execute(select(nodes.c.id).where(nodes.c.id.in_(named))).scalars()) if named else set()
    folders = [ExpiredFolder(row.seq, row.retention_deadline,
                             node_id if (node_id := (row.node_info or {}).get("nodeId")) in present else None,
                             job_ids[row.job_seq], row.id) for row in rows if row.job_seq in job_ids]
    return folders, (rows[-1].retention_deadline, rows[-1].seq) if len(rows) == limit else None


def folders_removed(ctx: Context, seqs: list[int]) -> None:
    """The folders of these tasks are gone (their retention passed): their output copies go too."""
    if seqs:
        with ctx.engine.begin() as conn:
            conn.execute(update(tasks).where(tasks.c.seq.in_(seqs)).values(retention_deadline=None))
            task_outputs.forget(conn, seqs)
