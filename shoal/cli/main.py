"""`shoal`: start the service, run an agent, and look at pools, jobs and tasks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from shoal.cli.common import client_for as _client
from shoal.cli.common import console, data_dir_option, json_option
from shoal.cli.common import or_exit as _or_exit
from shoal.cli.common import print_rows as _print
from shoal.config import PROVIDERS, Settings, default_data_dir, default_port

# Batch's task states (`shoal task list --state`).
TASK_STATES = ("active", "preparing", "running", "completed")
tls_option = click.option("--tls", is_flag=True,
                          help="Serve https with a certificate signed by a CA Shoal keeps in the data dir "
                               "(its path is printed: trust it with SSL_CERT_FILE / REQUESTS_CA_BUNDLE).")
secrets_key_option = click.option(
    "--secrets-key-file", default=None, type=click.Path(path_type=Path), envvar="SHOAL_SECRETS_KEY_FILE",
    help="Seal the store's secrets (account keys, token signing keys, certificates' pfx and passwords) "
         "with the key in this file (0600; make one with `shoal secrets-key new FILE`).")


def log_options(command: Any) -> Any:
    """--log-level and --log-format, for the commands that run a server."""
    from shoal.logs import FORMATS, LEVELS

    command = click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
                           envvar="SHOAL_LOG_FORMAT",
                           help="One line of text or one JSON object per record, on stderr.")(command)
    return click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default="info",
                        envvar="SHOAL_LOG_LEVEL",
                        show_default=True, help="info logs every Batch request; debug adds agents' calls.")(command)


@click.group()
@click.version_option(package_name="shoal")
def main() -> None:
    """Shoal: a self-hosted batch service that speaks the Azure Batch API."""


def _serve(host: str, port: int, data_dir: Path | None, database: str | None, local_provider: bool,
           logging: tuple[str, str], time_scale: float = 1.0, spot: dict[str, Any] | None = None,
           sample_lag: float | None = None, tls: bool = False, authority: str | None = None,
           secrets_key_file: Path | None = None) -> None:
    from shoal import server

    settings = Settings(data_dir=data_dir or default_data_dir(), host=host, port=port, database_url=database,
                        time_scale=time_scale, log_level=logging[0], log_format=logging[1], tls=tls,
                        authority=authority, **(spot or {}))
    if secrets_key_file is not None:
        settings.secrets_key_file = secrets_key_file
    if sample_lag is not None:
        settings.sample_lag_s = sample_lag

    def ready(plane: Any) -> None:
        name, (key, _) = server.DEFAULT_ACCOUNT, plane.keys
        click.echo(f"Shoal is up.\n  endpoint: {plane.endpoint}\n  account:  {name}\n"
                   f"  key:      {key}\n  data:     {settings.data_dir}")
        if plane.certificate is not None:
            click.echo(f"  CA:       {plane.certificate.ca_file}\n"
                       f"            (trust it: SSL_CERT_FILE / REQUESTS_CA_BUNDLE={plane.certificate.ca_file})")
        sys.stdout.flush()

    try:
        server.run(settings, local_provider=local_provider, on_ready=ready)
    except server.CannotStart as exc:
        # Unwrapped: the message names paths a user copies.
        console.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=default_port, show_default="$SHOAL_PORT or 8580", type=int,
              help="0 picks a free port.")
@data_dir_option
@click.option("--database", default=None, help="postgresql://… (default: SQLite in the data dir)")
@click.option("--time-scale", default=1.0, type=click.FloatRange(min=0.001), show_default=True,
              help="Run autoscale intervals, metric samples and eviction schedules this many times faster.")
@click.option("--spot-capacity", default=None, type=click.IntRange(min=0),
              help="Spot nodes this machine can hold at once (default: unlimited).")
@click.option("--spot-eviction-rate", default=0.0, type=click.FloatRange(min=0), show_default=True,
              help="Evictions per spot node-hour (scaled time); a pool's metadata "
                   "'shoal:spotEvictionRate' overrides it.")
@click.option("--spot-recovery", default=300.0, type=click.FloatRange(min=0), show_default=True,
              help="Seconds (scaled time) before a preempted node gets capacity back.")
@click.option("--sample-lag", default=None, type=click.FloatRange(min=0),
              help="Seconds (scaled time) before a metric sample is visible to formulas [default: 60].")
@click.option("--nodes-dir", default=None, type=click.Path(path_type=Path),
              help="Where local nodes' roots live (default: $SHOAL_NODES_DIR; as root "
                   "/var/lib/shoal/nodes/<hash>, else <data dir>/nodes).")
@click.option("--provider", type=click.Choice(PROVIDERS), default="local", show_default=True,
              help="local: every node is an agent process on this machine; sim: simulated agents that run "
                   "tasks as timers (see shoal/providers/README.md), for thousands of nodes.")
@click.option("--auto-storage", default=None, metavar="CONNECTION_STRING",
              help="The account's linked storage (for autoStorageContainerName): a storage connection "
                   "string with AccountName and AccountKey (default: $SHOAL_AUTO_STORAGE; none).")
@log_options
@tls_option
@secrets_key_option
def up(host: str, port: int, data_dir: Path | None, database: str | None, time_scale: float,
       spot_capacity: int | None, spot_eviction_rate: float, spot_recovery: float, sample_lag: float | None,
       nodes_dir: Path | None, provider: str, auto_storage: str | None, log_level: str, log_format: str,
       tls: bool, secrets_key_file: Path | None) -> None:
    """Run everything in one process: API, scheduler and local compute nodes."""
    if auto_storage:
        from shoal import storage

        try:
            storage.check_connection_string(auto_storage)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--auto-storage") from None
        # Read through shoal.config like every setting; the key never appears in a log.
        os.environ["SHOAL_AUTO_STORAGE"] = auto_storage
    if provider == "sim":
        from shoal.providers.sim import SIM_NODE_CAPACITY

        # The machine's node capacity is the provider's: simulated nodes cost kilobytes, not a
        # process each. An explicit SHOAL_MAX_NODES still wins.
        os.environ.setdefault("SHOAL_MAX_NODES", str(SIM_NODE_CAPACITY))
    _serve(host, port, data_dir, database, True, (log_level, log_format), time_scale,
           {"spot_capacity": spot_capacity, "spot_eviction_rate": spot_eviction_rate,
            "spot_recovery_s": spot_recovery, "nodes_dir": nodes_dir, "provider": provider}, sample_lag, tls,
           secrets_key_file=secrets_key_file)


@main.command("server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=default_port, show_default="$SHOAL_PORT or 8580", type=int,
              help="0 picks a free port.")
@data_dir_option
@click.option("--database", default=None, help="postgresql://… (default: SQLite in the data dir)")
@log_options
@tls_option
@click.option("--authority", default=None, metavar="URL",
              help="The URL bearer tokens name as their issuer and clients sign in at (default: this "
                   "server's endpoint); replicas behind one address give that address.")
@secrets_key_option
def server_command(host: str, port: int, data_dir: Path | None, database: str | None, log_level: str,
                   log_format: str, tls: bool, authority: str | None, secrets_key_file: Path | None) -> None:
    """Run the control plane alone (nodes join with `shoal agent`)."""
    if authority is not None and not authority.startswith(("https://", "http://")):
        raise click.BadParameter("an http(s) URL is required", param_hint="--authority")
    _serve(host, port, data_dir, database, False, (log_level, log_format), tls=tls, authority=authority,
           secrets_key_file=secrets_key_file)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run a node agent (see `shoal agent --help`)."""
    from shoal.agent.cli import cli_main

    raise SystemExit(cli_main(ctx.args))


@main.group()
def account() -> None:
    """The Batch account Shoal serves."""


@account.command("show")
@data_dir_option
@json_option
def account_show(data_dir: Path | None, as_json: bool) -> None:
    from shoal.cli.config import account_from_data_dir

    info = _or_exit(lambda: account_from_data_dir(data_dir))
    if as_json:
        click.echo(json.dumps(info.to_json()))
        return
    for key, value in info.to_json().items():
        click.echo(f"{key:>13}: {value}")  # never wrapped: a key must copy whole


@main.group()
def pool() -> None:
    """Pools."""


@pool.command("list")
@data_dir_option
@json_option
def pool_list(data_dir: Path | None, as_json: bool) -> None:
    client = _client(data_dir)
    rows = _or_exit(lambda: list(client.list("/pools")))
    _print(rows, [("id", "id"), ("state", "state"), ("allocation", "allocationState"), ("vm size", "vmSize"),
                  ("dedicated", "currentDedicatedNodes"), ("spot", "currentLowPriorityNodes"),
                  ("slots/node", "taskSlotsPerNode")], as_json)


@pool.command("join-token")
@click.argument("pool_id")
@data_dir_option
@json_option
def pool_join_token(pool_id: str, data_dir: Path | None, as_json: bool) -> None:
    """Print the token an agent started by hand joins POOL_ID with (`shoal agent --join-token`)."""
    client = _client(data_dir)
    answer = _or_exit(lambda: client.get(f"/shoal/v1/pools/{pool_id}/join-token"))
    click.echo(json.dumps(answer) if as_json else answer["joinToken"])


@pool.command("autoscale-now")
@click.argument("pool_id")
@data_dir_option
@json_option
def pool_autoscale_now(pool_id: str, data_dir: Path | None, as_json: bool) -> None:
    """Evaluate POOL_ID's autoscale formula now and apply it (beyond Azure)."""
    client = _client(data_dir)
    run = _or_exit(lambda: client.request("POST", f"/shoal/v1/pools/{pool_id}/autoscale-now").json())
    if as_json:
        click.echo(json.dumps(run))
        return
    console.print(f"{run.get('timestamp')}  {run.get('results')}", highlight=False)
    if run.get("error"):
        console.print(f"[red]error[/red] {run['error'].get('code')}: {run['error'].get('message')}")


@main.group()
def node() -> None:
    """Compute nodes."""


@node.command("list")
@click.argument("pool_id")
@data_dir_option
@json_option
def node_list(pool_id: str, data_dir: Path | None, as_json: bool) -> None:
    client = _client(data_dir)
    rows = _or_exit(lambda: list(client.list(f"/pools/{pool_id}/nodes")))
    _print(rows, [("id", "id"), ("state", "state"), ("dedicated", "isDedicated"),
                  ("running", "runningTasksCount"), ("succeeded", "totalTasksSucceeded")], as_json)


@node.command("preempt")
@click.argument("pool_id")
@click.argument("node_id")
@data_dir_option
@json_option
def node_preempt(pool_id: str, node_id: str, data_dir: Path | None, as_json: bool) -> None:
    """Take a spot node's capacity away now, as an eviction would (beyond Azure)."""
    client = _client(data_dir)
    _or_exit(lambda: client.request("POST", f"/shoal/v1/pools/{pool_id}/nodes/{node_id}/preempt"))
    if as_json:
        click.echo(json.dumps({"poolId": pool_id, "nodeId": node_id, "preempted": True}))
    else:
        console.print(f"preempted {node_id}", highlight=False)


@main.group()
def job() -> None:
    """Jobs."""


@job.command("list")
@data_dir_option
@json_option
def job_list(data_dir: Path | None, as_json: bool) -> None:
    client = _client(data_dir)
    rows = _or_exit(lambda: list(client.list("/jobs")))
    _print(rows, [("id", "id"), ("state", "state"), ("pool", "poolInfo/poolId"), ("priority", "priority")],
           as_json)


@main.group()
def task() -> None:
    """Tasks."""


@task.command("list")
@click.argument("job_id")
@click.option("--state", default=None, type=click.Choice(TASK_STATES), help="only tasks in this state")
@data_dir_option
@json_option
def task_list(job_id: str, state: str | None, data_dir: Path | None, as_json: bool) -> None:
    client = _client(data_dir)
    params = {"$filter": f"state eq '{state}'"} if state else None
    rows = _or_exit(lambda: list(client.list(f"/jobs/{job_id}/tasks", params)))
    _print(rows, [("id", "id"), ("state", "state"), ("exit", "executionInfo/exitCode"),
                  ("result", "executionInfo/result"), ("node", "nodeInfo/nodeId")], as_json)


@task.command("why")
@click.argument("job_id")
@click.argument("task_id")
@data_dir_option
@json_option
def task_why(job_id: str, task_id: str, data_dir: Path | None, as_json: bool) -> None:
    """Say in plain words why TASK_ID has not started (beyond Azure)."""
    client = _client(data_dir)
    answer = _or_exit(lambda: client.get(f"/shoal/v1/jobs/{job_id}/tasks/{task_id}/why"))
    if as_json:
        click.echo(json.dumps(answer))
        return
    console.print(f"[bold]{answer['jobId']}/{answer['taskId']}[/bold] is {answer['state']}", highlight=False)
    for reason in answer["reasons"]:
        console.print(f"  [yellow]{reason['code']}[/yellow]: {reason['message']}", highlight=False)


@task.command("wait")
@click.argument("job_id")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds")
@data_dir_option
@json_option
def task_wait(job_id: str, timeout: float, data_dir: Path | None, as_json: bool) -> None:
    """Wait until every task of JOB_ID has completed; exit 1 if any failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    client = _client(data_dir)
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                  disable=as_json) as progress:
        bar = progress.add_task(job_id, total=None, detail="")
        while True:
            counts = _or_exit(lambda: client.get(f"/jobs/{job_id}/taskcounts"))["taskCounts"]
            total = counts["active"] + counts["running"] + counts["completed"]
            progress.update(bar, total=total or None, completed=counts["completed"],
                            detail=f"active {counts['active']} · running {counts['running']} · "
                                   f"failed {counts['failed']}")
            if counts["active"] == 0 and counts["running"] == 0:
                break
            if time.monotonic() > deadline:
                console.print("[red]timed out[/red]")
                raise SystemExit(2)
            time.sleep(0.5)
    failures = _failures(client, job_id) if counts["failed"] else []
    if as_json:
        click.echo(json.dumps({**counts, "failures": failures}))
    else:
        for failure in failures:
            console.print(f"[red]failed[/red] {failure['id']}: exit code {failure['exitCode']}"
                          + (f", {failure['code']}" if failure["code"] else "")
                          + (f" — {failure['message']}" if failure["message"] else ""), highlight=False)
    raise SystemExit(1 if counts["failed"] else 0)


def _failures(client: Any, job_id: str, most: int = 20) -> list[dict[str, Any]]:
    """The first `most` failed tasks of a job: id, exit code and what its failureInfo says."""
    found = []
    for row in client.list(f"/jobs/{job_id}/tasks", {"$filter": "executionInfo/result eq 'failure'",
                                                     "$select": "id,executionInfo"}):
        info = row.get("executionInfo") or {}
        failure = info.get("failureInfo") or {}
        found.append({"id": row["id"], "exitCode": info.get("exitCode"), "code": failure.get("code"),
                      "message": failure.get("message")})
        if len(found) >= most:
            break
    return found
from shoal.cli.apps import app  # noqa: E402
from shoal.cli.autoscale import autoscale  # noqa: E402
from shoal.cli.control import down, reset, status  # noqa: E402
from shoal.cli.principals import account_auth_modes, account_regenerate_key, principal, tenant  # noqa: E402
from shoal.cli.roles import role  # noqa: E402
from shoal.cli.secrets_key import secrets_key  # noqa: E402
from shoal.cli.usage import usage  # noqa: E402

for command in (app, autoscale, status, down, reset, principal, tenant, role, usage, secrets_key):
    main.add_command(command)
account.add_command(account_auth_modes)
account.add_command(account_regenerate_key)
