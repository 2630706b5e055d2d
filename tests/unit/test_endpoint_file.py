"""The endpoint file holds the account keys: 0600 from its first byte, and the CLI's only source."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shoal.cli.config import account_from_data_dir
from shoal.config import ENDPOINT_FILE
from shoal.errors import BatchError
from shoal.server.startup import ensure_account, write_endpoint_file

RECORD = {"endpoint": "http://127.0.0.1:1", "account": "shoal", "primaryKey": "p" * 88, "secondaryKey": "s" * 88}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_it_is_0600_whatever_the_umask_and_whatever_was_there(tmp_path: Path) -> None:
    loose = tmp_path / ENDPOINT_FILE
    loose.write_text("{}")
    loose.chmod(0o644)
    old = os.umask(0)
    try:
        write_endpoint_file(tmp_path, RECORD)
    finally:
        os.umask(old)
    assert _mode(loose) == 0o600
    assert json.loads(loose.read_text()) == RECORD
    assert [p.name for p in tmp_path.iterdir()] == [ENDPOINT_FILE]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    write_endpoint_file(tmp_path, RECORD)
    with pytest.raises(TypeError):
        write_endpoint_file(tmp_path, {"endpoint": object()})  # type: ignore[dict-item]
    assert json.loads((tmp_path / ENDPOINT_FILE).read_text()) == RECORD
    assert [p.name for p in tmp_path.iterdir()] == [ENDPOINT_FILE]


def test_the_cli_takes_the_account_from_it(tmp_path: Path) -> None:
    write_endpoint_file(tmp_path, RECORD)
    info = account_from_data_dir(tmp_path)
    assert info.to_json() == {"name": "shoal", "endpoint": RECORD["endpoint"], "primaryKey": RECORD["primaryKey"],
                              "secondaryKey": RECORD["secondaryKey"]}


def test_an_endpoint_file_from_before_the_keys_falls_back_to_the_store(tmp_path: Path) -> None:
    from shoal.store.db import create_store_engine, migrate

    engine = create_store_engine(f"sqlite:///{tmp_path / 'shoal.db'}")
    try:
        migrate(engine)
        primary, secondary = ensure_account(engine)
    finally:
        engine.dispose()
    (tmp_path / ENDPOINT_FILE).write_text(json.dumps({"endpoint": "http://127.0.0.1:1", "account": "shoal"}))
    info = account_from_data_dir(tmp_path)
    assert (info.name, info.endpoint, info.primary_key, info.secondary_key) == (
        "shoal", "http://127.0.0.1:1", primary, secondary)


def test_no_data_at_all_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BatchError) as refused:
        account_from_data_dir(tmp_path)
    assert refused.value.code == "NotInitialised"
