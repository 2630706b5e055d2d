"""Task routes: /jobs/{job_id}/tasks, addtaskcollection and the task actions."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from shoal import odata
from shoal.api import listing, offload, render, versions
from shoal.api.http import (
    decode_token,
    empty_response,
    guard,
    json_response,
    max_results,
)
from shoal.service import tasks as task_service
from shoal.service import why
from shoal.service.context import Context


async def create_task(request: Request, ctx: Context) -> Response:
    job_id = request.path_params["job_id"]
    body, size = await versions.read_json(request, "task.create")
    task = await offload.validate(size, task_service.parse_task, body)
    created = task_service.add(ctx, job_id, task)
    return empty_response(request, 201, etag=created["etag"], last_modified=created["last_modified"],
                          location=f"{ctx.base_url}/jobs/{job_id}/tasks/{created['id']}")


async def add_collection(request: Request, ctx: Context) -> Response:
    body, size = await versions.read_json(request, "task.collection")
    parsed = await offload.validate(size, task_service.parse_collection, body, size)
    results = task_service.add_collection(ctx, request.path_params["job_id"], parsed)
    return json_response(request, {"value": results}, odata_type="taskaddresult")


async def list_tasks(request: Request, ctx: Context) -> Response:
    node = listing.parse_filter(request)
    fields = listing.select_fields(request)
    page, continuation = page_of_tasks(ctx, request.path_params["job_id"], node, decode_token(request),
                                       max_results(request))
    return listing.page_response(request, [render.task(ctx.base_url, record) for record in page], "tasks", fields,
                                 continuation, "task")


def page_of_tasks(ctx: Context, job_id: str, node: odata.Node | None, after_seq: int, limit: int,
                  also: Callable[[task_service.TaskRecord], bool] | None = None,
                  ) -> tuple[list[task_service.TaskRecord], int | None]:
    """One page of a job's tasks under a parsed $filter, as the REST listing and the dashboard
    page them: keyset paging on seq, the filter in SQL where the store can decide it; ``also``
    is a further test of each record that SQL cannot make (the dashboard's duration)."""
    # What the store can decide goes to SQL; only the rest is evaluated here, on the rows SQL lets by.
    conditions, rest = odata.split_for_sql(node, task_service.FILTER_PROPERTIES, ctx.engine.dialect.name)
    parts = odata.conjuncts(node)
    index_served = rest is None and bool(parts) and all(
        isinstance(odata.equality_literal(part, "state"), str) for part in parts)
    predicate = None if rest is None else _judged(ctx, odata.predicate_of(rest))
    if also is not None:
        judged = predicate
        predicate = also if judged is None else (lambda record: judged(record) and also(record))
    return task_service.list_page(ctx, job_id, after_seq=after_seq, limit=limit, conditions=conditions,
                                  predicate=predicate, index_served=index_served and predicate is None)


def _judged(ctx: Context, predicate: odata.Predicate) -> Callable[[task_service.TaskRecord], bool]:
    """What SQL could not decide of a $filter, judged on the task's wire form."""
    return lambda record: predicate(render.task(ctx.base_url, record))


def _ids(request: Request) -> tuple[str, str]:
    return request.path_params["job_id"], request.path_params["task_id"]


def _guard(request: Request, ctx: Context) -> None:
    guard(request, lambda: task_service.etag_of(ctx, *_ids(request)))


async def get_task(request: Request, ctx: Context) -> Response:
    etag, modified = task_service.etag_of(ctx, *_ids(request))
    guard(request, lambda: (etag, modified))
    return listing.single(request, render.task(ctx.base_url, task_service.get(ctx, *_ids(request))), "tasks/@Element",
                          modified, "task")


async def update_task(request: Request, ctx: Context) -> Response:
    body, _size = await versions.read_json(request, "task.update")
    _guard(request, ctx)
    task_service.update_constraints(ctx, *_ids(request), body)
    etag, modified = task_service.etag_of(ctx, *_ids(request))
    return empty_response(request, 200, etag=etag, last_modified=modified)


async def delete_task(request: Request, ctx: Context) -> Response:
    # On the loop, which alone touches the folder orders; the store work goes to the writer.
    def delete() -> tuple[list[str], str, str]:
        _guard(request, ctx)
        return task_service.delete_task(ctx, *_ids(request))

    node_ids, job_id, task_id = await request.state.runner.write(delete)
    # The folder goes by order to its nodes; kept in memory only, since the task's record is gone
    # (a server restart before the node acknowledges leaves the folder to the node's disk).
    for node_id in node_ids:
        if ctx.folder_orders.order_task_folder(node_id, job_id, task_id, None):
            ctx.signals.wake_node(node_id)
    return empty_response(request, 200)


async def terminate_task(request: Request, ctx: Context) -> Response:
    _guard(request, ctx)
    task_service.terminate(ctx, *_ids(request))
    etag, modified = task_service.etag_of(ctx, *_ids(request))
    return empty_response(request, 204, etag=etag, last_modified=modified)


async def reactivate_task(request: Request, ctx: Context) -> Response:
    _guard(request, ctx)
    task_service.reactivate(ctx, *_ids(request))
    etag, modified = task_service.etag_of(ctx, *_ids(request))
    return empty_response(request, 204, etag=etag, last_modified=modified)


async def subtasks(request: Request, ctx: Context) -> Response:
    return json_response(request, {"value": task_service.subtasks_of(ctx, *_ids(request))},
                         odata_type="subtaskinformations")


async def task_why(request: Request, ctx: Context) -> Response:
    """Beyond Azure: why an active task has not started (`shoal task why`)."""
    return json_response(request, why.explain(ctx, *_ids(request)))


ROUTES = [
    ("/jobs/{job_id}/tasks", ["POST"], create_task),
    ("/jobs/{job_id}/tasks", ["GET"], list_tasks),
    ("/jobs/{job_id}/addtaskcollection", ["POST"], add_collection),
    ("/jobs/{job_id}/tasks/{task_id}", ["GET"], get_task),
    ("/jobs/{job_id}/tasks/{task_id}", ["PUT"], update_task),
    ("/jobs/{job_id}/tasks/{task_id}", ["DELETE"], delete_task),
    ("/jobs/{job_id}/tasks/{task_id}/terminate", ["POST"], terminate_task),
    ("/jobs/{job_id}/tasks/{task_id}/reactivate", ["POST"], reactivate_task),
    ("/jobs/{job_id}/tasks/{task_id}/subtasksinfo", ["GET"], subtasks),
    ("/shoal/v1/jobs/{job_id}/tasks/{task_id}/why", ["GET"], task_why),
]
