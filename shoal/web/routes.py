"""The dashboard's routes, mounted under /ui on the Batch API's app (shoal/api/app.py)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from shoal.service.permissions import ACCOUNT_READ, ACTION, DATA_ACTION, Operation
from shoal.web import files, jobs, nodes, pools, signin, tasks, usage
from shoal.web.shared import PREFIX, current_session, on_loop, page, sign_in_redirect, with_headers

if TYPE_CHECKING:
    from shoal.api.app import Api

# What each page needs of a principal's roles: the REST operation it stands for.
_BATCH = "Microsoft.Batch/batchAccounts/"
POOLS_READ = Operation(ACTION, _BATCH + "pools/read")
POOLS_WRITE = Operation(ACTION, _BATCH + "pools/write")
JOBS_READ = Operation(DATA_ACTION, _BATCH + "jobs/read")
ACCOUNT = Operation(ACTION, ACCOUNT_READ)
STATIC_FILES = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}


def _static() -> dict[str, bytes]:
    folder = resources.files("shoal.web") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def mount(api: Api) -> Mount:
    return Mount(PREFIX, routes=routes(api))


def routes(api: Api) -> list[BaseRoute]:
    static = _static()

    async def serve_static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return with_headers(Response("not found", status_code=404, media_type="text/plain"))
        response = with_headers(Response(static[name], media_type=STATIC_FILES[name]))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def home(request: Request) -> Response:
        if await current_session(api, request) is None:
            return sign_in_redirect(request)
        return with_headers(RedirectResponse(f"{PREFIX}/pools", status_code=303))

    out: list[BaseRoute] = [Route(path, endpoint, methods=methods)  # type: ignore[arg-type]
                            for path, methods, endpoint in signin.routes(api)]
    out += [
        Route("/", home, methods=["GET"]),
        Route("/static/{name}", serve_static, methods=["GET"]),
        Route("/pools", page(api, pools.pools_list, POOLS_READ, "scan"), methods=["GET"]),
        Route("/pools/{pool_id}", page(api, pools.pool_page, POOLS_READ, "scan"), methods=["GET"]),
        Route("/pools/{pool_id}/heatmap", page(api, pools.heat_map_poll, POOLS_READ, "scan"), methods=["GET"]),
        Route("/pools/{pool_id}/nodes/{node_id}", page(api, nodes.node_page, POOLS_READ), methods=["GET"]),
        Route("/pools/{pool_id}/nodes/{node_id}/action", page(api, nodes.node_action, POOLS_WRITE, "write"), methods=["POST"]),
        Route("/pools/{pool_id}/nodes/{node_id}/tail", on_loop(api, files.node_tail, POOLS_READ), methods=["GET"]),
        Route("/pools/{pool_id}/nodes/{node_id}/files", on_loop(api, files.node_file_list, POOLS_READ), methods=["GET"]),
        Route("/jobs", page(api, jobs.jobs_list, JOBS_READ, "scan"), methods=["GET"]),
        Route("/jobs/{job_id}", page(api, jobs.job_page, JOBS_READ, "scan"), methods=["GET"]),
        Route("/jobs/{job_id}/tasks/{task_id}", page(api, tasks.task_page, JOBS_READ), methods=["GET"]),
        Route("/jobs/{job_id}/tasks/{task_id}/tail", on_loop(api, files.task_tail, JOBS_READ), methods=["GET"]),
        Route("/usage", page(api, usage.usage_page, ACCOUNT, "scan"), methods=["GET"]),
    ]
    return out
