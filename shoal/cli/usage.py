"""`shoal usage`: what pools and jobs used (node-hours, core-hours) and, with prices, what it
would have cost (beyond Azure; prices: shoal/service/prices.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from shoal.cli.common import client_for, console, data_dir_option, json_option, or_exit
from shoal.config import default_data_dir
from shoal.service import prices as prices_service


def load_prices(path: Path | None, data_dir: Path) -> prices_service.Prices:
    try:
        return prices_service.load(path or data_dir / prices_service.PRICES_FILE, missing_ok=path is None)
    except prices_service.PricesError as exc:
        raise click.BadParameter(str(exc), param_hint="--prices") from None


def _money(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


@click.command("usage")
@data_dir_option
@click.option("--prices", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Hourly prices per VM size: {\"size\": {\"dedicated\": P, \"spot\": P}} "
                   "(default: prices.json in the data dir, if any).")
@json_option
def usage(data_dir: Path | None, prices: Path | None, as_json: bool) -> None:
    """Node-hours and core-hours of every pool and job since the account began, and their cost."""
    table_prices = load_prices(prices, data_dir or default_data_dir())
    client = client_for(data_dir)
    ledger = or_exit(lambda: client.get("/shoal/v1/usage"))
    jobs = list(ledger["jobs"])
    while ledger.get("nextJob"):
        after = ledger["nextJob"]
        ledger = or_exit(lambda after=after: client.request("GET", "/shoal/v1/usage", {"after": after}).json())
        jobs.extend(ledger["jobs"])
    ledger = prices_service.priced({**ledger, "jobs": jobs, "nextJob": None}, table_prices)
    if as_json:
        click.echo(json.dumps(ledger))
        return
    pools = Table("pool", "vm size", "kind", "node-hours", "core-hours", "cost", title="pools")
    for row in ledger["pools"]:
        pools.add_row(row["poolId"], row["vmSize"], row["kind"], f"{row['nodeHours']:.3f}", f"{row['coreHours']:.3f}",
                      _money(row["cost"]))
    job_table = Table("job", "pool", "vm size", "kind", "attempts", "task-hours", "core-hours", "cost", title="jobs")
    for row in ledger["jobs"]:
        job_table.add_row(row["jobId"], row["poolId"], row["vmSize"], row["kind"], str(row["attempts"]),
                          f"{row['taskHours']:.4f}", f"{row['coreHours']:.4f}", _money(row["cost"]))
    for table in (pools, job_table):
        for column in table.columns:
            column.overflow = "fold"
        console.print(table)
