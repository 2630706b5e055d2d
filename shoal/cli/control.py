"""`shoal status`, `shoal down` and `shoal reset`: the server that serves a data dir, seen and
handled from outside.

Whether a server runs is the kernel's answer, not a pid file's: the server holds an exclusive
lock on `shoal.lock` for its whole life (server/startup.py) and writes its pid into it, so a
stale pid of a crashed server is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import click
import httpx

from shoal.cli.common import data_dir_option, json_option
from shoal.config import ENDPOINT_FILE, LOCK_FILE, METRICS_TOKEN_FILE, default_data_dir, default_nodes_dir


def server_pid(data_dir: Path) -> int | None:
    """The pid of the server holding ``data_dir``, or None when none holds it."""
    try:
        handle = open(data_dir / LOCK_FILE)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _endpoint_record(data_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((data_dir / ENDPOINT_FILE).read_text())
        if isinstance(record, dict):
            return record
    return {}


def _scrape(endpoint: str, data_dir: Path) -> dict[str, Any]:
    """Readiness and the counts of `/metrics` (read with the data dir's scrape token)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, Any] = {"ready": False, "tasks": {}, "pools": {}}
    with httpx.Client(timeout=5.0) as http:
        with contextlib.suppress(httpx.HTTPError):
            found["ready"] = http.get(f"{endpoint}/ready").status_code == 200
        token = (data_dir / METRICS_TOKEN_FILE).read_text().strip() if (data_dir / METRICS_TOKEN_FILE).exists() \
            else ""
        try:
            response = http.get(f"{endpoint}/metrics", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            return found
    if response.status_code != 200:
        return found
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "shoal_tasks":
                found["tasks"][sample.labels["state"]] = int(sample.value)
            elif sample.name == "shoal_nodes":
                states = found["pools"].setdefault(sample.labels["pool"], {})
                states[sample.labels["state"]] = states.get(sample.labels["state"], 0) + int(sample.value)
    return found


def status_of(data_dir: Path) -> dict[str, Any]:
    pid = server_pid(data_dir)
    record = _endpoint_record(data_dir)
    answer: dict[str, Any] = {"dataDir": str(data_dir), "running": pid is not None, "pid": pid,
                              "endpoint": record.get("endpoint") if pid is not None else None}
    if pid is not None and record.get("endpoint"):
        answer.update(_scrape(record["endpoint"], data_dir))
    return answer


@click.command("status")
@data_dir_option
@json_option
def status(data_dir: Path | None, as_json: bool) -> None:
    """Whether a server runs in the data dir, where, and what it holds."""
    data_dir = data_dir or default_data_dir()
    answer = status_of(data_dir)
    if as_json:
        click.echo(json.dumps(answer))
        return
    if not answer["running"]:
        click.echo(f"Shoal is not running in {data_dir} (start it with `shoal up`).")
        return
    click.echo(f"Shoal is running in {data_dir}\n  pid:      {answer['pid']}\n  endpoint: {answer['endpoint']}\n"
               f"  ready:    {'yes' if answer.get('ready') else 'no'}")
    tasks = answer.get("tasks") or {}
    if tasks:
        click.echo("  tasks:    " + ", ".join(f"{state} {count}" for state, count in tasks.items()))
    for pool_id, states in sorted((answer.get("pools") or {}).items()):
        click.echo(f"  pool {pool_id}: " + ", ".join(f"{state} {count}" for state, count in sorted(states.items())))


@click.command("down")
@data_dir_option
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0), help="seconds")
def down(data_dir: Path | None, timeout: float) -> None:
    """Stop the server that serves the data dir (its nodes' agents stop with it)."""
    data_dir = data_dir or default_data_dir()
    pid = server_pid(data_dir)
    if pid is None:
        click.echo(f"Shoal is not running in {data_dir}.")
        return
    if pid <= 0:
        raise click.ClickException(f"the server holding {data_dir / LOCK_FILE} did not record its pid")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while server_pid(data_dir) is not None:
        if time.monotonic() > deadline:
            raise click.ClickException(f"the server (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.1)
    click.echo(f"Shoal (pid {pid}) stopped.")


@click.command("reset")
@data_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(data_dir: Path | None, yes: bool) -> None:
    """Delete everything the data dir holds: pools, nodes and their files, jobs, tasks, keys."""
    data_dir = data_dir or default_data_dir()
    if server_pid(data_dir) is not None:
        raise click.ClickException(f"Shoal is running in {data_dir}: stop it first with `shoal down`.")
    if not data_dir.exists():
        click.echo(f"Nothing to reset: {data_dir} does not exist.")
        return
    if not (data_dir / LOCK_FILE).exists() and not (data_dir / ENDPOINT_FILE).exists():
        # Never empty a folder that is not a Shoal data dir (a mistyped --data-dir).
        raise click.ClickException(f"{data_dir} is not a Shoal data dir")
    nodes_dir = Path(_endpoint_record(data_dir).get("nodesDir") or default_nodes_dir(data_dir))
    if not yes:
        click.confirm(f"Delete every pool, node, job, task and the account keys of {data_dir}?", abort=True)
    if nodes_dir.exists() and not nodes_dir.is_relative_to(data_dir):
        shutil.rmtree(nodes_dir)
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    click.echo(f"Reset {data_dir}.")
