"""`shoal app …`: the account's applications and their packages (what Azure manages through its
management plane), through `/shoal/v1/applications` (docs/application-packages.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from shoal.cli.common import client_for, data_dir_option, json_option, or_exit, print_rows

_BASE = "/shoal/v1/applications"
_APP_COLUMNS = [("id", "id"), ("display name", "displayName"), ("allow updates", "allowUpdates"),
                ("default version", "defaultVersion")]
_PACKAGE_COLUMNS = [("version", "version"), ("state", "state"), ("size (bytes)", "sizeBytes"),
                    ("activated", "lastActivationTime")]


def _path(app_id: str, *rest: str) -> str:
    return "/".join([_BASE, quote(app_id, safe=""), *(quote(part, safe="") for part in rest)])


def _show(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result, indent=2))


@click.group()
def app() -> None:
    """Applications and their versioned packages, deployed to nodes by applicationPackageReferences."""


@app.command("create")
@click.argument("app_id", metavar="APP")
@click.option("--display-name", default=None)
@click.option("--allow-updates/--no-allow-updates", default=True, show_default=True,
              help="Whether a version's package may be replaced by a new upload.")
@data_dir_option
def app_create(app_id: str, display_name: str | None, allow_updates: bool, data_dir: Path | None) -> None:
    """Create an application (or change an existing one's settings)."""
    client = client_for(data_dir)
    body: dict[str, Any] = {"allowUpdates": allow_updates}
    if display_name is not None:
        body["displayName"] = display_name
    _show(or_exit(lambda: client.request("PUT", _path(app_id), body=body).json()))


@app.command("update")
@click.argument("app_id", metavar="APP")
@click.option("--display-name", default=None)
@click.option("--allow-updates/--no-allow-updates", default=None)
@data_dir_option
def app_update(app_id: str, display_name: str | None, allow_updates: bool | None, data_dir: Path | None) -> None:
    """Change an application's display name or allowUpdates."""
    client = client_for(data_dir)
    body: dict[str, Any] = {}
    if display_name is not None:
        body["displayName"] = display_name
    if allow_updates is not None:
        body["allowUpdates"] = allow_updates
    _show(or_exit(lambda: client.request("PATCH", _path(app_id), body=body).json()))


@app.command("set-default")
@click.argument("app_id", metavar="APP")
@click.argument("version", required=False)
@data_dir_option
def app_set_default(app_id: str, version: str | None, data_dir: Path | None) -> None:
    """Make VERSION (an active package) the default; without VERSION, clear the default."""
    client = client_for(data_dir)
    _show(or_exit(lambda: client.request("PATCH", _path(app_id), body={"defaultVersion": version}).json()))


@app.command("list")
@data_dir_option
@json_option
def app_list(data_dir: Path | None, as_json: bool) -> None:
    """Every application of the account."""
    client = client_for(data_dir)
    print_rows(or_exit(lambda: client.get(_BASE))["value"], _APP_COLUMNS, as_json)


@app.command("show")
@click.argument("app_id", metavar="APP")
@data_dir_option
def app_show(app_id: str, data_dir: Path | None) -> None:
    """An application with its packages, as JSON."""
    client = client_for(data_dir)
    _show(or_exit(lambda: client.get(_path(app_id))))


@app.command("delete")
@click.argument("app_id", metavar="APP")
@data_dir_option
def app_delete(app_id: str, data_dir: Path | None) -> None:
    """Delete an application and all its packages."""
    client = client_for(data_dir)
    or_exit(lambda: client.request("DELETE", _path(app_id)))
    click.echo(f"Deleted application {app_id}.")


@app.group("package")
def package() -> None:
    """An application's packages (one zip per version)."""


@package.command("add")
@click.argument("app_id", metavar="APP")
@click.argument("version")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@data_dir_option
def package_add(app_id: str, version: str, file: Path, data_dir: Path | None) -> None:
    """Upload FILE (a .zip) as VERSION of APP and activate it."""
    client = client_for(data_dir)
    data = file.read_bytes()
    _show(or_exit(lambda: client.upload(_path(app_id, "versions", version), data, "application/zip").json()))


@package.command("list")
@click.argument("app_id", metavar="APP")
@data_dir_option
@json_option
def package_list(app_id: str, data_dir: Path | None, as_json: bool) -> None:
    """An application's packages."""
    client = client_for(data_dir)
    print_rows(or_exit(lambda: client.get(_path(app_id, "versions")))["value"], _PACKAGE_COLUMNS, as_json)


@package.command("delete")
@click.argument("app_id", metavar="APP")
@click.argument("version")
@data_dir_option
def package_delete(app_id: str, version: str, data_dir: Path | None) -> None:
    """Delete one version's package."""
    client = client_for(data_dir)
    or_exit(lambda: client.request("DELETE", _path(app_id, "versions", version)))
    click.echo(f"Deleted {app_id} version {version}.")
