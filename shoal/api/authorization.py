"""What a caller may do: every Batch route names the operation Azure RBAC checks for it, and a
service principal's call goes through only if its role assignments allow that operation.

As on Azure Batch, pools (their nodes included), certificates, applications and the account are
authorized by **actions** (`Microsoft.Batch/batchAccounts/pools/write`), jobs (their tasks
included) and job schedules by **data actions** (`Microsoft.Batch/batchAccounts/jobs/write`);
`…/batchAccounts/read` allows any read and `…/batchAccounts/listKeys/action` any operation
(service/permissions.py). Shared Key callers hold the account key and may do anything; a task
token stays within its job (api/auth.py). A denial is Batch's 403 `AuthorizationFailure`.

Each principal's effective permissions are read once (one indexed read of its own assignments)
and kept for STORE_CACHE_S; a change made through this server forgets them at once."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from shoal import config
from shoal.api.auth import AAD, STORE_CACHE_S, Caller, Forbidden
from shoal.service import roles
from shoal.service.permissions import ACCOUNT_READ, ACTION, DATA_ACTION, EffectivePermissions, Operation

if TYPE_CHECKING:
    from shoal.service.context import Context
    from shoal.store.runner import StoreRunner

BATCH = "Microsoft.Batch/batchAccounts/"
POOLS_WRITE = Operation(ACTION, BATCH + "pools/write")
# Routes only the account's keys may call (the tenant's directory, the account's own settings).
SHARED_KEY_ONLY = Operation(ACTION, "Shoal/sharedKeyOnly")
MAX_CACHED_PRINCIPALS = 10_000


def _verb(method: str) -> str:
    if method in ("GET", "HEAD"):
        return "read"
    return "delete" if method == "DELETE" else "write"


def required(method: str, template: str) -> Operation | None:
    """The operation a route (its path template, as routed) needs; None for a route this table
    does not know, which no principal may call."""
    path = re.sub(r"\{[^}]*\}", "{}", template)
    verb = _verb(method)
    if path.startswith("/shoal/v1/"):
        return _extension(method, path[len("/shoal/v1"):], verb)
    first = path.split("/")[1].split("(")[0].lower()
    if first == "pools":
        # Deleting something of a node (a file, a user) changes the pool; only the pool's own
        # DELETE deletes it.
        return Operation(ACTION, BATCH + "pools/" + (verb if verb != "delete" or path == "/pools/{}" else "write"))
    if first in ("nodecounts", "poolusagemetrics", "lifetimepoolstats"):
        return Operation(ACTION, BATCH + "pools/read")
    if first == "supportedimages":
        return Operation(ACTION, ACCOUNT_READ)
    if first == "jobschedules":
        if path == "/jobschedules/{}/jobs":
            return Operation(DATA_ACTION, BATCH + "jobs/read")
        return Operation(DATA_ACTION, BATCH + "jobSchedules/" + verb)
    if first == "jobs":
        return Operation(DATA_ACTION, BATCH + "jobs/" + verb)
    if first == "lifetimejobstats":
        return Operation(DATA_ACTION, BATCH + "jobs/read")
    if first == "certificates":
        return Operation(ACTION, BATCH + "certificates/" + verb)
    if first == "applications":
        return Operation(ACTION, BATCH + "applications/read")
    return None


def _extension(method: str, path: str, verb: str) -> Operation | None:
    """Shoal's own routes under /shoal/v1/, checked as the Batch operation closest to each."""
    if path.startswith("/pools/") and "/removednodes/" in path:
        # The kept logs of a node that left: read as the pool's nodes are.
        return Operation(ACTION, BATCH + "pools/" + ("read" if verb == "read" else "write"))
    if path.startswith("/pools/"):
        # autoscale-now and preempt change a pool; a join token lets a machine join one.
        return POOLS_WRITE
    if path.startswith("/jobs/"):
        return Operation(DATA_ACTION, BATCH + "jobs/" + verb)
    if path == "/applications" or path.startswith("/applications/"):
        # As Azure's management plane names them: an application, and its packages (versions).
        what = "applications/versions/" if "/versions" in path else "applications/"
        return Operation(ACTION, BATCH + what + verb)
    if path == "/usage":
        return Operation(ACTION, ACCOUNT_READ)
    if path == "/account/authentication-modes":
        return Operation(ACTION, ACCOUNT_READ) if method == "GET" else SHARED_KEY_ONLY
    if path == "/account/regenerate-key":
        return SHARED_KEY_ONLY
    if path.startswith(("/principals", "/tenants")):
        return SHARED_KEY_ONLY
    if path.startswith("/roledefinitions"):
        return Operation(ACTION, "Microsoft.Authorization/roleDefinitions/" + verb)
    if path.startswith("/roleassignments"):
        return Operation(ACTION, "Microsoft.Authorization/roleAssignments/" + verb)
    return None


def _denied(caller: Caller, operation: Operation | None, scope: str) -> Forbidden:
    if operation is None or operation is SHARED_KEY_ONLY:
        detail = "Only the account's keys (Shared Key) may call this operation."
    else:
        detail = (f"The client '{caller.client_id}' with object id '{caller.object_id}' does not have "
                  f"authorization to perform {'data action' if operation.kind == DATA_ACTION else 'action'} "
                  f"'{operation.name}' over scope '{scope}'.")
    error = Forbidden()
    error.values = {"AuthorizationErrorDetail": detail}
    return error


class Authorizer:
    """Decides the calls of service principals, from their role assignments (cached)."""

    def __init__(self, ctx: Context, runner: StoreRunner) -> None:
        self.ctx = ctx
        self.runner = runner
        self.scope = config.account_scope(ctx.account)
        self._principals: dict[str, tuple[EffectivePermissions, float]] = {}

    async def authorize(self, request: Request, caller: Caller, operation: Operation | None) -> None:
        """Refuse the call unless the caller may make it; a principal's permissions are left on
        the request for checks that depend on the body (an auto pool needs pool rights)."""
        if caller.mode != AAD:
            return
        if operation is None or operation is SHARED_KEY_ONLY:
            raise _denied(caller, operation, self.scope)
        granted = await self.permissions_of(caller.object_id or "")
        request.state.permissions = granted
        if not granted.allows(operation):
            raise _denied(caller, operation, self.scope)

    async def permissions_of(self, object_id: str) -> EffectivePermissions:
        cached = self._principals.get(object_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        granted = await self.runner.read(roles.grants_of, self.ctx, object_id)
        if len(self._principals) >= MAX_CACHED_PRINCIPALS:
            self._principals.clear()  # a bound, not a policy: reading one principal again is cheap
        self._principals[object_id] = (granted, time.monotonic() + STORE_CACHE_S)
        return granted

    def forget(self) -> None:
        """After any change of roles, assignments or principals through this server."""
        self._principals.clear()


def require(request: Request, operation: Operation) -> None:
    """Within a handler: refuse a principal that lacks ``operation`` too (no I/O: its permissions
    were read before the handler ran)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    granted: EffectivePermissions | None = getattr(request.state, "permissions", None)
    if caller is None or caller.mode != AAD:
        return
    if granted is None or not granted.allows(operation):
        raise _denied(caller, operation, config.account_scope(caller.account))


def require_pool_rights_for_auto_pools(request: Request, body: Any) -> None:
    """A job or schedule with an auto pool creates a pool: Batch asks for pool rights then."""
    if _names_auto_pool(body):
        require(request, POOLS_WRITE)


def _names_auto_pool(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    for holder in (body, body.get("jobSpecification")):
        pool_info = holder.get("poolInfo") if isinstance(holder, dict) else None
        if isinstance(pool_info, dict) and pool_info.get("autoPoolSpecification") is not None:
            return True
    return False

