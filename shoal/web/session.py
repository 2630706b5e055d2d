"""Dashboard sign-in: a session cookie the server can check without storing anything, and the
CSRF token of each form.

The cookie is ``v1.<expiry>.<nonce>.<mac>``, the mac an HMAC-SHA256 of ``<expiry>.<nonce>`` under a
secret derived from the account key that signed in: it carries neither key nor secret, expires
on its own, and stops being accepted once that key is regenerated. A form's CSRF token is an
HMAC of the session's nonce under the same secret, so a page of another site can neither read
nor forge it (and SameSite=Strict keeps the cookie off its requests anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

COOKIE_NAME = "shoal_ui_session"
SESSION_LIFETIME_S = 12 * 3600
CSRF_FIELD = "csrf"
_VERSION = "v1"
_MAX_COOKIE_CHARS = 256


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


def issue(key: str, now: float | None = None) -> str:
    """A new session cookie for someone who presented ``key``."""
    expiry = int((time.time() if now is None else now) + SESSION_LIFETIME_S)
    nonce = secrets.token_hex(16)
    body = f"{expiry}.{nonce}"
    return f"{_VERSION}.{body}.{_mac(_secret(key), body)}"


class Session:
    """A valid session: what forms need to carry to be accepted."""

    def __init__(self, secret: bytes, nonce: str) -> None:
        self._secret = secret
        self._nonce = nonce

    @property
    def csrf_token(self) -> str:
        return _mac(self._secret, f"csrf.{self._nonce}")

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf_token.encode())


def verify(cookie: str | None, keys: Iterable[str], now: float | None = None) -> Session | None:
    """The session ``cookie`` stands for, if it was issued under one of ``keys`` and has not expired."""
    if not cookie or len(cookie) > _MAX_COOKIE_CHARS:
        return None
    parts = cookie.split(".")
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
