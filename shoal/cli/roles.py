"""`shoal role …`: role definitions (Azure's built-ins and custom roles) and their assignments to
service principals, through `/shoal/v1/roledefinitions` and `/shoal/v1/roleassignments`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shoal.cli.common import client_for, data_dir_option, json_option, or_exit, print_rows
from shoal.errors import BatchError

# `--scope` may name the account's own place in ARM's tree instead of spelling it out.
SCOPE_WORDS = ("account", "resource-group", "subscription")
# az's flat custom-role JSON (`az role definition create --role-definition`) → ARM's properties.
_FLAT_KEYS = {"name": "roleName", "rolename": "roleName", "description": "description",
              "assignablescopes": "assignableScopes"}
_PERMISSION_KEYS = {"actions": "actions", "notactions": "notActions", "dataactions": "dataActions",
                    "notdataactions": "notDataActions"}


@click.group()
def role() -> None:
    """Role definitions and role assignments: what each service principal may do."""


@role.command("list")
@data_dir_option
@json_option
def role_list(data_dir: Path | None, as_json: bool) -> None:
    """Every role: Azure's built-ins and the custom roles."""
    client = client_for(data_dir)
    rows = or_exit(lambda: client.get("/shoal/v1/roledefinitions"))["value"]
    print_rows(rows, [("name", "properties/roleName"), ("type", "properties/type"), ("id", "name")], as_json)


@role.command("show")
@click.argument("role_ref", metavar="ROLE")
@data_dir_option
def role_show(role_ref: str, data_dir: Path | None) -> None:
    """A role's definition (by name or id), as JSON."""
    client = client_for(data_dir)
    click.echo(json.dumps(or_exit(lambda: client.get(f"/shoal/v1/roledefinitions/{role_ref}")), indent=2))


def _from_file(path: Path) -> dict[str, Any]:
    """A role definition file: ARM's shape (`{"properties": {…}}`) or az's flat one."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--file") from None
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{path}: a JSON object is required", param_hint="--file")
    if isinstance(loaded.get("properties"), dict):
        return dict(loaded["properties"])
    props: dict[str, Any] = {}
    block: dict[str, Any] = {}
    for key, value in loaded.items():
        folded = str(key).lower()
        if folded in _FLAT_KEYS:
            props[_FLAT_KEYS[folded]] = value
        elif folded in _PERMISSION_KEYS:
            block[_PERMISSION_KEYS[folded]] = value
    if block:
        props["permissions"] = [block]
    return props


@role.command("create")
@click.argument("name", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A role definition in Azure's JSON (ARM's or az's shape).")
@click.option("--description", default=None)
@click.option("--action", "actions", multiple=True, help="An action the role grants (repeatable; `*` wildcards).")
@click.option("--not-action", "not_actions", multiple=True, help="An action excluded from --action.")
@click.option("--data-action", "data_actions", multiple=True, help="A data action the role grants.")
@click.option("--not-data-action", "not_data_actions", multiple=True, help="A data action excluded from --data-action.")
@click.option("--scope", "scopes", multiple=True, help="An assignable scope (default: the account's).")
@data_dir_option
@json_option
def role_create(name: str | None, file: Path | None, description: str | None, actions: tuple[str, ...],
                not_actions: tuple[str, ...], data_actions: tuple[str, ...], not_data_actions: tuple[str, ...],
                scopes: tuple[str, ...], data_dir: Path | None, as_json: bool) -> None:
    """A custom role NAME (or the role in --file), e.g.
    `shoal role create submitter --data-action 'Microsoft.Batch/batchAccounts/jobs/*'
    --not-data-action Microsoft.Batch/batchAccounts/jobs/delete`."""
    props = _from_file(file) if file else {}
    block = dict((props.get("permissions") or [{}])[0]) if isinstance(props.get("permissions"), list) else {}
    for key, given in (("actions", actions), ("notActions", not_actions), ("dataActions", data_actions),
                       ("notDataActions", not_data_actions)):
        if given:
            block[key] = list(given)
    if name:
        props["roleName"] = name
    if description is not None:
        props["description"] = description
    if scopes:
        props["assignableScopes"] = list(scopes)
    props["permissions"] = [block]
    if not props.get("roleName"):
        raise click.UsageError("a role needs a NAME (or a roleName in --file)")
    client = client_for(data_dir)
    created = or_exit(lambda: client.request("POST", "/shoal/v1/roledefinitions",
                                             body={"properties": props}).json())
    click.echo(json.dumps(created) if as_json else f"created {created['properties']['roleName']} ({created['name']})")


@role.command("delete")
@click.argument("role_ref", metavar="ROLE")
@data_dir_option
@json_option
def role_delete(role_ref: str, data_dir: Path | None, as_json: bool) -> None:
    """Delete a custom role (by name or id); one still assigned is refused."""
    client = client_for(data_dir)
    gone = or_exit(lambda: client.request("DELETE", f"/shoal/v1/roledefinitions/{role_ref}").json())
    click.echo(json.dumps(gone) if as_json else f"deleted {gone['properties']['roleName']}")


def _assignments(client: Any, principal: str | None) -> dict[str, Any]:
    return or_exit(lambda: client.request("GET", "/shoal/v1/roleassignments",
                                          params={"principal": principal} if principal else None).json())


def _scope(client: Any, principal: str, scope: str | None) -> str | None:
    """--scope as given, or the account's (or its group's, or its subscription's) for a word."""
    if scope is None or scope.lower() not in SCOPE_WORDS:
        return scope
    account_scope = str(_assignments(client, principal)["accountScope"])
    parts = account_scope.split("/")
    return {"account": account_scope, "resource-group": "/".join(parts[:5]),
            "subscription": "/".join(parts[:3])}[scope.lower()]


@role.command("assign")
@click.argument("principal")
@click.argument("role_ref", metavar="ROLE")
@click.option("--scope", default=None,
              help="An ARM scope, or account (default), resource-group or subscription.")
@data_dir_option
@json_option
def role_assign(principal: str, role_ref: str, scope: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Give PRINCIPAL (name, client id or object id) the role ROLE (name or id) at a scope."""
    client = client_for(data_dir)
    props = {"principalId": principal, "roleDefinitionId": role_ref}
    chosen = _scope(client, principal, scope)
    if chosen:
        props["scope"] = chosen
    made = or_exit(lambda: client.request("POST", "/shoal/v1/roleassignments", body={"properties": props}).json())
    if as_json:
        click.echo(json.dumps(made))
    else:
        click.echo(f"assigned {made['properties']['roleName']} to {principal} at {made['properties']['scope']} "
                   f"({made['name']})")


@role.command("unassign")
@click.argument("target", metavar="ASSIGNMENT_ID | PRINCIPAL")
@click.argument("role_ref", metavar="[ROLE]", required=False)
@click.option("--scope", default=None, help="Which of the principal's assignments of ROLE, if it has several.")
@data_dir_option
@json_option
def role_unassign(target: str, role_ref: str | None, scope: str | None, data_dir: Path | None,
                  as_json: bool) -> None:
    """Remove an assignment, by its id or by PRINCIPAL and ROLE; it stops counting at once."""
    client = client_for(data_dir)
    assignment_id = target
    if role_ref is not None:
        chosen = _scope(client, target, scope)
        wanted = role_ref.lower()
        found = [row for row in _assignments(client, target)["value"]
                 if wanted in (row["properties"]["roleName"].lower(), row["properties"]["roleDefinitionId"].lower(),
                               row["properties"]["roleDefinitionId"].rsplit("/", 1)[-1].lower())
                 and (chosen is None or row["properties"]["scope"].lower() == chosen.rstrip("/").lower())]
        if len(found) != 1:
            or_exit(lambda: _raise_unassign(len(found)))
        assignment_id = found[0]["name"]
    gone = or_exit(lambda: client.request("DELETE", f"/shoal/v1/roleassignments/{assignment_id}").json())
    props = gone["properties"]
    click.echo(json.dumps(gone) if as_json else f"removed {props['roleName']} from {props['principalName']} at "
               f"{props['scope']} ({gone['name']})")


def _raise_unassign(count: int) -> None:
    if count == 0:
        raise BatchError("The principal holds no such role at that scope.", code="RoleAssignmentNotFound")
    raise BatchError(f"The principal holds the role at {count} scopes: choose one with --scope.",
                     code="RoleAssignmentAmbiguous")


@role.command("assignments")
@click.option("--principal", default=None, help="Only this principal's (name, client id or object id).")
@data_dir_option
@json_option
def role_assignments(principal: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Role assignments: who holds which role, where."""
    client = client_for(data_dir)
    rows = _assignments(client, principal)["value"]
    print_rows(rows, [("principal", "properties/principalName"), ("role", "properties/roleName"),
                      ("scope", "properties/scope"), ("id", "name")], as_json)
