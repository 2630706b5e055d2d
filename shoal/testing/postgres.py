"""A throw-away PostgreSQL server for tests: its own cluster in a temp dir, loopback only, trust auth.

Typical use is one server per test session and one database per test, cloned from a migrated
template with `create_database(name, template=...)`, which takes milliseconds.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
DEFAULT_DATABASE = "shoal"
# initdb refuses to run as root; these are the accounts it is run as instead, first existing wins.
SYSTEM_USER = "postgres"
FALLBACK_SYSTEM_USER = "shoaltest"
START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120

# Durability is pointless for a cluster that is deleted after the tests; dropping it makes them faster.
_TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class TempPostgresError(RuntimeError):
    """The temporary server could not be created, started or stopped."""


def find_postgres_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        # Debian links only some tools into PATH; resolve to the real versioned directory.
        real_dir = Path(on_path).resolve().parent
        if (real_dir / "pg_ctl").exists():
            return real_dir
        if shutil.which("pg_ctl"):
            return Path(on_path).parent
    candidates = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "initdb").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())

    return max(candidates, key=version, default=None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unprivileged_user() -> pwd.struct_passwd:
    for name in (SYSTEM_USER, FALLBACK_SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_SYSTEM_USER)


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _signal_postmaster(pid_file: Path, signum: int) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signum)
    except (OSError, ValueError, IndexError):
        pass  # already gone, or the file is unreadable: nothing more we can do


class TempPostgres:
    """A private PostgreSQL cluster; `start()` it, use `url`, `stop()` it (or use it as a context manager)."""

    def __init__(self, database: str = DEFAULT_DATABASE, bin_dir: Path | str | None = None) -> None:
        self.database = database
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self.port: int | None = None
        self.directory: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TempPostgres:
        if self.directory is not None:
            raise TempPostgresError("this TempPostgres is already started")
        bin_dir = self._bin_dir or find_postgres_bin_dir()
        if bin_dir is None:
            raise TempPostgresError("initdb/pg_ctl not found; run scripts/ensure-postgres.sh")
        self._bin_dir = bin_dir
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None
        base = Path(tempfile.gettempdir())
        if self._run_as is not None and not _traversable_by_others(base):
            base = Path("/tmp")  # the server's user must be able to reach its own data directory
        self.directory = Path(tempfile.mkdtemp(prefix="shoal-pg-", dir=base))
        try:
            self._create_cluster()
            self._start_server()
            self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and delete its directory. Idempotent."""
        directory = self.directory
        if directory is None:
            return
        try:
            pid_file = directory / "data" / "postmaster.pid"
            if pid_file.exists():
                result = self._run(
                    ["pg_ctl", "-D", str(directory / "data"), "-m", "immediate", "-w", "stop"], check=False
                )
                if result.returncode != 0:
                    # Deleting the directory under a live server would orphan it; SIGQUIT is immediate shutdown.
                    _signal_postmaster(pid_file, signal.SIGQUIT)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            self.directory = None
            self.port = None

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- connection details ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise TempPostgresError("the server is not running")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def socket_dir(self) -> Path:
        if self.directory is None:
            raise TempPostgresError("the server is not running")
        return self.directory / "socket"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` when given) and return its SQLAlchemy URL."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self._execute_admin(statement)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        # FORCE ends leftover sessions (e.g. a pooled engine a test forgot to dispose).
        self._execute_admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals -------------------------------------------------------------------------------

    def _execute_admin(self, statement: sql.Composed) -> None:
        if self.port is None:
            raise TempPostgresError("the server is not running")
        # CREATE/DROP DATABASE cannot run inside a transaction, hence autocommit.
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(statement)

    def _create_cluster(self) -> None:
        assert self.directory is not None
        self.socket_dir.mkdir()
        if self._run_as is not None:
            for path in [self.directory, self.socket_dir]:
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        data = self.directory / "data"
        self._run(
            [
                "initdb",
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        settings = {**_TEST_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# Added by shoal.testing.TempPostgres\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        assert self.directory is not None
        self.port = _free_port()
        log = self.directory / "server.log"
        result = self._run(
            [
                "pg_ctl",
                "-D",
                str(self.directory / "data"),
                "-l",
                str(log),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            check=False,
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise TempPostgresError(f"pg_ctl start failed: {result.stderr.strip()}\n{tail}")

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bin_dir is not None and self.directory is not None
        run_as = self._run_as
        result = subprocess.run(
            [str(self._bin_dir / argv[0]), *argv[1:]],
            cwd=self.directory,  # a directory the unprivileged user can enter
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        if check and result.returncode != 0:
            raise TempPostgresError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result
