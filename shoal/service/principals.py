"""Entra-style identity: tenants, and app registrations with their service principals (one row:
the client id is the app's, the object id the principal's), each with a client secret.

A secret is shown once, when the principal is made, and kept only as a salted scrypt hash. The
account belongs to one tenant: only tokens of that tenant's principals reach its data."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from shoal import clock
from shoal.errors import BadRequest, Conflict, InvalidProperty, NotFound
from shoal.service.context import Context
from shoal.store.schema import accounts, principals, role_assignments, tenants

MAX_NAME_CHARS = 256
DEFAULT_TENANT_NAME = "Shoal"
# scrypt's cost for client secrets: interactive-login strength (about 16 MiB, tens of ms), paid
# only at the token endpoint, never per data-plane request.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SECRET_BYTES = 30
# The modes `allowedAuthenticationModes` names (management API of Batch accounts).
AUTH_MODES = ("SharedKey", "AAD", "TaskAuthenticationToken")


@dataclass(frozen=True)
class AccountPolicy:
    """Who the account lets in: the tenant whose principals it trusts, and how callers may sign."""

    tenant_id: str | None
    allowed_modes: tuple[str, ...]


def ensure_tenant(conn: Connection, account: str) -> str:
    """The account's tenant, made with the account (and for accounts older than tenants)."""
    row = conn.execute(select(accounts.c.tenant_id).where(accounts.c.name == account)).first()
    if row is not None and row.tenant_id:
        return str(row.tenant_id)
    tenant_id = str(uuid.uuid4())
    conn.execute(tenants.insert().values(id=tenant_id, name=DEFAULT_TENANT_NAME, created=clock.now()))
    # Only where none is set yet: of two replicas starting at once, the first one's tenant stays.
    conn.execute(update(accounts).where(accounts.c.name == account, accounts.c.tenant_id.is_(None))
                 .values(tenant_id=tenant_id))
    return str(conn.execute(select(accounts.c.tenant_id).where(accounts.c.name == account)).scalar_one())


def account_policy(conn: Connection, account: str) -> AccountPolicy:
    row = conn.execute(select(accounts.c.tenant_id, accounts.c.allowed_auth_modes)
                       .where(accounts.c.name == account)).first()
    if row is None:
        return AccountPolicy(None, ())
    modes = tuple(row.allowed_auth_modes) if row.allowed_auth_modes is not None else AUTH_MODES
    return AccountPolicy(row.tenant_id, modes)


def set_allowed_modes(ctx: Context, modes: Any) -> list[str]:
    """Replace the account's allowed authentication modes; SharedKey may not go while it is the
    way the CLI manages the account (the management API sets them too: shoal/api/management.py)."""
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        raise InvalidProperty("allowedAuthenticationModes", modes, "A non-empty list of modes is required.")
    chosen: list[str] = []
    for mode in modes:
        canonical = next((known for known in AUTH_MODES if known.lower() == mode.lower()), None)
        if canonical is None:
            raise InvalidProperty("allowedAuthenticationModes", mode[:64], f"Modes are {', '.join(AUTH_MODES)}.")
        if canonical not in chosen:
            chosen.append(canonical)
    if "SharedKey" not in chosen:
        raise InvalidProperty("allowedAuthenticationModes", ",".join(chosen),
                              "SharedKey is how Shoal's account is managed and cannot be disallowed.")
    with ctx.engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.name == ctx.account).values(allowed_auth_modes=chosen))
    return chosen


def _check_name(name: Any, label: str = "displayName") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidProperty(label, name if isinstance(name, str) else type(name).__name__, "A name is required.")
    if len(name) > MAX_NAME_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidProperty(label, name[:64], f"At most {MAX_NAME_CHARS} printable characters.")
    return name


def _tenant_row(conn: Connection, tenant_id: str) -> Any:
    return conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()


def create_tenant(ctx: Context, name: Any) -> dict[str, Any]:
    name = _check_name(name)
    tenant_id = str(uuid.uuid4())
    with ctx.engine.begin() as conn:
        conn.execute(tenants.insert().values(id=tenant_id, name=name, created=clock.now()))
    return {"tenantId": tenant_id, "displayName": name}


def list_tenants(ctx: Context) -> list[dict[str, Any]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(tenants).order_by(tenants.c.created, tenants.c.id)).all()
    return [{"tenantId": row.id, "displayName": row.name, "created": clock.iso(row.created)} for row in rows]


def _hash_secret(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode("utf-8"), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def create_principal(ctx: Context, body: Any) -> dict[str, Any]:
    """A new app registration and its service principal; the answer holds the secret, once."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    name = _check_name(body.get("displayName"))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_hex(16)
    digest = _hash_secret(secret, salt)
    client_id, object_id = str(uuid.uuid4()), str(uuid.uuid4())
    with ctx.engine.begin() as conn:
        tenant_id = body.get("tenantId") or ensure_tenant(conn, ctx.account)
        if not isinstance(tenant_id, str) or _tenant_row(conn, tenant_id) is None:
            raise NotFound("The specified tenant does not exist.", code="TenantNotFound",
                           values={"TenantId": str(tenant_id)[:64]})
        taken = conn.execute(select(principals.c.client_id).where(principals.c.tenant_id == tenant_id,
                                                                  principals.c.name == name)).first()
        if taken is not None:
            raise Conflict("A service principal with this name already exists in the tenant.",
                           code="PrincipalExists", values={"DisplayName": name[:64]})
        created = clock.now()
        conn.execute(principals.insert().values(client_id=client_id, object_id=object_id, tenant_id=tenant_id,
                                                name=name, secret_salt=salt, secret_hash=digest, created=created))
    return {"displayName": name, "tenantId": tenant_id, "clientId": client_id, "objectId": object_id,
            "clientSecret": secret, "created": clock.iso(created)}


def _public(row: Any) -> dict[str, Any]:
    return {"displayName": row.name, "tenantId": row.tenant_id, "clientId": row.client_id,
            "objectId": row.object_id, "created": clock.iso(row.created)}


def list_principals(ctx: Context) -> list[dict[str, Any]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(principals).order_by(principals.c.created, principals.c.client_id)).all()
    return [_public(row) for row in rows]


def delete_principal(ctx: Context, name_or_client_id: str) -> dict[str, Any]:
    """Delete by client id, object id or (when it names exactly one) display name; its tokens stop
    working at once on this server and within the principal cache's lifetime on others."""
    with ctx.engine.begin() as conn:
        rows = conn.execute(select(principals).where(
            (principals.c.client_id == name_or_client_id) | (principals.c.object_id == name_or_client_id)
            | (principals.c.name == name_or_client_id))).all()
        if not rows:
            raise NotFound("The specified service principal does not exist.", code="PrincipalNotFound")
        if len(rows) > 1:
            raise Conflict("The name is given to several service principals: delete by client id.",
                           code="PrincipalNameAmbiguous")
        conn.execute(delete(role_assignments).where(role_assignments.c.principal_id == rows[0].object_id))
        conn.execute(delete(principals).where(principals.c.client_id == rows[0].client_id))
    return _public(rows[0])


def check_client_secret(ctx: Context, tenant_id: str, client_id: str, secret: str) -> Any:
    """The principal row if ``secret`` is its client secret in ``tenant_id``; None for an unknown
    client, False for a wrong secret (the token endpoint tells them apart, as Entra does)."""
    with ctx.engine.connect() as conn:
        row = conn.execute(select(principals).where(principals.c.client_id == client_id,
                                                    principals.c.tenant_id == tenant_id)).first()
    if row is None:
        return None
    presented = _hash_secret(secret, row.secret_salt)
    return row if hmac.compare_digest(presented, row.secret_hash) else False


def tenant_exists(ctx: Context, tenant_id: str) -> bool:
    with ctx.engine.connect() as conn:
        return _tenant_row(conn, tenant_id) is not None


def principal_tenant(ctx: Context, object_id: str, client_id: str) -> str | None:
    """The tenant of the principal a token names, or None if it is gone."""
    with ctx.engine.connect() as conn:
        row = conn.execute(select(principals.c.tenant_id).where(principals.c.object_id == object_id,
                                                                principals.c.client_id == client_id)).first()
    return None if row is None else str(row.tenant_id)


def account_policy_of(ctx: Context) -> AccountPolicy:
    with ctx.engine.connect() as conn:
        return account_policy(conn, ctx.account)
