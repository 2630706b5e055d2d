"""Job routes: /jobs, /jobs/{id}, the job actions and /taskcounts."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal import odata
from shoal.api import authorization, listing, offload, render, versions
from shoal.api.actions import conditional_action
from shoal.api.http import decode_token, empty_response, guard, max_results
from shoal.service import job_manager, job_prep_nodes, job_prep_status
from shoal.service import jobs as job_service
from shoal.service.context import Context


async def create_job(request: Request, ctx: Context) -> Response:
    body, size = await versions.read_json(request, "job.create")
    authorization.require_pool_rights_for_auto_pools(request, body)
    job_manager.add(ctx, await offload.validate(size, job_manager.parse_create, body))
    etag, modified = job_service.etag_of(ctx, body["id"])
    return empty_response(request, 201, etag=etag, last_modified=modified,
                          location=f"{ctx.base_url}/jobs/{body['id']}")


async def list_jobs(request: Request, ctx: Context) -> Response:
    return listing.respond(request, [render.job(ctx.base_url, row) for row in job_service.list_all(ctx)], "jobs",
                           "job")


async def get_job(request: Request, ctx: Context) -> Response:
    job_id = request.path_params["job_id"]
    etag, modified = job_service.etag_of(ctx, job_id)
    guard(request, lambda: (etag, modified))
    return listing.single(request, render.job(ctx.base_url, job_service.get(ctx, job_id)), "jobs/@Element", modified,
                          "job")


def _guard(request: Request, ctx: Context, job_id: str) -> None:
    guard(request, lambda: job_service.etag_of(ctx, job_id))


def _action(action, status: int, body_name: str | None, *, body: str = "required"):  # type: ignore[no-untyped-def]
    return conditional_action("jobs", "job_id", job_service.etag_of, action, status, body_name,
                              optional_body=body == "optional")


async def delete_job(request: Request, ctx: Context) -> Response:
    job_id = request.path_params["job_id"]
    _guard(request, ctx, job_id)
    job_service.delete_job(ctx, job_id)
    return empty_response(request, 202)


async def preparation_and_release_status(request: Request, ctx: Context) -> Response:
    node = listing.parse_filter(request)
    fields = listing.select_fields(request)
    # What the store can decide goes to SQL; only the rest is judged here, on the wire form.
    conditions, rest = odata.split_for_sql(node, job_prep_nodes.FILTER_PROPERTIES, ctx.engine.dialect.name)
    page, continuation = job_prep_status.list_page(
        ctx, request.path_params["job_id"], after_seq=decode_token(request), limit=max_results(request),
        conditions=conditions, predicate=None if rest is None else odata.predicate_of(rest))
    return listing.page_response(request, page, "jobpreparationandreleasetaskstatuslist", fields, continuation)


async def task_counts(request: Request, ctx: Context) -> Response:
    from shoal.api.http import json_response

    counts = versions.rendered(request, "taskcounts", job_service.task_counts(ctx, request.path_params["job_id"]))
    # Before task slots (2020-09-01.12.0) the answer was the counts alone, typed so.
    return json_response(request, counts, odata_type="taskcountsresult/@Element" if "taskCounts" in counts
                         else "taskcounts/@Element")


ROUTES = [
    ("/jobs", ["POST"], create_job),
    ("/jobs", ["GET"], list_jobs),
    ("/jobs/{job_id}", ["GET"], get_job),
    ("/jobs/{job_id}", ["PATCH"], _action(job_service.patch, 200, "job.patch")),
    ("/jobs/{job_id}", ["PUT"], _action(job_service.replace, 200, "job.replace")),
    ("/jobs/{job_id}", ["DELETE"], delete_job),
    ("/jobs/{job_id}/disable", ["POST"], _action(job_service.disable, 202, "job.disable")),
    ("/jobs/{job_id}/enable", ["POST"], _action(job_service.enable, 202, None)),
    ("/jobs/{job_id}/terminate", ["POST"], _action(job_service.terminate, 202, "job.terminate", body="optional")),
    ("/jobs/{job_id}/taskcounts", ["GET"], task_counts),
    ("/jobs/{job_id}/jobpreparationandreleasetaskstatus", ["GET"], preparation_and_release_status),
]
