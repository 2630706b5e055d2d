"""The job manager task (semantics §3.3): a task of its job, added with it, that may want its
node to itself (runExclusive), dedicated nodes only (allowLowPriorityNode=false), and whose
final completion terminates the job (killJobOnCompletion; `jobs.finish_all_complete_jobs`).

Jobs are created through here: the manager is validated as a task (`tasks.parse_task`) and
stored with the job in one transaction, and `tasks` imports `jobs`, so `jobs` cannot do it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, update

from shoal.errors import BatchError
from shoal.service import jobs as job_service
from shoal.service import tasks as task_service
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import jobs

# JobManagerTask's own properties, each defaulting to true; the rest of it is a task.
FLAGS = ("killJobOnCompletion", "runExclusive", "allowLowPriorityNode")


def parse_create(body: Any) -> dict[str, Any]:
    """`jobs.parse_create`, with the job manager validated as a task (pure, as that is)."""
    job = job_service.parse_create(body)
    manager = parse(body)
    if manager is not None:
        job["spec"]["jobManagerTask"] = manager["shown"]
        job["job_manager"] = manager["task"]
    return job


def add(ctx: Context, job: dict[str, Any]) -> None:
    """`jobs.add`, with the job manager (if any) stored as the job's first task."""
    manager = job.get("job_manager")
    if manager is None:
        job_service.add(ctx, job)
        return

    def store_manager(conn: Connection, row: Any, now: datetime) -> None:
        # The job's first task, so the oldest in its ready queue: the scheduler offers it first.
        values = task_service.insert_new(conn, row, manager, now)
        flags = manager["spec"]["jobManager"]
        conn.execute(update(jobs).where(jobs.c.seq == row.seq).values(
            manager_seq=values["seq"], manager_exclusive=flags["runExclusive"],
            manager_dedicated_only=not flags["allowLowPriorityNode"]))

    job_service.add(ctx, job, store_manager)


def parse(body: dict[str, Any]) -> dict[str, Any] | None:
    """The job manager as a task to add with the job and as the job shows it; None if not given.
    `request_body.check` has already held it to JobManagerTask's properties and types."""
    given = v.obj(body, "jobManagerTask")
    if given is None:
        return None
    flags = {name: v.boolean(given, name, default=True, path=f"jobManagerTask.{name}") for name in FLAGS}
    as_task = {name: value for name, value in given.items() if name not in FLAGS}
    try:
        task = task_service.parse_task(as_task)
    except BatchError as error:
        # The task's rules name its properties; the client sent them inside jobManagerTask.
        if "PropertyName" in error.values:
            error.values["PropertyName"] = f"jobManagerTask.{error.values['PropertyName']}"
        raise
    task["spec"]["jobManager"] = flags
    shown = {"id": task["id"], **{k: val for k, val in task["spec"].items() if k != "jobManager"}, **flags}
    if "requiredSlots" in given:
        shown["requiredSlots"] = task["required_slots"]
    return {"task": task, "shown": shown}
