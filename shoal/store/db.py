"""Opening the store: engine, SQLite pragmas, and migrations to the newest schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _normalise_url(url: str) -> str:
    # psycopg 3 is the driver we ship; accept the plain scheme users type.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def create_store_engine(url: str) -> Engine:
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL + NORMAL: a commit survives a crash of the process (kill -9), which is the
            # durability Shoal promises; only an OS crash could lose the last commits.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


# One number for "a Shoal control plane serves this database" (pg_advisory_lock takes a bigint).
SERVER_LOCK_KEY = 0x5340_414C  # "SHOAL"-ish, stable across releases


class StoreInUse(RuntimeError):
    """Another Shoal server already serves this database."""


def hold_store(engine: Engine) -> Connection | None:
    """Claim the database for this process until it exits; None on SQLite, where the data-dir lock
    already guarantees one server. Two servers on one PostgreSQL would both schedule from their
    own snapshots and over-fill nodes; until replicas coordinate, the second one is refused.
    The lock is a session lock: it goes with the connection, so a killed server frees it at once."""
    if engine.dialect.name != "postgresql":
        return None
    conn = engine.connect()
    got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": SERVER_LOCK_KEY}).scalar()
    conn.commit()
    if not got:
        conn.close()
        raise StoreInUse("another Shoal server is already serving this PostgreSQL database; "
                         "several servers on one database are not supported yet")
    return conn


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_store(url: str) -> Engine:
    engine = create_store_engine(url)
    migrate(engine)
    return engine
