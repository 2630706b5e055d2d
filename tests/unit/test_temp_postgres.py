"""TempPostgres stands up a real server that SQLAlchemy can use, and leaves nothing behind."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from shoal.testing import TempPostgres, find_postgres_bin_dir

pytestmark = pytest.mark.skipif(
    find_postgres_bin_dir() is None,
    reason="PostgreSQL server binaries missing: run scripts/ensure-postgres.sh",
)


def query_one(url: str, statement: str):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(statement)).scalar_one()
    finally:
        engine.dispose()


def test_start_connect_stop_removes_directory():
    server = TempPostgres()
    server.start()
    directory = server.directory
    try:
        assert server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert query_one(server.url, "select 1") == 1
        assert query_one(server.url, "select current_database()") == "shoal"
        assert query_one(server.url, "show listen_addresses") == "127.0.0.1"
        assert (server.socket_dir / f".s.PGSQL.{server.port}").exists()
    finally:
        server.stop()
    assert directory is not None and not directory.exists()
    server.stop()  # stopping twice is harmless


def test_template_per_test_databases():
    with TempPostgres(database="template_shoal") as server:
        engine = create_engine(server.url)
        with engine.begin() as connection:
            connection.execute(text("create table marker (value int)"))
            connection.execute(text("insert into marker values (42)"))
        engine.dispose()
        first = server.create_database("test_one", template="template_shoal")
        second = server.create_database("test_two", template="template_shoal")
        assert query_one(first, "select value from marker") == 42
        engine = create_engine(first)
        with engine.begin() as connection:
            connection.execute(text("update marker set value = 1"))
        engine.dispose()
        assert query_one(second, "select value from marker") == 42  # copies are independent
        server.drop_database("test_one")
        assert query_one(server.url, "select count(*) from pg_database where datname = 'test_one'") == 0
