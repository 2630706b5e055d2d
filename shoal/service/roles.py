"""Role-based access: role definitions (Azure's built-ins and custom roles) and their assignments
to service principals at ARM scopes, in the store, in the shapes ARM gives them
(`Microsoft.Authorization/roleDefinitions`, `…/roleAssignments`).

Shoal serves one account, so a scope is the account's (config.account_scope) or one that holds
it: its resource group or its subscription. What the assignments mean is decided by the pure
evaluator in service/permissions.py; the API caches each principal's result."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from shoal import clock, config
from shoal.errors import BadRequest, BatchError, Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.service import permissions
from shoal.service.builtin_roles import BUILTIN_ROLES
from shoal.service.context import Context
from shoal.store.schema import principals, role_assignments, role_definitions

MAX_ROLE_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 2048
MAX_PATTERNS_PER_LIST = 500
MAX_PATTERN_CHARS = 512
MAX_SCOPE_CHARS = 512
MAX_SCOPE_NAME_CHARS = 90
MAX_ASSIGNABLE_SCOPES = 50
# Azure's own limits: custom roles per tenant and role assignments per subscription. They also
# bound what the listings return.
MAX_CUSTOM_ROLES = 5000
MAX_ROLE_ASSIGNMENTS = 4000
PERMISSION_LISTS = ("actions", "notActions", "dataActions", "notDataActions")
DEFINITIONS_PATH = "/providers/Microsoft.Authorization/roleDefinitions/"
# `Provider.Namespace/resourceType/.../operation`, each part letters, digits, `.`, `_`, `-` or `*`.
_SEGMENT = re.compile(r"[A-Za-z0-9._*-]+")
_PROVIDER = re.compile(r"(\*|[A-Za-z0-9*][A-Za-z0-9_*-]*(\.[A-Za-z0-9_*-]+)+)")


class RoleNotFound(NotFound):
    code = "RoleDefinitionDoesNotExist"

    def __init__(self, reference: str) -> None:
        super().__init__("The specified role definition does not exist.", values={"RoleDefinition": reference[:128]})


class CannotChangeBuiltinRole(BatchError):
    status = 403
    code = "CannotModifyBuiltInRole"


def ensure_builtin_roles(conn: Connection) -> None:
    """Write Azure's built-in roles as this Shoal knows them (a newer Shoal corrects them)."""
    existing = set(conn.execute(select(role_definitions.c.id).where(role_definitions.c.builtin)).scalars())
    for role in BUILTIN_ROLES:
        values = {"name": role.name, "name_key": role.name.lower(), "description": role.description,
                  "builtin": True, "assignable_scopes": ["/"],
                  "permissions": {"actions": list(role.actions), "notActions": list(role.not_actions),
                                  "dataActions": list(role.data_actions), "notDataActions": list(role.not_data_actions)}}
        if role.id in existing:
            conn.execute(update(role_definitions).where(role_definitions.c.id == role.id).values(**values))
        else:
            conn.execute(role_definitions.insert().values(id=role.id, created=clock.now(), **values))


# --- validation -----------------------------------------------------------------------------------


def _printable(value: str) -> bool:
    return all(32 <= ord(ch) != 127 for ch in value)


def check_pattern(label: str, pattern: Any) -> str:
    """An `actions`-style entry: `*`, or a provider namespace and its parts, `*` anywhere."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidProperty(label, _shown(pattern), "Each entry is a non-empty string.")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidProperty(label, pattern[:64], f"An entry has at most {MAX_PATTERN_CHARS} characters.")
    parts = pattern.split("/")
    if (not _PROVIDER.fullmatch(parts[0]) or not all(_SEGMENT.fullmatch(part) for part in parts[1:])
            or any(part in (".", "..") for part in parts)):
        raise InvalidProperty(label, pattern[:64], "Not an operation: expected Provider.Namespace/resourceType/"
                              "operation, of letters, digits, '.', '_', '-' and '*' (for example "
                              "Microsoft.Batch/batchAccounts/jobs/read).")
    return pattern


def _looks_like_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    return value[:64] if isinstance(value, str) else type(value).__name__


def _pattern_list(permission: dict[str, Any], name: str) -> list[str]:
    value = permission.get(name, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidProperty(name, _shown(value), "A list of operations is required.")
    if len(value) > MAX_PATTERNS_PER_LIST:
        raise InvalidProperty(name, str(len(value)), f"At most {MAX_PATTERNS_PER_LIST} entries.")
    kept: dict[str, str] = {}
    for entry in value:
        kept.setdefault(check_pattern(name, entry).lower(), entry)
    return list(kept.values())


def scope_parts(scope: Any, label: str = "scope") -> list[str]:
    """A scope Shoal knows: a subscription, a resource group, or a Batch account in one."""
    if not isinstance(scope, str) or not scope:
        raise InvalidProperty(label, _shown(scope), "A scope (an ARM resource id) is required.")
    if len(scope) > MAX_SCOPE_CHARS or not _printable(scope) or " " in scope:
        raise InvalidProperty(label, scope[:64], f"At most {MAX_SCOPE_CHARS} printable characters, no spaces.")
    parts = scope.rstrip("/").split("/")
    kinds = [part.lower() for part in parts[1::2]]
    names = [parts[index] for index in (2, 4, 8) if index < len(parts)]
    shaped = parts[0] == "" and (
        (len(parts) == 3 and kinds == ["subscriptions"])
        or (len(parts) == 5 and kinds == ["subscriptions", "resourcegroups"])
        or (len(parts) == 9 and [part.lower() for part in parts[1:8:2]] == [
            "subscriptions", "resourcegroups", "providers", "batchaccounts"] and parts[6].lower() == "microsoft.batch"))
    if not shaped or any(not name or len(name) > MAX_SCOPE_NAME_CHARS or name in (".", "..") for name in names):
        raise InvalidProperty(label, scope[:128], "A scope is /subscriptions/{id}, "
                              "/subscriptions/{id}/resourceGroups/{name}, or /subscriptions/{id}/resourceGroups/"
                              "{name}/providers/Microsoft.Batch/batchAccounts/{account}.")
    return parts


def _check_assignment_scope(ctx: Context, scope: Any) -> str:
    scope_parts(scope)
    account = config.account_scope(ctx.account)
    if not permissions.within(account, scope):
        raise InvalidProperty("scope", scope[:128], f"Shoal serves one account, {account}: assign at it, its "
                              "resource group or its subscription.")
    return str(scope).rstrip("/")


def _count(conn: Connection, table: Any, *where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# --- role definitions -----------------------------------------------------------------------------


def _wire_role(row: Any) -> dict[str, Any]:
    return {"id": DEFINITIONS_PATH + row.id, "name": row.id, "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {"roleName": row.name, "description": row.description,
                           "type": "BuiltInRole" if row.builtin else "CustomRole",
                           "permissions": [{name: list(row.permissions.get(name, [])) for name in PERMISSION_LISTS}],
                           "assignableScopes": list(row.assignable_scopes), "createdOn": clock.iso(row.created)}}


def _role_row(conn: Connection, reference: Any) -> Any:
    """A role by its id, its ARM id (…/roleDefinitions/{id}) or its name (without regard to case)."""
    if not isinstance(reference, str) or not reference or len(reference) > 1024 or not _printable(reference):
        raise RoleNotFound(_shown(reference))
    role_id = reference.rsplit("/roleDefinitions/", 1)[-1] if "/roleDefinitions/" in reference else reference
    row = conn.execute(select(role_definitions).where(
        (role_definitions.c.id == role_id.lower()) | (role_definitions.c.name_key == reference.lower()))).first()
    if row is None:
        raise RoleNotFound(reference)
    return row


def create_role(ctx: Context, body: Any) -> dict[str, Any]:
    """A custom role from an ARM-shaped definition: `properties` with `roleName`, `description`,
    one `permissions` block and `assignableScopes` (the account's scope when none is given)."""
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise BadRequest("The request body must be a JSON object with the role's properties.")
    props = body["properties"]
    name = props.get("roleName")
    if not isinstance(name, str) or not name.strip():
        raise MissingProperty("roleName") if name is None else InvalidProperty("roleName", _shown(name),
                                                                               "A name is required.")
    if len(name) > MAX_ROLE_NAME_CHARS or not _printable(name) or any(ch in name for ch in "/\\?#"):
        raise InvalidProperty("roleName", name[:64], f"At most {MAX_ROLE_NAME_CHARS} printable characters, none of "
                              "/ \\ ? #.")
    if _looks_like_id(name):
        raise InvalidProperty("roleName", name[:64], "A role's name cannot be a GUID: roles are found by name or id.")
    description = props.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS or "\x00" in description:
        raise InvalidProperty("description", _shown(description), f"At most {MAX_DESCRIPTION_CHARS} characters.")
    blocks = props.get("permissions")
    if not isinstance(blocks, list) or len(blocks) != 1 or not isinstance(blocks[0], dict):
        raise InvalidProperty("permissions", _shown(blocks), "Exactly one permissions block is required.")
    unknown = set(blocks[0]) - set(PERMISSION_LISTS)
    if unknown:
        raise InvalidProperty("permissions", sorted(unknown)[0][:64], f"Its lists are {', '.join(PERMISSION_LISTS)}.")
    granted = {name: _pattern_list(blocks[0], name) for name in PERMISSION_LISTS}
    if not granted["actions"] and not granted["dataActions"]:
        raise InvalidProperty("permissions", "", "A role must grant at least one action or data action.")
    scopes = props.get("assignableScopes") or [config.account_scope(ctx.account)]
    if not isinstance(scopes, list) or len(scopes) > MAX_ASSIGNABLE_SCOPES:
        raise InvalidProperty("assignableScopes", _shown(scopes), f"A list of at most {MAX_ASSIGNABLE_SCOPES} scopes.")
    scopes = [str(scope).rstrip("/") for scope in scopes if scope_parts(scope, "assignableScopes")]
    role_id = str(uuid.uuid4())
    with ctx.engine.begin() as conn:
        taken = conn.execute(select(role_definitions.c.id).where(role_definitions.c.name_key == name.lower())).first()
        if taken is not None:
            raise Conflict("A role definition with the same name already exists.",
                           code="RoleDefinitionWithSameNameExists", values={"RoleName": name[:64]})
        if _count(conn, role_definitions, ~role_definitions.c.builtin) >= MAX_CUSTOM_ROLES:
            raise BadRequest(f"The limit of {MAX_CUSTOM_ROLES} custom roles is reached.",
                             code="RoleDefinitionLimitExceeded")
        conn.execute(role_definitions.insert().values(
            id=role_id, name=name, name_key=name.lower(), description=description, builtin=False,
            permissions=granted, assignable_scopes=scopes, created=clock.now()))
        return _wire_role(_role_row(conn, role_id))


def list_roles(ctx: Context) -> list[dict[str, Any]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(role_definitions).order_by(role_definitions.c.builtin.desc(),
                                                              role_definitions.c.name_key)).all()
    return [_wire_role(row) for row in rows]


def get_role(ctx: Context, reference: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        return _wire_role(_role_row(conn, reference))


def delete_role(ctx: Context, reference: str) -> dict[str, Any]:
    """Delete a custom role; one still assigned is refused, as Azure refuses it."""
    with ctx.engine.begin() as conn:
        row = _role_row(conn, reference)
        if row.builtin:
            raise CannotChangeBuiltinRole("Built-in roles cannot be deleted.", values={"RoleName": row.name})
        if _count(conn, role_assignments, role_assignments.c.role_id == row.id):
            raise Conflict("There are existing role assignments referencing this role: remove them first.",
                           code="RoleDefinitionHasAssignments", values={"RoleName": row.name})
        conn.execute(delete(role_definitions).where(role_definitions.c.id == row.id))
        return _wire_role(row)


# --- role assignments -----------------------------------------------------------------------------


def _principal_row(conn: Connection, reference: Any) -> Any:
    """A principal by object id, client id or (when it names exactly one) display name."""
    if not isinstance(reference, str) or not reference or len(reference) > 256 or not _printable(reference):
        raise NotFound("The specified service principal does not exist.", code="PrincipalNotFound",
                       values={"PrincipalId": _shown(reference)})
    rows = conn.execute(select(principals).where(
        (principals.c.object_id == reference) | (principals.c.client_id == reference)
        | (principals.c.name == reference))).all()
    if not rows:
        raise NotFound("The specified service principal does not exist.", code="PrincipalNotFound",
                       values={"PrincipalId": reference[:64]})
    if len(rows) > 1:
        raise Conflict("The name is given to several service principals: use the client id.",
                       code="PrincipalNameAmbiguous")
    return rows[0]


def _wire_assignment(row: Any) -> dict[str, Any]:
    return {"id": f"{row.scope}/providers/Microsoft.Authorization/roleAssignments/{row.id}", "name": row.id,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"roleDefinitionId": DEFINITIONS_PATH + row.role_id, "roleName": row.role_name,
                           "principalId": row.principal_id, "principalName": row.principal_name,
                           "principalType": "ServicePrincipal", "scope": row.scope,
                           "createdOn": clock.iso(row.created)}}


def _assignments_query() -> Any:
    return (select(role_assignments, role_definitions.c.name.label("role_name"),
                   principals.c.name.label("principal_name"))
            .join(role_definitions, role_definitions.c.id == role_assignments.c.role_id)
            .join(principals, principals.c.object_id == role_assignments.c.principal_id))


def assign(ctx: Context, body: Any) -> dict[str, Any]:
    """Assign a role (`roleDefinitionId`: its id, ARM id or name) to a principal (`principalId`:
    its object id, client id or name) at a scope (the account's when none is given)."""
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise BadRequest("The request body must be a JSON object with the assignment's properties.")
    props = body["properties"]
    for required in ("roleDefinitionId", "principalId"):
        if props.get(required) is None:
            raise MissingProperty(required)
    scope = _check_assignment_scope(ctx, props.get("scope") or config.account_scope(ctx.account))
    with ctx.engine.begin() as conn:
        role = _role_row(conn, props["roleDefinitionId"])
        if not any(permissions.within(scope, allowed) for allowed in role.assignable_scopes):
            raise InvalidProperty("scope", scope[:128], f"The role {role.name} is not assignable at this scope: its "
                                  f"assignableScopes are {', '.join(role.assignable_scopes)}.")
        principal = _principal_row(conn, props["principalId"])
        taken = conn.execute(select(role_assignments.c.id).where(
            role_assignments.c.principal_id == principal.object_id, role_assignments.c.role_id == role.id,
            role_assignments.c.scope_key == scope.lower())).first()
        if taken is not None:
            raise Conflict("The role assignment already exists.", code="RoleAssignmentExists",
                           values={"RoleAssignmentId": taken.id})
        if _count(conn, role_assignments) >= MAX_ROLE_ASSIGNMENTS:
            raise BadRequest(f"The limit of {MAX_ROLE_ASSIGNMENTS} role assignments is reached.",
                             code="RoleAssignmentLimitExceeded")
        assignment_id = str(uuid.uuid4())
        conn.execute(role_assignments.insert().values(id=assignment_id, principal_id=principal.object_id,
                                                      role_id=role.id, scope=scope, scope_key=scope.lower(),
                                                      created=clock.now()))
        row = conn.execute(_assignments_query().where(role_assignments.c.id == assignment_id)).one()
    return _wire_assignment(row)


def list_assignments(ctx: Context, principal: str | None = None) -> list[dict[str, Any]]:
    query = _assignments_query().order_by(role_assignments.c.created, role_assignments.c.id)
    with ctx.engine.connect() as conn:
        if principal:
            query = query.where(role_assignments.c.principal_id == _principal_row(conn, principal).object_id)
        rows = conn.execute(query).all()
    return [_wire_assignment(row) for row in rows]


def unassign(ctx: Context, assignment_id: str) -> dict[str, Any]:
    """Remove an assignment by its id (or its ARM id)."""
    assignment_id = assignment_id.rsplit("/roleAssignments/", 1)[-1]
    with ctx.engine.begin() as conn:
        row = conn.execute(_assignments_query().where(role_assignments.c.id == assignment_id.lower())).first()
        if row is None:
            raise NotFound("The role assignment does not exist.", code="RoleAssignmentNotFound",
                           values={"RoleAssignmentId": assignment_id[:64]})
        conn.execute(delete(role_assignments).where(role_assignments.c.id == row.id))
    return _wire_assignment(row)


def grants_of(ctx: Context, object_id: str) -> permissions.EffectivePermissions:
    """What a principal's assignments allow on the account: one indexed read of its own rows."""
    return grants_at(ctx, object_id, config.account_scope(ctx.account))


def grants_at(ctx: Context, object_id: str, scope: str) -> permissions.EffectivePermissions:
    """What a principal's assignments allow at an ARM ``scope`` (a resource group of the
    management API): those at it or above it."""
    query = (select(role_assignments.c.scope, role_definitions.c.permissions)
             .join(role_definitions, role_definitions.c.id == role_assignments.c.role_id)
             .where(role_assignments.c.principal_id == object_id))
    with ctx.engine.connect() as conn:
        rows = conn.execute(query).all()
    return permissions.effective(((row.scope, _grant(row.permissions)) for row in rows), scope)


def _grant(stored: dict[str, Any]) -> permissions.Grant:
    return permissions.Grant(actions=tuple(stored.get("actions", ())), not_actions=tuple(stored.get("notActions", ())),
                             data_actions=tuple(stored.get("dataActions", ())),
                             not_data_actions=tuple(stored.get("notDataActions", ())))
