"""Job pages: the list with task-count bars (the job counters, never a count of tasks) and one
job's tasks, filtered and paged exactly as the REST task listing is (`api.tasks.page_of_tasks`):
a keyset walk of the job's index, the filter in SQL, whatever the job's size."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from shoal import clock, odata
from shoal.api.http import decode_token_text, encode_token
from shoal.api.tasks import page_of_tasks
from shoal.service import jobs as job_service
from shoal.service.context import Context
from shoal.web.shared import BadInput, Page, View

PAGE_SIZES = (10, 25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
TASK_STATES = ("active", "running", "completed")
RESULTS = ("success", "failure")
_INTEGER = re.compile(r"^-?\d{1,10}$")
BAR_WIDTH = 240
# Bar segments: (counter, css class); completed splits into succeeded and failed, and what is
# neither (terminated before it ran) gets a segment of its own.
BAR_PARTS = (("active", "c-active"), ("running", "c-running"), ("succeeded", "c-succeeded"),
             ("failed", "c-failed"), ("other", "c-other"))


def _counts(row: Any) -> dict[str, int]:
    counts = {name: int(getattr(row, name, 0) or 0) for name in job_service.COUNT_BUCKETS}
    counts["other"] = max(0, counts["completed"] - counts["succeeded"] - counts["failed"])
    return counts


def _pool_of(row: Any) -> str:
    return str(((row.spec or {}).get("poolInfo") or {}).get("poolId") or row.pool_key)


def count_bar(counts: dict[str, int]) -> list[dict[str, Any]]:
    """SVG rects of a task-count bar (attributes, not inline styles: the page's CSP allows none)."""
    total = sum(counts[name] for name, _css in BAR_PARTS)
    out, x = [], 0.0
    for name, css in BAR_PARTS:
        if not total or not counts[name]:
            continue
        width = counts[name] / total * BAR_WIDTH
        out.append({"x": f"{x:.2f}", "width": f"{width:.2f}", "css": css, "name": name, "count": counts[name]})
        x += width
    return out


def jobs_list(ctx: Context, _view: View) -> Page:
    rows = job_service.list_all(ctx)
    with ctx.engine.connect() as conn:
        counters = job_service.counts_of(conn, [row.seq for row in rows])
    listed = []
    for row in rows:
        counts = _counts(counters.get(row.seq))
        listed.append({"id": row.id, "state": row.state, "pool": _pool_of(row), "priority": row.priority,
                       "counts": counts, "bar": count_bar(counts)})
    return Page("jobs.html", {"jobs": listed, "bar_width": BAR_WIDTH})


def _integer(view: View, name: str) -> int | None:
    raw = view.query.get(name, "").strip()
    if not raw:
        return None
    if not _INTEGER.match(raw):
        raise BadInput(f"{name} must be a whole number.", values={"Name": name})
    return int(raw)


def filter_of(view: View) -> tuple[str, dict[str, str]]:
    """The OData $filter the form's fields stand for, and the fields as given (for the form)."""
    fields = {name: view.query.get(name, "") for name in ("state", "result", "exitcode", "minretries",
                                                          "minduration", "filter")}
    parts = []
    if fields["state"]:
        if fields["state"] not in TASK_STATES:
            raise BadInput("state must be one of " + ", ".join(TASK_STATES) + ".", values={"Name": "state"})
        parts.append(f"state eq '{fields['state']}'")
    if fields["result"]:
        if fields["result"] not in RESULTS:
            raise BadInput("result must be success or failure.", values={"Name": "result"})
        parts.append(f"executionInfo/result eq '{fields['result']}'")
    exit_code = _integer(view, "exitcode")
    if exit_code is not None:
        parts.append(f"executionInfo/exitCode eq {exit_code}")
    retries = _integer(view, "minretries")
    if retries is not None:
        parts.append(f"executionInfo/retryCount ge {retries}")
    if fields["filter"].strip():
        parts.append(f"({fields['filter']})")
    return " and ".join(parts), fields


def _seconds_run(info: dict[str, Any], now: datetime) -> float | None:
    """How long a task's last attempt ran (until now, while it runs); None before it started."""
    try:
        start = datetime.fromisoformat(info["startTime"])
        end = datetime.fromisoformat(info["endTime"]) if info.get("endTime") else now
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def duration_test(view: View) -> Callable[[Any], bool] | None:
    """The form's minimum duration as a test of a task record: the store has no column for it,
    so it is judged row by row within the listing's bounded windows (a page may come back short,
    with a token to go on)."""
    minimum = _integer(view, "minduration")
    if minimum is None:
        return None
    now = clock.now()

    def long_enough(record: Any) -> bool:
        seconds = _seconds_run(record.row.execution_info or {}, now)
        return seconds is not None and seconds >= minimum

    return long_enough


def _page_size(view: View) -> int:
    raw = view.query.get("size") or str(DEFAULT_PAGE_SIZE)
    if not raw.isdigit() or int(raw) not in PAGE_SIZES:
        raise BadInput("size must be one of " + ", ".join(map(str, PAGE_SIZES)) + ".", values={"Name": "size"})
    return int(raw)


def _task_line(record: Any) -> dict[str, Any]:
    row = record.row
    info = row.execution_info or {}
    return {"id": row.id, "state": row.state, "exit_code": info.get("exitCode"), "result": info.get("result"),
            "retries": info.get("retryCount", 0), "start": info.get("startTime"), "end": info.get("endTime"),
            "node": (row.node_info or {}).get("nodeId"), "created": clock.iso(row.creation_time),
            "seconds": _seconds_run(info, clock.now())}


def job_page(ctx: Context, view: View) -> Page:
    job_id = view.path["job_id"]
    text, fields = filter_of(view)
    size = _page_size(view)
    try:
        after = decode_token_text(view.query.get("page"))
    except Exception as exc:  # InvalidQuery: say it as the dashboard does
        raise BadInput("The page token is not valid.", values={"Name": "page"}) from exc
    try:
        node = odata.parse_filter(text) if text else None
    except (odata.ODataError, RecursionError) as exc:
        raise BadInput(f"The filter is not valid: {str(exc)[:200]}", values={"Name": "filter"}) from exc
    job = job_service.get(ctx, job_id)
    counts = _counts(job_service.counts_of_job(ctx, job_id))
    page, continuation = page_of_tasks(ctx, job_id, node, after, size, duration_test(view))
    kept = {name: value for name, value in fields.items() if value}
    if size != DEFAULT_PAGE_SIZE:
        kept["size"] = str(size)
    return Page("job.html", {
        "job": {"id": job.id, "state": job.state, "pool": _pool_of(job), "priority": job.priority},
        "counts": counts, "bar": count_bar(counts), "bar_width": BAR_WIDTH, "fields": fields, "size": size,
        "sizes": PAGE_SIZES, "states": TASK_STATES, "results": RESULTS, "tasks": [_task_line(r) for r in page],
        "next_query": urlencode({**kept, "page": encode_token(continuation)}) if continuation is not None else None,
        "first_query": urlencode(kept) if after else None, "filter_text": text,
    })
