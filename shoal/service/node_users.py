"""Login users of a compute node (ComputeNode_AddUser / UpdateUser / DeleteUser) and its remote
login settings (semantics §2.2: users are added, replaced and deleted only while the node is
idle or running).

The store is the truth: a user is written here, then the node's whole user list goes to its agent
(`nodeclient/control.py`), and a restarted agent gets the list again with its hello. A password is
never stored or sent as given: it becomes a salted scrypt hash, which the node's SSH server
checks (`shoal/passwords.py`, `agent/ssh.py`); it is never returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from shoal import clock
from shoal.errors import BatchError, Conflict, InvalidProperty, NotFound
from shoal.model.states import NodeState
from shoal.passwords import hash_password
from shoal.service import nodes as node_service
from shoal.service import request_body
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import node_users, nodes

DEFAULT_LIFETIME = timedelta(days=1)
MAX_PASSWORD_CHARS = 256
MAX_SSH_KEY_CHARS = 16 * 1024
# A node is a VM: a handful of login users. Bounded so one node's list stays one small message.
MAX_USERS_PER_NODE = 100
READY_STATES = (NodeState.IDLE, NodeState.RUNNING)


@dataclass(frozen=True)
class Delivery:
    """What the caller sends to the node once the store has the change."""

    node_id: str
    file_server_url: str | None
    token: str
    users: list[dict[str, Any]]
    generation: int


class NodeUserNotFound(NotFound):
    code = "NodeUserNotFound"


def _check_name(body: dict[str, Any]) -> str:
    name = v.string(body, "name", required=True, max_len=v.MAX_USER_NAME)
    assert name is not None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or any(c in name for c in ':/\\ ,"'):
        raise InvalidProperty("name", name, "A user name cannot hold control characters, spaces or any of :/\\,\".")
    return name


def _check_ssh_key(body: dict[str, Any]) -> str | None:
    key = v.string(body, "sshPublicKey", max_len=MAX_SSH_KEY_CHARS)
    if not key:
        return None
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(key.strip().encode())
    except Exception as exc:  # noqa: BLE001 - cryptography raises several kinds for a bad key
        raise InvalidProperty("sshPublicKey", key[:64],
                              "The value is not an SSH public key in OpenSSH format "
                              "(such as 'ssh-ed25519 AAAA… comment').") from exc
    return key.strip()


def _check_expiry(body: dict[str, Any], now: datetime) -> datetime:
    raw = body.get("expiryTime")
    if raw is None:
        return now + DEFAULT_LIFETIME
    when = clock.parse_iso(raw) if isinstance(raw, str) else None
    if when is None:
        raise InvalidProperty("expiryTime", raw, "The value must be a date and time in ISO 8601 format.")
    if when <= now:
        raise InvalidProperty("expiryTime", raw, "The expiry time must be in the future.")
    return when


def _parse_secrets(body: dict[str, Any], now: datetime) -> dict[str, Any]:
    password = v.string(body, "password", max_len=MAX_PASSWORD_CHARS)
    return {
        "expiry_time": _check_expiry(body, now),
        "password_hash": hash_password(password) if password else None,
        "ssh_public_key": _check_ssh_key(body),
    }


def parse_add(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    request_body.check(body, "node.adduser")
    name = _check_name(body)
    is_admin = v.boolean(body, "isAdmin", default=False)
    return {"name": name, "is_admin": bool(is_admin), **_parse_secrets(body, clock.now())}


def parse_replace(body: Any) -> dict[str, Any]:
    """NodeUpdateUserParameter replaces every property: one left out takes its default (no
    password, no key, expiry a day from now)."""
    body = v.require_object(body or {})
    request_body.check(body, "node.updateuser")
    return _parse_secrets(body, clock.now())


def _load_ready_node(conn: Connection, ctx: Context, pool_id: str, node_id: str) -> tuple[Any, Any]:
    pool, row = node_service.load(conn, ctx, pool_id, node_id)
    if row.state not in READY_STATES:
        raise Conflict(f"The node is {row.state}; its users can be changed only while it is idle or running.",
                       code="NodeNotReady")
    return pool, row


def _existing(conn: Connection, node_id: str, name: str) -> Any:
    return conn.execute(select(node_users.c.name).where(
        node_users.c.node_id == node_id, func.lower(node_users.c.name) == name.lower())).first()


def add(ctx: Context, pool_id: str, node_id: str, user: dict[str, Any]) -> Delivery:
    with ctx.engine.begin() as conn:
        pool, row = _load_ready_node(conn, ctx, pool_id, node_id)
        taken = {str(a.get("name", "")).lower() for a in (pool.spec or {}).get("userAccounts") or []
                 if isinstance(a, dict)}
        if _existing(conn, row.id, user["name"]) is not None or user["name"].lower() in taken:
            raise Conflict("The specified node user already exists.", code="NodeUserExists")
        count = conn.execute(select(func.count()).select_from(node_users).where(node_users.c.node_id == row.id))
        if count.scalar_one() >= MAX_USERS_PER_NODE:
            raise Conflict(f"A node has at most {MAX_USERS_PER_NODE} users.", code="TooManyNodeUsers")
        conn.execute(insert(node_users).values(node_id=row.id, **user))
        return _delivery(conn, row)


def replace(ctx: Context, pool_id: str, node_id: str, name: str, values: dict[str, Any]) -> Delivery:
    with ctx.engine.begin() as conn:
        _pool, row = _load_ready_node(conn, ctx, pool_id, node_id)
        found = _existing(conn, row.id, name)
        if found is None:
            raise NodeUserNotFound("The specified node user does not exist.")
        conn.execute(update(node_users).where(node_users.c.node_id == row.id, node_users.c.name == found.name)
                     .values(**values))
        return _delivery(conn, row)


def remove(ctx: Context, pool_id: str, node_id: str, name: str) -> Delivery:
    with ctx.engine.begin() as conn:
        _pool, row = _load_ready_node(conn, ctx, pool_id, node_id)
        found = _existing(conn, row.id, name)
        if found is None:
            raise NodeUserNotFound("The specified node user does not exist.")
        conn.execute(delete(node_users).where(node_users.c.node_id == row.id, node_users.c.name == found.name))
        return _delivery(conn, row)


def forget_all(conn: Connection, node_id: str) -> None:
    """A reimage gives the node a fresh disk: its login users go with the old one."""
    conn.execute(delete(node_users).where(node_users.c.node_id == node_id))


def for_agent(conn: Connection, node_id: str) -> dict[str, Any]:
    """The node's users as its agent applies them: the whole list, with a generation so an
    older list arriving late never undoes a newer one."""
    rows = conn.execute(select(node_users).where(node_users.c.node_id == node_id)
                        .order_by(node_users.c.name)).all()
    return {"generation": time.time_ns(), "users": [{
        "name": r.name, "isAdmin": r.is_admin, "expiryTime": clock.iso(clock.as_utc(r.expiry_time)),
        "passwordHash": r.password_hash, "sshPublicKey": r.ssh_public_key} for r in rows]}


def _delivery(conn: Connection, row: Any) -> Delivery:
    listing = for_agent(conn, row.id)
    return Delivery(row.id, row.file_server_url, row.token, listing["users"], listing["generation"])


def record_ssh_port(conn: Connection, node_id: str, port: Any) -> None:
    """From the agent's hello: where its SSH server listens (None: it has none)."""
    value = port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else None
    conn.execute(update(nodes).where(nodes.c.id == node_id).values(ssh_port=value))


def remote_login(ctx: Context, pool_id: str, node_id: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        _pool, row = node_service.load(conn, ctx, pool_id, node_id)
    if row.ssh_port is None or not row.ip_address or row.state not in (*READY_STATES, NodeState.OFFLINE,
                                                                         NodeState.START_TASK_FAILED):
        raise BatchError("The node accepts no remote logins now: it has not started, or its agent runs "
                         "without the rights to create users (not as root) or without an SSH server.",
                         code="NodeNotReady", status=409)
    return {"remoteLoginIPAddress": row.ip_address, "remoteLoginPort": row.ssh_port}
