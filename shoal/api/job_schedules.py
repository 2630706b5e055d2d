"""Job schedule routes: /jobschedules, /jobschedules/{id}, its actions and its jobs.

Status codes as Azure answers them (recorded: test_batch.pyTestBatchtest_batch_job_schedules[sync].json
and azure-sdk-for-node/batchservice-tests.json): add 201, PUT and PATCH 200, disable and enable
204, terminate and delete 202.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import authorization, listing, offload, render, versions
from shoal.api.actions import conditional_action
from shoal.api.http import empty_response, guard
from shoal.service import job_schedules as schedule_service
from shoal.service.context import Context

SCHEDULE_TYPE = "jobschedules/@Element"


def _location(ctx: Context, schedule_id: str) -> str:
    return f"{ctx.base_url}/jobschedules/{schedule_id}"


async def create_job_schedule(request: Request, ctx: Context) -> Response:
    body, size = await versions.read_json(request, "jobschedule.create")
    authorization.require_pool_rights_for_auto_pools(request, body)
    schedule_service.add(ctx, await offload.validate(size, schedule_service.parse_create, body))
    etag, modified = schedule_service.etag_of(ctx, body["id"])
    return empty_response(request, 201, etag=etag, last_modified=modified, location=_location(ctx, body["id"]))


async def list_job_schedules(request: Request, ctx: Context) -> Response:
    return listing.respond(request, [render.job_schedule(ctx.base_url, row) for row in schedule_service.list_all(ctx)],
                           "jobschedules", "jobschedule")


async def get_job_schedule(request: Request, ctx: Context) -> Response:
    schedule_id = request.path_params["schedule_id"]
    row = schedule_service.get(ctx, schedule_id)
    guard(request, lambda: (row.etag, row.last_modified))
    if request.method == "HEAD":
        return empty_response(request, 200, etag=row.etag, last_modified=row.last_modified)
    return listing.single(request, render.job_schedule(ctx.base_url, row), SCHEDULE_TYPE, row.last_modified,
                          "jobschedule")


def _action(action, status: int, body_name: str | None):  # type: ignore[no-untyped-def]
    return conditional_action("jobschedules", "schedule_id", schedule_service.etag_of, action, status, body_name)


async def delete_job_schedule(request: Request, ctx: Context) -> Response:
    schedule_id = request.path_params["schedule_id"]
    guard(request, lambda: schedule_service.etag_of(ctx, schedule_id))
    schedule_service.delete_schedule(ctx, schedule_id)
    return empty_response(request, 202)


async def list_jobs_of_schedule(request: Request, ctx: Context) -> Response:
    rows = schedule_service.list_jobs(ctx, request.path_params["schedule_id"])
    return listing.respond(request, [render.job(ctx.base_url, row) for row in rows], "jobs", "job")


ROUTES = [
    ("/jobschedules", ["POST"], create_job_schedule),
    ("/jobschedules", ["GET"], list_job_schedules),
    ("/jobschedules/{schedule_id}", ["GET", "HEAD"], get_job_schedule),
    ("/jobschedules/{schedule_id}", ["PATCH"], _action(schedule_service.patch, 200, "jobschedule.patch")),
    ("/jobschedules/{schedule_id}", ["PUT"], _action(schedule_service.replace, 200, "jobschedule.replace")),
    ("/jobschedules/{schedule_id}", ["DELETE"], delete_job_schedule),
    ("/jobschedules/{schedule_id}/disable", ["POST"], _action(schedule_service.disable, 204, None)),
    ("/jobschedules/{schedule_id}/enable", ["POST"], _action(schedule_service.enable, 204, None)),
    ("/jobschedules/{schedule_id}/terminate", ["POST"], _action(schedule_service.terminate, 202, None)),
    ("/jobschedules/{schedule_id}/jobs", ["GET"], list_jobs_of_schedule),
]
