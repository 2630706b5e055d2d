"""Start-up of the control plane process: the private data directory, the locks that keep it to
one server, the account, the listening socket and the endpoint file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shoal import clock
from shoal.config import ENDPOINT_FILE, LOCK_FILE, METRICS_TOKEN_FILE
from shoal.service import accounts as accounts_service
from shoal.service import ids, principals, resource_groups, roles, tokens
from shoal.store.schema import accounts
from shoal.store.sealing import Sealer, SealingError, purpose, seal_store

DEFAULT_ACCOUNT = "shoal"
_log = logging.getLogger(__name__)


class CannotStart(RuntimeError):
    """Shoal cannot start with these settings; the message says why and what to change."""


class AlreadyRunning(CannotStart):
    """Another Shoal process already serves this data directory or this database."""


def make_private(data_dir: Path) -> None:
    """The data directory holds the keys and every node token: only Shoal's user may enter it,
    and whatever the server creates there (database, WAL, logs, endpoint file) is 0600. An older
    data directory made with looser modes is tightened, its files too."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for child in data_dir.iterdir():
        if child.is_file() and not child.is_symlink() and child.stat().st_uid == os.geteuid():
            child.chmod(0o600)


def hold_data_dir(data_dir: Path) -> Any:
    """One server per data directory: two would both schedule and both start agents for the
    same nodes. The lock is the kernel's, so it goes with the process, even after kill -9."""
    handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"another Shoal server is already using {data_dir}") from None
    # Who holds it, for `shoal down` and `shoal status` (which check the lock, not just the pid).
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def ensure_metrics_token(data_dir: Path) -> str:
    """The bearer token a scraper (Prometheus' `credentials_file`) reads `/metrics` with: made
    once, kept 0600 in the data dir, so a scrape configuration survives restarts."""
    path = data_dir / METRICS_TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def check_nodes_dir_reachable(nodes_dir: Path) -> None:
    """As root, tasks run as other users, who must be able to walk down to their node's folders:
    refuse a nodes dir below a folder they cannot enter rather than fail every task later."""
    if os.geteuid() != 0:
        return
    current = nodes_dir.absolute()
    while not current.exists():
        current = current.parent
    for folder in [current, *current.parents]:
        if not folder.stat().st_mode & 0o001:
            raise CannotStart(
                f"task users cannot enter {folder} (mode {folder.stat().st_mode & 0o777:o}), which holds the "
                f"nodes dir {nodes_dir}; choose a nodes dir (--nodes-dir, SHOAL_NODES_DIR) that others may reach")


def open_secrets(engine: Any, key_file: Path | None) -> Sealer:
    """The sealer of the store's secrets, once the store's sealed values and the configured key
    (or its absence) are known to go together; values still in the clear are sealed now when a
    key is configured."""
    try:
        sealer = Sealer.from_file(key_file)
        sealed_now = seal_store(engine, sealer)
    except SealingError as exc:
        raise CannotStart(str(exc)) from None
    if sealed_now:
        _log.info("sealed %d secrets of the store with the secrets key", sealed_now)
    return sealer


def ensure_account(engine: Any, name: str = DEFAULT_ACCOUNT, sealer: Sealer | None = None) -> tuple[str, str]:
    sealer = sealer or Sealer()
    primary, secondary = purpose(accounts, "primary_key"), purpose(accounts, "secondary_key")
    with engine.begin() as conn:
        # Only the columns every revision has: tests make accounts in stores of old revisions.
        row = conn.execute(select(accounts.c.primary_key, accounts.c.secondary_key)
                           .where(accounts.c.name == name)).first()
        if row is not None:
            return str(sealer.unseal(row.primary_key, primary)), str(sealer.unseal(row.secondary_key, secondary))
        keys = (ids.account_key(), ids.account_key())
        conn.execute(accounts.insert().values(name=name, primary_key=sealer.seal(keys[0], primary),
                                              secondary_key=sealer.seal(keys[1], secondary), created=clock.now()))
        return keys


def ensure_identity(engine: Any, name: str = DEFAULT_ACCOUNT, sealer: Sealer | None = None) -> tokens.SigningKeys:
    """The account's tenant, the built-in roles, the account's resource group and the token signing
    keys, made on the first start."""
    with engine.begin() as conn:
        principals.ensure_tenant(conn, name)
        roles.ensure_builtin_roles(conn)
        resource_groups.ensure_account_group(conn, name, accounts_service.LOCATION)
    return tokens.load_or_create(engine, sealer or Sealer())


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY on accepted sockets, which spares
    # every keep-alive request a 40 ms delayed-ACK stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def write_endpoint_file(data_dir: Path, record: dict[str, str]) -> None:
    """Where clients (the CLI, tests) find this server and the account's name and keys, so that
    none of them needs the database. It holds the keys, so it is 0600 from its first byte: made
    by ``mkstemp`` (O_EXCL, mode 0600 whatever the umask) beside its final name and renamed over
    it, so no reader ever sees it partly written or with a looser mode. Written at every start
    (the keys are read from the store then); whatever changes the keys must write it again."""
    path = data_dir / ENDPOINT_FILE
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{ENDPOINT_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(json.dumps(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
