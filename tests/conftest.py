"""Fixtures shared by every test: a real `shoal up`, an SDK client, image and pool helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testing.server import RunningShoal, running_shoal

for name in [n for n in os.environ if n.startswith("SHOAL_")]:
    del os.environ[name]


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    """One `shoal up` per test module (starting one costs about a second)."""
    with running_shoal(tmp_path_factory.mktemp("shoal")) as running:
        yield running


@pytest.fixture(scope="module")
def client(shoal: RunningShoal) -> Any:
    return shoal.client()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A throw-away PostgreSQL cluster on loopback, started only by tests that ask for it."""
    from shoal.testing.postgres import TempPostgres

    server = TempPostgres().start()
    try:
        yield server
    finally:
        server.stop()
