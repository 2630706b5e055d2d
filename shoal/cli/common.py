"""What the `shoal` commands share: the options every command takes, the REST client of the data
dir's server, one-line errors with a hint, and tables (or JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoal.errors import BatchError

console = Console()
data_dir_option: Any = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                                    help="Shoal's data directory (default: $SHOAL_DATA_DIR or a per-user folder).")
json_option: Any = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def client_for(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from shoal.cli.client import BatchClient
    from shoal.cli.config import resolve_account

    return or_exit(lambda: BatchClient(resolve_account(data_dir)))


def or_exit(action):  # type: ignore[no-untyped-def]
    try:
        return action()
    except BatchError as error:
        hint = HINTS.get(error.code)
        # The reason Batch gives for a refused value (or a refused call) says what to change.
        detail = error.values.get("Reason") or error.values.get("AuthorizationErrorDetail")
        text = f"{error.code}: {error.message}" + (f"\n  {detail}" if detail else "") + (f"\n  hint: {hint}" if hint else "")
        console.print("[red]error[/red] " + escape(text), highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


# What to do next, for the errors a CLI user meets first.
HINTS = {
    "AuthenticationFailed": "the key the CLI used (the data dir's endpoint.json, or $AZURE_BATCH_ACCESS_KEY) is not "
                            "this server's: pass the right --data-dir, or unset AZURE_BATCH_*",
    "PoolNotFound": "`shoal pool list` shows the pools there are",
    "JobNotFound": "`shoal job list` shows the jobs there are",
    "NodeNotFound": "`shoal node list POOL_ID` shows a pool's nodes",
    "TaskNotFound": "`shoal task list JOB_ID` shows a job's tasks",
}


def print_rows(rows: list[dict[str, Any]], columns: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(*[title for title, _ in columns])
    for column in table.columns:
        column.overflow = "fold"  # ids are shown whole (folded), never cut to fit
    for row in rows:
        table.add_row(*[dig(row, path) for _, path in columns])
    console.print(table)


def dig(row: dict[str, Any], path: str) -> str:
    value: Any = row
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)
