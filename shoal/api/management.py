"""The management API (Azure Resource Manager's shape) of the server's Batch account, enough for
`azure-mgmt-batch` pointed at Shoal (docs/management-api.md):

- `GET /subscriptions/{sub}/providers/Microsoft.Batch/batchAccounts` and
  `GET /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts`;
- `GET` and `PATCH …/batchAccounts/{name}` (the account; PATCH sets allowedAuthenticationModes);
- `POST …/batchAccounts/{name}/listKeys` and `…/regenerateKeys`.

As on ARM, only a bearer token for the management audience (`https://management.azure.com/`) of a
principal in the account's tenant is taken: never Shared Key, and never a data-plane token. Each
route is one RBAC action (`Microsoft.Batch/batchAccounts/read`, `…/write`, `…/listKeys/action`,
`…/regenerateKeys/action`) the caller's role assignments must grant exactly; the data plane's
shortcuts (listKeys allows everything) do not apply here. Errors are ARM's
`{"error": {"code", "message"}}`, not Batch's OData body. The account's allowedAuthenticationModes
govern the data plane only, as on Azure: ARM is how they are changed."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shoal import clock, config
from shoal.api.auth import AAD, Caller
from shoal.api.http import dumps, parse_json, read_body
from shoal.errors import BatchError, BodyTooLarge
from shoal.service import accounts, principals, resource_groups, roles, tokens
from shoal.service.context import Context
from shoal.service.permissions import ACCOUNT_READ, ACTION, LIST_KEYS
from shoal.service.resource_groups import account_parents
from shoal.store.runner import Busy

if TYPE_CHECKING:
    from shoal.api.app import Api

log = logging.getLogger("shoal.api.management")

# The api-versions of Microsoft.Batch that azure-mgmt-batch 17–19 send (19 sends 2025-06-01).
API_VERSIONS = ("2024-02-01", "2024-07-01", "2025-06-01")
ACCOUNT_TYPE = "Microsoft.Batch/batchAccounts"
ACCOUNT_WRITE = "Microsoft.Batch/batchAccounts/write"
GROUP_ACTION = "Microsoft.Resources/subscriptions/resourceGroups/"
REGENERATE_KEYS = "Microsoft.Batch/batchAccounts/regenerateKeys/action"
# A management body is a few properties: anything bigger is refused before it is read whole.
MAX_MANAGEMENT_BODY_BYTES = 64 * 1024

SUBSCRIPTION = "/subscriptions/{subscription}"
GROUP = SUBSCRIPTION + "/resourceGroups/{group}"
# Microsoft.Resources spells it so (the paths compare without case anyway).
RESOURCE_GROUP = SUBSCRIPTION + "/resourcegroups/{group}"
ACCOUNTS_IN_SUBSCRIPTION = SUBSCRIPTION + "/providers/Microsoft.Batch/batchAccounts"
ACCOUNTS_IN_GROUP = GROUP + "/providers/Microsoft.Batch/batchAccounts"
ACCOUNT = ACCOUNTS_IN_GROUP + "/{account}"
LIST_KEYS_PATH = ACCOUNT + "/listKeys"
REGENERATE_KEYS_PATH = ACCOUNT + "/regenerateKeys"
# ARM's paths compare without case (the SDKs spell them one way, the CLI and templates others).
CASE_INSENSITIVE = re.IGNORECASE


class ArmError(Exception):
    """An answer in ARM's error shape, with ARM's (or Microsoft.Batch's) error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _headers(request: Request) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", "")
    headers = {"x-ms-request-id": request_id,
               "x-ms-correlation-request-id": request.headers.get("x-ms-correlation-request-id") or request_id}
    client_id = request.headers.get("x-ms-client-request-id")
    if client_id:
        headers["x-ms-client-request-id"] = client_id[:128]
    return headers


def _json(request: Request, payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=_headers(request))


def arm_error_response(request: Request, error: ArmError) -> Response:
    return _json(request, {"error": {"code": error.code, "message": error.message}}, error.status)


class Management:
    """The management routes of one server's account and resource groups, on the server's Api
    (its keys, authenticator, authorizer and store runner)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    # --- authentication and authorization -------------------------------------------------

    async def caller(self, request: Request) -> Caller:
        """The principal of a management-audience bearer token; 401 in ARM's shape otherwise."""
        identity = self.api.identity
        scheme, _, credential = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ArmError(401, "AuthenticationFailed",
                           "Authentication failed. The 'Authorization' header is missing or is not a bearer token.")
        if identity is None:
            raise ArmError(401, "InvalidAuthenticationToken",
                           "This server accepts no bearer tokens (start it with --tls).")
        try:
            claims = tokens.verify(identity.keys, credential.strip(), tokens.MANAGEMENT_AUDIENCES)
            if isinstance(claims, tokens.TaskClaims):
                raise tokens.InvalidToken("A task authentication token is not for the management API.")
            if claims.issuer != tokens.issuer(identity.authority, claims.tenant_id):
                raise tokens.InvalidToken("The token's issuer is not this server's authority.")
            refusal = await self.api.auth.principal_refusal(claims)
            if refusal:
                raise tokens.InvalidToken(refusal)
        except tokens.InvalidToken as invalid:
            raise ArmError(401, "InvalidAuthenticationToken",
                           f"The access token is invalid. {invalid.message}") from None
        return Caller(AAD, self.api.ctx.account, client_id=claims.client_id, object_id=claims.object_id)

    async def authorize(self, caller: Caller, action: str, scope: str) -> None:
        if action.startswith(GROUP_ACTION):
            # A group's rights are its own (those at it or its subscription), not the account's.
            granted = await self.api.runner.read(roles.grants_at, self.api.ctx, caller.object_id or "", scope)
        else:
            granted = await self.api.authz.permissions_of(caller.object_id or "")
        # Exactly the action: on the data plane listKeys/action stands for every operation (the
        # key allows everything), but ARM grants each action by itself.
        if not granted.grants_operation(ACTION, action):
            raise ArmError(403, "AuthorizationFailed",
                           f"The client '{caller.client_id}' with object id '{caller.object_id}' does not have "
                           f"authorization to perform action '{action}' over scope '{scope}' or the scope is "
                           f"invalid. If access was recently granted, please refresh your credentials.")

    # --- the wrapper ----------------------------------------------------------------------

    def route(self, handler: Callable[[Request, Context], Awaitable[Response]], action: str,
              ) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate, authorize ``action`` over the request's scope, check the api-version and
        the path's subscription, group and account, then run ``handler``; every error in ARM's shape."""
        operation = f"management_{handler.__name__}"

        async def endpoint(request: Request) -> Response:
            request.state.request_id = str(uuid.uuid4())
            request.state.operation = operation
            try:
                caller = await self.caller(request)
                scope = self.scope_of(request)
                await self.authorize(caller, action, scope)
                check_api_version(request.query_params.get("api-version"))
                await self.check_path(request, action)
                request.state.caller = caller
                return await handler(request, self.api.context_for(request))
            except ArmError as error:
                return arm_error_response(request, error)
            except BodyTooLarge:
                return arm_error_response(request, ArmError(413, "RequestEntityTooLarge",
                                                            "The request body is too large."))
            except BatchError as error:
                return arm_error_response(request, ArmError(error.status, error.code, error.message))
            except Busy:
                return arm_error_response(request, ArmError(503, "ServerBusy", "The server is busy; retry later."))
            except ClientDisconnect:
                return Response(status_code=499)
            except Exception:  # noqa: BLE001 - the client gets ARM's error, the log gets the trace
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                return arm_error_response(request, ArmError(500, "InternalServerError", "An internal error occurred."))

        return endpoint

    def scope_of(self, request: Request) -> str:
        """The ARM scope a request acts on: the account, or the subscription or group it lists."""
        params = request.path_params
        scope = f"/subscriptions/{params['subscription']}"
        if "group" in params:
            scope += f"/resourceGroups/{params['group']}"
        if "account" in params:
            scope += f"/providers/Microsoft.Batch/batchAccounts/{params['account']}"
        return scope[:1024]

    async def check_path(self, request: Request, action: str) -> None:
        """404 in ARM's words for a subscription, group or account this server does not hold; a
        group other than the account's holds no account (request.state.empty_group)."""
        subscription, group = account_parents(self.api.ctx.account)
        params = request.path_params
        request.state.empty_group = False
        if params["subscription"].lower() != subscription.lower():
            raise ArmError(404, "SubscriptionNotFound",
                           f"The subscription '{params['subscription'][:64]}' could not be found.")
        if action.startswith(GROUP_ACTION) or "group" not in params or params["group"].lower() == group.lower():
            pass  # a group route finds its group itself; the account's own group always exists
        elif await self.api.runner.read(resource_groups.get, self.api.ctx, subscription, params["group"]) is None:
            raise ArmError(404, "ResourceGroupNotFound",
                           f"Resource group '{params['group'][:90]}' could not be found.")
        else:
            request.state.empty_group = True
        if "account" in params and (request.state.empty_group
                                    or params["account"].lower() != self.api.ctx.account.lower()):
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{ACCOUNT_TYPE}/{params['account'][:64]}' under resource group "
                           f"'{params['group'][:90]}' was not found.")

    # --- handlers -------------------------------------------------------------------------

    async def get_account(self, request: Request, ctx: Context) -> Response:
        return _json(request, await self.account_resource(ctx))

    async def list_accounts(self, request: Request, ctx: Context) -> Response:
        if request.state.empty_group:
            return _json(request, {"value": []})
        return _json(request, {"value": [await self.account_resource(ctx)]})

    async def get_group(self, request: Request, ctx: Context) -> Response:
        params = request.path_params
        found = await self.api.runner.read(resource_groups.get, ctx, params["subscription"], params["group"])
        if request.method == "HEAD":
            # ResourceGroups_CheckExistence: 204 or 404, no body.
            return Response(status_code=204 if found is not None else 404, headers=_headers(request))
        if found is None:
            raise resource_groups.not_found(params["group"])
        return _json(request, group_resource(found, params["subscription"]))

    async def put_group(self, request: Request, ctx: Context) -> Response:
        params = request.path_params
        resource_groups.check_name(params["group"])  # before the body: a bad name is the answer
        body = await self.body(request)
        group, made = await self.api.runner.write(resource_groups.create_or_update, ctx, params["subscription"],
                                                  params["group"], body)
        return _json(request, group_resource(group, params["subscription"]), 201 if made else 200)

    async def delete_group(self, request: Request, ctx: Context) -> Response:
        params = request.path_params
        await self.api.runner.write(resource_groups.delete_group, ctx, params["subscription"], params["group"])
        return Response(status_code=200, headers=_headers(request))

    async def update_account(self, request: Request, ctx: Context) -> Response:
        modes = update_modes(await self.body(request))
        if modes is not None:
            await self.api.runner.write(principals.set_allowed_modes, ctx, modes)
            self.api.auth.forget_policy()
        return _json(request, await self.account_resource(ctx))

    async def list_keys(self, request: Request, ctx: Context) -> Response:
        await self.body(request, required=False)
        primary, secondary = self.api.keys[ctx.account]
        return _json(request, keys_resource(ctx.account, primary, secondary))

    async def regenerate_keys(self, request: Request, ctx: Context) -> Response:
        which = accounts.key_name(await self.body(request))
        primary, secondary = await self.api.runner.write(regenerate_and_swap, self.api, ctx, which)
        return _json(request, keys_resource(ctx.account, primary, secondary))

    async def body(self, request: Request, *, required: bool = True) -> Any:
        raw = await read_body(request, MAX_MANAGEMENT_BODY_BYTES)
        if not raw.strip():
            if required:
                raise ArmError(400, "InvalidRequestBody", "The request body is missing.")
            return None
        return parse_json(raw)

    async def account_resource(self, ctx: Context) -> dict[str, Any]:
        found = await self.api.runner.read(accounts.record, ctx)
        return account_resource(found, ctx.base_url)


def regenerate_and_swap(api: Api, ctx: Context, which: str) -> tuple[str, str]:
    """On the writer thread (here and for `shoal account regenerate-key`): the keys are swapped in
    the order the store changed them, so two regenerations at once can never leave the server
    verifying a key the store replaced."""
    keys = accounts.regenerate_key(ctx, which)
    api.replace_keys(ctx.account, keys)
    log.info("the %s key of account %s was regenerated", which.lower(), ctx.account)
    return keys


def check_api_version(value: str | None) -> None:
    if not value:
        raise ArmError(400, "MissingApiVersionParameter",
                       "The api-version query parameter (?api-version=) is required for all requests.")
    if value not in API_VERSIONS:
        raise ArmError(400, "InvalidApiVersionParameter",
                       f"The api-version '{value[:32]}' is invalid. The supported versions are "
                       f"'{','.join(API_VERSIONS)}'.")


def update_modes(body: Any) -> list[str] | None:
    """The allowedAuthenticationModes a PATCH body sets (None: it sets none); anything else it
    names is refused, never stored and ignored."""
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestBody", "The request body must be a JSON object.")
    unknown = sorted(set(body) - {"properties"})
    properties = body.get("properties")
    if properties is None and not unknown:
        return None
    if not isinstance(properties, dict):
        raise ArmError(400, "InvalidRequestBody", "The property 'properties' must be an object.")
    unknown += sorted(f"properties.{name}" for name in set(properties) - {"allowedAuthenticationModes"})
    if unknown:
        names = ", ".join(name[:64] for name in unknown[:5])
        raise ArmError(400, "FeatureNotSupported",
                       f"Shoal's management API can change only properties.allowedAuthenticationModes, not {names}.")
    modes = properties.get("allowedAuthenticationModes")
    if modes is None:
        return None
    if not isinstance(modes, list):
        raise ArmError(400, "InvalidRequestBody", "The property 'allowedAuthenticationModes' must be an array.")
    return modes


def group_resource(group: resource_groups.ResourceGroup, subscription: str) -> dict[str, Any]:
    """A group as Microsoft.Resources shows it (azure-mgmt-resource's ResourceGroup)."""
    return {"id": f"/subscriptions/{subscription}/resourceGroups/{group.name}", "name": group.name,
            "type": "Microsoft.Resources/resourceGroups", "location": group.location, "tags": group.tags,
            "properties": {"provisioningState": "Succeeded"}}


def keys_resource(account: str, primary: str, secondary: str) -> dict[str, str]:
    return {"accountName": account, "primary": primary, "secondary": secondary}


def account_resource(found: accounts.AccountRecord, base_url: str) -> dict[str, Any]:
    """The account as azure-mgmt-batch's BatchAccount reads it. accountEndpoint is, as on Azure,
    the endpoint's host without its scheme (clients prepend https://)."""
    quota = found.quotas
    properties: dict[str, Any] = {
        "accountEndpoint": urlsplit(base_url).netloc,
        "provisioningState": "Succeeded",
        "poolAllocationMode": "BatchService",
        "publicNetworkAccess": "Enabled",
        "privateEndpointConnections": [],
        "encryption": {"keySource": "Microsoft.Batch"},
        "dedicatedCoreQuota": quota.dedicated_cores,
        "lowPriorityCoreQuota": quota.low_priority_cores,
        "dedicatedCoreQuotaPerVMFamily": [],
        "dedicatedCoreQuotaPerVMFamilyEnforced": False,
        "poolQuota": quota.pools,
        "activeJobAndJobScheduleQuota": quota.active_jobs_and_schedules,
        "allowedAuthenticationModes": list(found.allowed_modes),
    }
    storage = auto_storage(found)
    if storage is not None:
        properties["autoStorage"] = storage
    return {"id": config.account_scope(found.name), "name": found.name, "type": ACCOUNT_TYPE,
            "location": accounts.LOCATION, "tags": {}, "identity": {"type": "None"}, "properties": properties}


def auto_storage(found: accounts.AccountRecord) -> dict[str, Any] | None:
    """The linked storage account ($SHOAL_AUTO_STORAGE), by its ARM id: only its AccountName is
    read from the connection string, never its key."""
    connection = config.auto_storage_connection_string()
    if connection is None:
        return None
    fields = dict(part.split("=", 1) for part in connection.split(";") if "=" in part)
    name = fields.get("AccountName") or "storage"
    subscription, group = account_parents(found.name)
    return {"storageAccountId": f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
                                f"Microsoft.Storage/storageAccounts/{name}",
            "lastKeySync": clock.iso(found.created), "authenticationMode": "StorageKeys"}


# Each route (template, method), the Management method that serves it and the one RBAC action it needs.
ROUTES = (
    (ACCOUNTS_IN_SUBSCRIPTION, "GET", "list_accounts", ACCOUNT_READ),
    (ACCOUNTS_IN_GROUP, "GET", "list_accounts", ACCOUNT_READ),
    (ACCOUNT, "GET", "get_account", ACCOUNT_READ),
    (ACCOUNT, "PATCH", "update_account", ACCOUNT_WRITE),
    (LIST_KEYS_PATH, "POST", "list_keys", LIST_KEYS),
    (REGENERATE_KEYS_PATH, "POST", "regenerate_keys", REGENERATE_KEYS),
    (RESOURCE_GROUP, "GET", "get_group", GROUP_ACTION + "read"),
    (RESOURCE_GROUP, "PUT", "put_group", GROUP_ACTION + "write"),
    (RESOURCE_GROUP, "DELETE", "delete_group", GROUP_ACTION + "delete"),
)


def routes(api: Api) -> list[Route]:
    served = Management(api)
    out = []
    for path, method, handler_name, action in ROUTES:
        route = Route(path, served.route(getattr(served, handler_name), action), methods=[method])
        route.path_regex = re.compile(route.path_regex.pattern, CASE_INSENSITIVE)
        out.append(route)
    return out


def is_management_path(path: str) -> bool:
    """Whether a request is for the management API (its 404s and 405s answer in ARM's shape)."""
    return path.lower().startswith("/subscriptions/")


def unrouted(request: Request, status: int) -> Response:
    """ARM's answer to a management path or method this server does not serve."""
    request.state.request_id = str(uuid.uuid4())
    if status == 405:
        return arm_error_response(request, ArmError(405, "MethodNotAllowed",
                                                    f"The HTTP method '{request.method}' is not supported here "
                                                    f"(docs/management-api.md lists what is)."))
    return arm_error_response(request, ArmError(404, "InvalidResourceType",
                                                "The resource type is not served by Shoal's management API "
                                                "(docs/management-api.md lists what is)."))
