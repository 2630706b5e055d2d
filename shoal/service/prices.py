"""What a workload would cost (beyond Azure): hourly prices per VM size and node kind, applied to
the usage ledger (shoal/service/ledger.py) for `shoal usage` and the dashboard's usage page.

Prices are configuration: a JSON file, `{"standard_d2s_v3": {"dedicated": 0.096, "spot": 0.0192}}`
(`prices.json` in the data dir, or `shoal usage --prices FILE`). A pool's cost is its node-hours at
its size's price; a job's, its core-hours at the price of one of the size's vCPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.model.catalog import find_vm_size

PRICES_FILE = "prices.json"
# A price list is a few hundred sizes at most; a bigger file is a mistake, not a price list.
MAX_PRICES_BYTES = 1024 * 1024
Prices = dict[str, dict[str, float]]


class PricesError(ValueError):
    """The price list cannot be used; the message names the file and what is wrong."""


def load(path: Path, *, missing_ok: bool) -> Prices:
    """The prices in ``path``; none when it does not exist and ``missing_ok``."""
    try:
        if path.stat().st_size > MAX_PRICES_BYTES:
            raise PricesError(f"{path} is over {MAX_PRICES_BYTES} bytes")
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise PricesError(f"cannot read {path}: it does not exist") from None
    except (OSError, ValueError) as exc:
        raise PricesError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise PricesError(f"{path} must hold an object of VM sizes")
    prices: Prices = {}
    for size, kinds in raw.items():
        if not isinstance(kinds, dict) or not all(k in ("dedicated", "spot") and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and v >= 0 for k, v in kinds.items()):
            raise PricesError(f"{path}: {size!r} must map dedicated/spot to a price of at least 0")
        prices[size.lower()] = {k: float(v) for k, v in kinds.items()}
    return prices


def priced(ledger: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """The ledger with a `cost` on every row whose size and kind have a price (None otherwise)."""
    for pool in ledger["pools"]:
        price = prices.get(pool["vmSize"], {}).get(pool["kind"])
        pool["cost"] = None if price is None else pool["nodeHours"] * price
    for job in ledger["jobs"]:
        price = prices.get(job["vmSize"], {}).get(job["kind"])
        size = find_vm_size(job["vmSize"])
        job["cost"] = None if price is None else job["coreHours"] * price / (size.vcpus if size else 1)
    return ledger
