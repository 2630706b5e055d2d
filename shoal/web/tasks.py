"""The task page: state, execution info, where it ran, why it has not started (service/why.py),
and the viewer of its stdout and stderr, which tails them through shoal/web/files.py."""

from __future__ import annotations

from typing import Any

from shoal import clock
from shoal.model.states import TaskState
from shoal.service import tasks as task_service
from shoal.service import why
from shoal.service.context import Context
from shoal.web.shared import Page, View

TAILED_FILES = ("stdout.txt", "stderr.txt")


def task_page(ctx: Context, view: View) -> Page:
    job_id, task_id = view.path["job_id"], view.path["task_id"]
    record = task_service.get(ctx, job_id, task_id)
    row = record.row
    spec = row.spec or {}
    explanation = why.explain(ctx, job_id, task_id) if row.state == TaskState.ACTIVE else None
    info: dict[str, Any] = dict(row.execution_info or {})
    return Page("task.html", {
        "job_id": record.job.id,
        "task": {"id": row.id, "state": row.state, "command_line": spec.get("commandLine", ""),
                 "display_name": spec.get("displayName"), "required_slots": row.required_slots,
                 "created": clock.iso(row.creation_time), "state_time": clock.iso(row.state_transition_time),
                 "previous_state": row.previous_state},
        "info": info, "failure": info.pop("failureInfo", None), "node_info": row.node_info or {},
        "why": explanation, "files": TAILED_FILES, "live": row.state != TaskState.COMPLETED,
    })
