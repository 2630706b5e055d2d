"""Where the CLI finds a Shoal to talk to: a data dir written by `shoal up`, or the same
environment variables `az batch` reads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from shoal.config import default_data_dir
from shoal.errors import BatchError


@dataclass(frozen=True)
class AccountInfo:
    name: str
    endpoint: str | None
    primary_key: str
    secondary_key: str

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "endpoint": self.endpoint, "primaryKey": self.primary_key,
                "secondaryKey": self.secondary_key}


def account_from_data_dir(data_dir: Path | None) -> AccountInfo:
    from shoal.store.db import create_store_engine
    from shoal.store.schema import accounts

    directory = Path(data_dir) if data_dir else default_data_dir()
    endpoint_file = directory / "endpoint.json"
    record = json.loads(endpoint_file.read_text()) if endpoint_file.exists() else {}
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
    return AccountInfo(row.name, record.get("endpoint"), row.primary_key, row.secondary_key)


def resolve_account(data_dir: Path | None) -> AccountInfo:
    endpoint = os.environ.get("AZURE_BATCH_ENDPOINT")
    name = os.environ.get("AZURE_BATCH_ACCOUNT")
    key = os.environ.get("AZURE_BATCH_ACCESS_KEY")
    if data_dir is None and endpoint and name and key:
        return AccountInfo(name, endpoint, key, key)
    return account_from_data_dir(data_dir)
