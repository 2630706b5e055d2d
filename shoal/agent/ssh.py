"""The node's SSH server: where the users of ComputeNode_AddUser log in (remoteloginsettings).

One server per node, as each VM of a pool has its own sshd. Its port is reserved when the agent
starts (a socket bound but not listening: a connection is refused, not left hanging) and said in
the hello; the server itself (asyncssh, ~15 MB) starts only once the node has a user, so nodes
nobody logs into pay nothing for it.

A login is checked against the node's list as the control plane last sent it (`PUT /users` on
the file server, and every hello): an unknown, deleted or expired user is refused, a password
against its scrypt hash, a key against the one given. A session runs as that user's real Linux
account, in the node root, with the node's `AZ_BATCH_*` environment; no port forwarding, no
agent forwarding, no SFTP. Deleting a user ends its sessions and kills its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import pwd
import signal
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.agent.certificates import REMOTE_USER, NodeCertificate, install
from shoal.agent.users import NodeUsers, UserProvisionError
from shoal.passwords import password_matches

log = logging.getLogger("shoal.agent.ssh")

MAX_USERS = 100
LOGIN_TIMEOUT_S = 30.0
CHUNK = 64 * 1024


class UsersRefused(Exception):
    """A user list the agent will not apply: (HTTP status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LoginUser:
    name: str
    account: pwd.struct_passwd
    expiry: datetime
    password_hash: str | None
    public_key: bytes | None  # the key's SSH wire form, as asyncssh compares them

    def usable(self) -> bool:
        return datetime.now(UTC) < self.expiry


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise UsersRefused(400, "expiryTime must be a string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsersRefused(400, "expiryTime is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _entries(payload: Any) -> tuple[int, list[dict[str, Any]]]:
    if not isinstance(payload, dict):
        raise UsersRefused(400, "the body must be an object")
    generation, users = payload.get("generation"), payload.get("users")
    if isinstance(generation, bool) or not isinstance(generation, int) or not isinstance(users, list) \
            or len(users) > MAX_USERS or not all(isinstance(u, dict) and isinstance(u.get("name"), str)
                                                 for u in users):
        raise UsersRefused(400, "expected {generation: int, users: [{name, …}]} with at most 100 users")
    return generation, users


class NodeLogins:
    """The node's login users and the SSH server that lets them in."""

    def __init__(self, host: str, root: Path, key_path: Path, users: Callable[[], NodeUsers | None],
                 environment: Callable[[pwd.struct_passwd], dict[str, str]],
                 certificates: Callable[[], list[NodeCertificate]] = list) -> None:
        self.root = root
        # The pool's certificates: those for remote users go into each login user's ~/certs.
        self._certificates = certificates
        self.key_path = key_path
        self._node_users = users
        self._environment = environment
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]
        self._users: dict[str, LoginUser] = {}
        self._generation = -1
        self._server: Any = None
        self._sessions: dict[str, set[Any]] = {}
        self._lock = asyncio.Lock()

    # ---- the list ------------------------------------------------------------------------------

    async def apply(self, payload: Any) -> None:
        """Make the node's users what ``payload`` says (a list older than the last one applied
        is ignored). Raises UsersRefused."""
        generation, entries = _entries(payload)
        if entries:
            _import_quietly()
        async with self._lock:
            if generation <= self._generation:
                return
            node_users = self._node_users()
            if node_users is None:
                raise UsersRefused(501, "the agent does not run as root: it cannot create users")
            wanted = {e["name"]: e for e in entries}
            for name in set(self._users) - set(wanted):
                await self._remove(node_users, name)
            applied: dict[str, LoginUser] = {}
            for name, entry in wanted.items():
                applied[name] = await self._ensure(node_users, entry)
            self._users = applied
            self._generation = generation
            if applied and self._server is None:
                await self._start()

    async def _ensure(self, node_users: NodeUsers, entry: dict[str, Any]) -> LoginUser:
        import asyncssh

        key = entry.get("sshPublicKey")
        public_key = None
        if key is not None:
            try:
                public_key = asyncssh.import_public_key(str(key)).public_data
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise UsersRefused(400, f"the SSH key of {entry['name']!r} cannot be read") from exc
        password_hash = entry.get("passwordHash")
        try:
            account = await asyncio.to_thread(node_users.ensure_login_user, entry["name"],
                                              bool(entry.get("isAdmin")))
        except (UserProvisionError, OSError) as exc:
            raise UsersRefused(500, f"cannot create the user {entry['name']!r}: {exc}") from exc
        certificates = self._certificates()
        if certificates:
            try:
                await asyncio.to_thread(install, Path(account.pw_dir), certificates, REMOTE_USER,
                                        (account.pw_uid, account.pw_gid))
            except OSError as exc:
                log.error("cannot install the pool's certificates for %r: %s", entry["name"], exc.strerror)
        return LoginUser(entry["name"], account, _parse_time(entry.get("expiryTime")),
                         password_hash if isinstance(password_hash, str) else None, public_key)

    async def _remove(self, node_users: NodeUsers, name: str) -> None:
        for connection in self._sessions.pop(name, set()):
            connection.close()
        try:
            await asyncio.to_thread(node_users.remove_login_user, name)
        except (UserProvisionError, OSError) as exc:
            log.error("cannot remove the node user %r: %s", name, exc)

    def forget(self) -> None:
        """The node was reimaged (its users went with the old disk) or rebooted: the next hello
        sends the list again."""
        for connections in self._sessions.values():
            for connection in connections:
                connection.close()
        self._sessions.clear()
        self._users = {}
        self._generation = -1

    def usable(self, name: str) -> LoginUser | None:
        user = self._users.get(name)
        return user if user is not None and user.usable() else None

    # ---- the server ----------------------------------------------------------------------------

    async def _start(self) -> None:
        import asyncssh

        key = await asyncio.to_thread(self._host_key)
        self._server = await asyncssh.listen(
            sock=self._sock, server_host_keys=[key], server_factory=lambda: _Server(self),
            process_factory=self._session, encoding=None, login_timeout=LOGIN_TIMEOUT_S,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False, allow_pty=True)
        log.info("SSH server listening on port %d", self.port)

    def _host_key(self) -> Any:
        """The node's host key, kept beside its root so a reboot keeps it (a reimage makes a new one)."""
        import asyncssh

        with contextlib.suppress(FileNotFoundError, asyncssh.KeyImportError):
            return asyncssh.read_private_key(str(self.key_path))
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        return key

    def track(self, name: str, connection: Any) -> None:
        self._sessions.setdefault(name, set()).add(connection)

    def untrack(self, connection: Any) -> None:
        for connections in self._sessions.values():
            connections.discard(connection)

    async def close(self) -> None:
        self.forget()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self._sock.close()

    async def _session(self, process: Any) -> None:
        user = self.usable(process.get_extra_info("username"))
        if user is None:
            process.exit(1)
            return
        account = user.account
        shell = account.pw_shell or "/bin/sh"
        argv = [shell, "-c", process.command] if process.command else [shell, "-l"]
        env = self._environment(account)
        env["SHELL"] = shell
        options: dict[str, Any] = {"cwd": str(self.root), "env": env, "start_new_session": True}
        if os.geteuid() == 0:
            options.update(user=account.pw_uid, group=account.pw_gid,
                           extra_groups=os.getgrouplist(account.pw_name, account.pw_gid))
        terminal = process.get_terminal_type()
        try:
            if terminal:
                env["TERM"] = terminal
                code = await _run_on_terminal(process, argv, options)
            else:
                code = await _run_on_pipes(process, argv, options)
        except OSError as exc:
            process.stderr.write(f"cannot start {shell}: {exc.strerror}\n".encode())
            code = 127
        process.exit(code if code >= 0 else 128 - code)


async def _run_on_pipes(process: Any, argv: list[str], options: dict[str, Any]) -> int:
    child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                 **options)
    stdin, stdout, stderr = child.stdin, child.stdout, child.stderr
    assert stdin is not None and stdout is not None and stderr is not None

    async def feed() -> None:
        with contextlib.suppress(Exception):
            while chunk := await process.stdin.read(CHUNK):
                stdin.write(chunk)
                await stdin.drain()
        with contextlib.suppress(Exception):
            stdin.close()

    async def relay(source: asyncio.StreamReader, target: Any) -> None:
        while chunk := await source.read(CHUNK):
            target.write(chunk)
            await target.drain()

    feeding = asyncio.ensure_future(feed())
    try:
        await asyncio.gather(relay(stdout, process.stdout), relay(stderr, process.stderr))
        return await child.wait()
    finally:
        feeding.cancel()
        _kill_group(child.pid)


async def _run_on_terminal(process: Any, argv: list[str], options: dict[str, Any]) -> int:
    master, slave = os.openpty()
    _set_size(master, process.get_terminal_size())
    try:
        child = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave, **options)
    finally:
        os.close(slave)
    loop = asyncio.get_running_loop()
    output_done = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(master, CHUNK)
        except OSError:
            data = b""
        if data:
            process.stdout.write(data)
            return
        loop.remove_reader(master)
        if not output_done.done():
            output_done.set_result(None)

    loop.add_reader(master, readable)

    async def feed() -> None:
        import asyncssh

        while True:
            try:
                chunk = await process.stdin.read(CHUNK)
            except asyncssh.TerminalSizeChanged as change:
                _set_size(master, (change.width, change.height, 0, 0))
                continue
            except Exception:  # noqa: BLE001 - the client went away
                return
            if not chunk:
                return
            with contextlib.suppress(OSError):
                os.write(master, chunk)

    feeding = asyncio.ensure_future(feed())
    try:
        code = await child.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(output_done, 1.0)
        return code
    finally:
        feeding.cancel()
        loop.remove_reader(master)
        os.close(master)
        _kill_group(child.pid)


def _import_quietly() -> None:
    """asyncssh still defines DSA keys, which cryptography warns about at import: not news for a log."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DSA is deprecated")
        import asyncssh  # noqa: F401


def _set_size(fd: int, size: Any) -> None:
    with contextlib.suppress(Exception):
        width, height = int(size[0]), int(size[1])
        if width > 0 and height > 0:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _kill_group(pid: int) -> None:
    """What the session started dies with it (its own session, so its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@functools.cache
def _server_class() -> type:
    import asyncssh

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def __init__(self, logins: NodeLogins) -> None:
            self.logins = logins
            self.connection: Any = None

        def connection_made(self, conn: Any) -> None:
            self.connection = conn

        def connection_lost(self, exc: Exception | None) -> None:
            self.logins.untrack(self.connection)

        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        async def validate_password(self, username: str, password: str) -> bool:
            user = self.logins.usable(username)
            if user is None or user.password_hash is None:
                return False
            if not await asyncio.to_thread(password_matches, password, user.password_hash):
                return False
            self.logins.track(username, self.connection)
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: Any) -> bool:
            user = self.logins.usable(username)
            if user is None or user.public_key is None or key.public_data != user.public_key:
                return False
            self.logins.track(username, self.connection)
            return True

        def kbdint_auth_supported(self) -> bool:
            return False

    return Server


def _Server(logins: NodeLogins) -> Any:  # noqa: N802 - a factory standing for the class asyncssh calls
    return _server_class()(logins)
