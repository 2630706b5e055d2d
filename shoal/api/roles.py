"""Beyond the Batch data plane: role definitions and role assignments, under `/shoal/v1/`, in
ARM's shapes (`Microsoft.Authorization/roleDefinitions`, `…/roleAssignments`). Signed like every
call; a principal may use them as its own roles allow (`Microsoft.Authorization/role…/read|write|
delete`: Owner may, Contributor only reads). Any change forgets the cached permissions at once."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoal import config
from shoal.api.http import json_response, parse_json
from shoal.service import roles
from shoal.service.context import Context

DEFINITIONS = "/shoal/v1/roledefinitions"
ASSIGNMENTS = "/shoal/v1/roleassignments"


def routes(api: Any) -> list[Route]:
    async def list_role_definitions(request: Request, ctx: Context) -> Response:
        return json_response(request, {"value": roles.list_roles(ctx)})

    async def create_role_definition(request: Request, ctx: Context) -> Response:
        created = roles.create_role(ctx, parse_json(await request.body()))
        api.authz.forget()
        return json_response(request, created, status=201)

    async def get_role_definition(request: Request, ctx: Context) -> Response:
        return json_response(request, roles.get_role(ctx, request.path_params["role"]))

    async def delete_role_definition(request: Request, ctx: Context) -> Response:
        gone = roles.delete_role(ctx, request.path_params["role"])
        api.authz.forget()
        return json_response(request, gone)

    async def list_role_assignments(request: Request, ctx: Context) -> Response:
        listed = roles.list_assignments(ctx, request.query_params.get("principal"))
        return json_response(request, {"accountScope": config.account_scope(ctx.account), "value": listed})

    async def create_role_assignment(request: Request, ctx: Context) -> Response:
        created = roles.assign(ctx, parse_json(await request.body()))
        api.authz.forget()
        return json_response(request, created, status=201)

    async def delete_role_assignment(request: Request, ctx: Context) -> Response:
        gone = roles.unassign(ctx, request.path_params["assignment"])
        api.authz.forget()
        return json_response(request, gone)

    table = (
        (DEFINITIONS, ["GET"], list_role_definitions, "read"),
        (DEFINITIONS, ["POST"], create_role_definition, "write"),
        (DEFINITIONS + "/{role}", ["GET"], get_role_definition, "read"),
        (DEFINITIONS + "/{role}", ["DELETE"], delete_role_definition, "write"),
        (ASSIGNMENTS, ["GET"], list_role_assignments, "read"),
        (ASSIGNMENTS, ["POST"], create_role_assignment, "write"),
        (ASSIGNMENTS + "/{assignment}", ["DELETE"], delete_role_assignment, "write"),
    )
    return [Route(path, api.batch(handler, placement, path=path), methods=methods)
            for path, methods, handler, placement in table]
