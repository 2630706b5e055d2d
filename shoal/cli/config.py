"""Where the CLI finds a Shoal to talk to: the endpoint file `shoal up` writes into its data dir,
or the same environment variables `az batch` reads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.config import ENDPOINT_FILE, default_data_dir
from shoal.errors import BatchError


@dataclass(frozen=True)
class AccountInfo:
    name: str
    endpoint: str | None
    primary_key: str
    secondary_key: str
    # The CA an https endpoint's certificate is signed by (`shoal up --tls`); None: the system's.
    ca_file: str | None = None

    def to_json(self) -> dict[str, str | None]:
        record = {"name": self.name, "endpoint": self.endpoint, "primaryKey": self.primary_key,
                  "secondaryKey": self.secondary_key}
        if self.ca_file:
            record["caFile"] = self.ca_file
        return record


def account_from_data_dir(data_dir: Path | None) -> AccountInfo:
    """The account as the server wrote it into the data dir's endpoint file (0600). The CLI
    reads no database: it needs no access to SQLite's files, nor PostgreSQL's credentials."""
    directory = Path(data_dir) if data_dir else default_data_dir()
    endpoint_file = directory / ENDPOINT_FILE
    try:
        record = json.loads(endpoint_file.read_text())
    except FileNotFoundError:
        record = {}
    except (OSError, ValueError) as exc:
        raise BatchError(f"Cannot read {endpoint_file}: {exc}", code="NotInitialised") from None
    if not isinstance(record, dict):
        raise BatchError(f"{endpoint_file} is not a Shoal endpoint file.", code="NotInitialised")
    if all(isinstance(record.get(name), str) for name in ("account", "primaryKey", "secondaryKey")):
        ca_file = record.get("caFile") if isinstance(record.get("caFile"), str) else None
        return AccountInfo(record["account"], record.get("endpoint"), record["primaryKey"], record["secondaryKey"],
                           ca_file)
    return _account_from_store(directory, record)


def _account_from_store(directory: Path, record: dict[str, Any]) -> AccountInfo:
    """An endpoint file from before it held the keys (or none, with the server never started
    since): read the account from the store, as the CLI used to."""
    from sqlalchemy import select

    from shoal.store.db import create_store_engine
    from shoal.store.schema import accounts
    from shoal.store.sealing import is_sealed

    db = directory / "shoal.db"
    if record.get("database"):
        url = record["database"]
    elif db.exists():
        url = f"sqlite:///{db}"
    else:
        raise BatchError(f"No Shoal data in {directory}: run `shoal up` first.", code="NotInitialised")
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(accounts)).first()
    finally:
        engine.dispose()
    if row is None:
        raise BatchError(f"No account in {directory}: run `shoal up` first.", code="NotInitialised")
    if is_sealed(row.primary_key):
        raise BatchError(f"The account keys in {directory}'s store are sealed: start the server once (with its "
                         f"--secrets-key-file) so that it writes them to {ENDPOINT_FILE}.", code="NotInitialised")
    return AccountInfo(row.name, record.get("endpoint"), row.primary_key, row.secondary_key)


def resolve_account(data_dir: Path | None) -> AccountInfo:
    endpoint = os.environ.get("AZURE_BATCH_ENDPOINT")
    name = os.environ.get("AZURE_BATCH_ACCOUNT")
    key = os.environ.get("AZURE_BATCH_ACCESS_KEY")
    if data_dir is None and endpoint and name and key:
        return AccountInfo(name, endpoint, key, key)
    return account_from_data_dir(data_dir)
