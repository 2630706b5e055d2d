"""`shoal principal …` and `shoal tenant …`: the service principals that sign in to Shoal's token
endpoint, managed through `/shoal/v1/` with the account's key like every other command."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shoal.cli.common import client_for, data_dir_option, json_option, or_exit, print_rows


@click.group()
def principal() -> None:
    """Service principals (app registrations with a client secret) for bearer-token sign-in."""


@principal.command("create")
@click.argument("name")
@click.option("--tenant", "tenant_id", default=None, help="Tenant id (default: the account's tenant).")
@data_dir_option
@json_option
def principal_create(name: str, tenant_id: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Create NAME; prints its tenant id, client id and secret. The secret is shown only now."""
    client = client_for(data_dir)
    body = {"displayName": name, **({"tenantId": tenant_id} if tenant_id else {})}
    created = or_exit(lambda: client.request("POST", "/shoal/v1/principals", body=body).json())
    if as_json:
        click.echo(json.dumps(created))
        return
    for label, key in (("name", "displayName"), ("tenant id", "tenantId"), ("client id", "clientId"),
                       ("object id", "objectId"), ("secret", "clientSecret")):
        click.echo(f"{label:>10}: {created[key]}")
    click.echo("The secret is shown only once: keep it now.")


@principal.command("list")
@data_dir_option
@json_option
def principal_list(data_dir: Path | None, as_json: bool) -> None:
    client = client_for(data_dir)
    rows = or_exit(lambda: client.get("/shoal/v1/principals"))["value"]
    print_rows(rows, [("name", "displayName"), ("tenant id", "tenantId"), ("client id", "clientId"),
                      ("created", "created")], as_json)


@principal.command("delete")
@click.argument("principal_id", metavar="NAME_OR_CLIENT_ID")
@data_dir_option
def principal_delete(principal_id: str, data_dir: Path | None) -> None:
    """Delete a principal: its tokens stop working at once."""
    client = client_for(data_dir)
    or_exit(lambda: client.request("DELETE", f"/shoal/v1/principals/{principal_id}"))
    click.echo(f"deleted {principal_id}")


@click.group()
def tenant() -> None:
    """Tenants: the account trusts the principals of its own tenant only."""


@tenant.command("create")
@click.argument("name")
@data_dir_option
@json_option
def tenant_create(name: str, data_dir: Path | None, as_json: bool) -> None:
    client = client_for(data_dir)
    created = or_exit(lambda: client.request("POST", "/shoal/v1/tenants", body={"displayName": name}).json())
    click.echo(json.dumps(created) if as_json else created["tenantId"])


@tenant.command("list")
@data_dir_option
@json_option
def tenant_list(data_dir: Path | None, as_json: bool) -> None:
    client = client_for(data_dir)
    rows = or_exit(lambda: client.get("/shoal/v1/tenants"))["value"]
    print_rows(rows, [("tenant id", "tenantId"), ("name", "displayName"), ("created", "created")], as_json)


@click.command("auth-modes")
@click.argument("modes", nargs=-1, metavar="[MODE]...")
@data_dir_option
@json_option
def account_auth_modes(modes: tuple[str, ...], data_dir: Path | None, as_json: bool) -> None:
    """Show the account's allowedAuthenticationModes, or set them to MODE... (SharedKey, AAD,
    TaskAuthenticationToken; SharedKey always stays)."""
    client = client_for(data_dir)
    path = "/shoal/v1/account/authentication-modes"
    if modes:
        names = [name for mode in modes for name in mode.split(",") if name]
        answer = or_exit(lambda: client.request("PUT", path, body={"allowedAuthenticationModes": names}).json())
    else:
        answer = or_exit(lambda: client.get(path))
    modes_now = answer["allowedAuthenticationModes"]
    click.echo(json.dumps({"allowedAuthenticationModes": modes_now}) if as_json else " ".join(modes_now))


@click.command("regenerate-key")
@click.argument("key_name", type=click.Choice(["primary", "secondary"], case_sensitive=False))
@data_dir_option
@json_option
def account_regenerate_key(key_name: str, data_dir: Path | None, as_json: bool) -> None:
    """Replace the account's primary or secondary key with a new random one: the old one is
    refused at once, the other keeps working (the management API's regenerateKeys). Signed with
    the account's key; the server rewrites the endpoint file, so later commands use the new key."""
    client = client_for(data_dir)
    body = {"keyName": key_name.capitalize()}
    answer = or_exit(lambda: client.request("POST", "/shoal/v1/account/regenerate-key", body=body).json())
    if as_json:
        click.echo(json.dumps({"accountName": answer["accountName"], "primaryKey": answer["primary"],
                               "secondaryKey": answer["secondary"]}))
    else:
        click.echo(f"the {key_name.lower()} key of {answer['accountName']} was regenerated "
                   f"(`shoal account show` shows it)")
