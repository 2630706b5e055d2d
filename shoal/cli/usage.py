"""`shoal usage`: what pools and jobs used (node-hours, core-hours) and, with prices, what it
would have cost (beyond Azure).

Prices are configuration, applied here: a JSON file of hourly prices per VM size and node kind,
`{"standard_d2s_v3": {"dedicated": 0.096, "spot": 0.0192}}` (`--prices FILE`, else `prices.json`
in the data dir when there is one). A pool's cost is its node-hours at its size's price; a job's,
its core-hours at the price of one of the size's vCPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from shoal.cli.common import client_for, console, data_dir_option, json_option, or_exit
from shoal.config import default_data_dir
from shoal.model.catalog import find_vm_size

PRICES_FILE = "prices.json"


def load_prices(path: Path | None, data_dir: Path) -> dict[str, dict[str, float]]:
    chosen = path or (data_dir / PRICES_FILE)
    if path is None and not chosen.exists():
        return {}
    try:
        raw = json.loads(chosen.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {chosen}: {exc}", param_hint="--prices") from None
    prices: dict[str, dict[str, float]] = {}
    if not isinstance(raw, dict):
        raise click.BadParameter(f"{chosen} must hold an object of VM sizes", param_hint="--prices")
    for size, kinds in raw.items():
        if not isinstance(kinds, dict) or not all(k in ("dedicated", "spot") and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and v >= 0 for k, v in kinds.items()):
            raise click.BadParameter(f"{chosen}: {size!r} must map dedicated/spot to a price of at least 0",
                                     param_hint="--prices")
        prices[size.lower()] = {k: float(v) for k, v in kinds.items()}
    return prices


def priced(ledger: dict[str, Any], prices: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The ledger with a `cost` on every row whose size and kind have a price (None otherwise)."""
    for pool in ledger["pools"]:
        price = prices.get(pool["vmSize"], {}).get(pool["kind"])
        pool["cost"] = None if price is None else pool["nodeHours"] * price
    for job in ledger["jobs"]:
        price = prices.get(job["vmSize"], {}).get(job["kind"])
        size = find_vm_size(job["vmSize"])
        job["cost"] = None if price is None else job["coreHours"] * price / (size.vcpus if size else 1)
    return ledger


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
    ledger = priced({**ledger, "jobs": jobs, "nextJob": None}, table_prices)
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
