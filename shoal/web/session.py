"""Dashboard sign-in: a session cookie the server can check without storing anything, and the
CSRF token of each form.

Signed in with an account key, the cookie is ``v1.<expiry>.<nonce>.<mac>``, the mac an
HMAC-SHA256 of ``<expiry>.<nonce>`` under a secret derived from that key: it carries neither key
nor secret, expires on its own, and stops being accepted once that key is regenerated. Signed in
with a service principal's access token, it is ``p1.<expiry>.<nonce>.<tenant>.<object>.<client>.<mac>``
under a secret derived from the server's token signing key: it names the principal (whose
existence is checked on every request, so deleting it ends the session) and expires with the token. A form's CSRF token is an
HMAC of the session's nonce under the same secret, so a page of another site can neither read
nor forge it (and SameSite=Strict keeps the cookie off its requests anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

COOKIE_NAME = "shoal_ui_session"
SESSION_LIFETIME_S = 12 * 3600
CSRF_FIELD = "csrf"
_VERSION = "v1"
_PRINCIPAL_VERSION = "p1"
_MAX_COOKIE_CHARS = 320
# Tenant, object and client ids as Shoal makes them (GUIDs); nothing else goes into a cookie.
_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def _secret(key: str) -> bytes:
    return hmac.new(key.encode(), b"shoal dashboard session v1", hashlib.sha256).digest()


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def key_matches(given: str, keys: Iterable[str]) -> str | None:
    """The account key ``given`` equals (compared in constant time), or None."""
    given_bytes = given.encode()
    match = None
    for key in keys:
        if hmac.compare_digest(given_bytes, key.encode()):
            match = key
    return match


@dataclass(frozen=True)
class Principal:
    """The service principal a session was signed in with."""

    tenant_id: str
    object_id: str
    client_id: str


def principal_secret(signing_key_material: bytes) -> bytes:
    return hmac.new(hashlib.sha256(signing_key_material).digest(), b"shoal dashboard principal session v1",
                    hashlib.sha256).digest()


def issue_for_principal(secret: bytes, principal: Principal, expires: float, now: float | None = None) -> str:
    """A session cookie for a principal whose token expires at ``expires`` (Unix seconds): the
    session ends with the token, and at most SESSION_LIFETIME_S from now."""
    for value in (principal.tenant_id, principal.object_id, principal.client_id):
        if not _ID.fullmatch(value):
            raise ValueError("a principal id Shoal did not make")
    expiry = int(min(expires, (time.time() if now is None else now) + SESSION_LIFETIME_S))
    body = f"{expiry}.{secrets.token_hex(16)}.{principal.tenant_id}.{principal.object_id}.{principal.client_id}"
    return f"{_PRINCIPAL_VERSION}.{body}.{_mac(secret, body)}"


def issue(key: str, now: float | None = None) -> str:
    """A new session cookie for someone who presented ``key``."""
    expiry = int((time.time() if now is None else now) + SESSION_LIFETIME_S)
    nonce = secrets.token_hex(16)
    body = f"{expiry}.{nonce}"
    return f"{_VERSION}.{body}.{_mac(_secret(key), body)}"


class Session:
    """A valid session: what forms need to carry to be accepted."""

    def __init__(self, secret: bytes, nonce: str, principal: Principal | None = None) -> None:
        self._secret = secret
        self._nonce = nonce
        # None for a session signed in with an account key.
        self.principal = principal

    @property
    def csrf_token(self) -> str:
        return _mac(self._secret, f"csrf.{self._nonce}")

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf_token.encode())


def verify(cookie: str | None, keys: Iterable[str], now: float | None = None,
           principal_secret: bytes | None = None) -> Session | None:
    """The session ``cookie`` stands for, if it was issued under one of ``keys`` (or, for a
    principal's, under ``principal_secret``) and has not expired. Whether the principal still
    exists is the caller's to check."""
    if not cookie or len(cookie) > _MAX_COOKIE_CHARS:
        return None
    parts = cookie.split(".")
    if parts[0] == _PRINCIPAL_VERSION:
        return _verify_principal(parts, principal_secret, now)
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
        return None
    _version, expiry, nonce, mac = parts
    if int(expiry) < (time.time() if now is None else now):
        return None
    body = f"{expiry}.{nonce}"
    for key in keys:
        secret = _secret(key)
        if hmac.compare_digest(mac.encode(), _mac(secret, body).encode()):
            return Session(secret, nonce)
    return None


def _verify_principal(parts: list[str], secret: bytes | None, now: float | None) -> Session | None:
    if secret is None or len(parts) != 7 or not parts[1].isdigit():
        return None
    _version, expiry, nonce, tenant, object_id, client_id, mac = parts
    if int(expiry) < (time.time() if now is None else now):
        return None
    body = ".".join(parts[1:6])
    if not hmac.compare_digest(mac.encode(), _mac(secret, body).encode()):
        return None
    return Session(secret, nonce, Principal(tenant, object_id, client_id))
