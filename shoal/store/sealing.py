"""Secrets at rest: the store's secrets sealed under a key the operator keeps outside the store.

What the store must be able to give back whole (an account's keys, which Shared Key needs to
sign with; the token signing keys; a certificate's pfx and its password, which nodes install)
cannot be hashed, as client secrets and node-user passwords are. With a secrets key configured
(`--secrets-key-file`, `$SHOAL_SECRETS_KEY_FILE`) each such value is kept as
``sealed:v1:<base64 of nonce | AES-256-GCM ciphertext and tag>``, with the value's purpose (its
table and column) as associated data, so a sealed value copied into another column does not open.
A copy of the database (a backup, a PostgreSQL dump, a stolen SQLite file) then holds none of them.

Without a key values are kept as given, in a store only Shoal's user may read (0600 files, a
0700 data dir). A server started with a key seals every value still in the clear; one started
without a key, or with another key, on a store holding sealed values refuses to start, saying why.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from sqlalchemy import Engine

PREFIX = "sealed:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12


class SealingError(Exception):
    """A key file that cannot be used, or a sealed value the configured key cannot open."""


def new_key_text() -> str:
    """A fresh key, as a key file holds it: 32 random bytes in base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def is_sealed(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


@dataclass(frozen=True)
class Sealer:
    """Seals and opens the store's secrets; with no key it passes values through unchanged."""

    key: bytes | None = None

    @classmethod
    def from_file(cls, path: Path | None) -> Sealer:
        """The key in ``path`` (None: no key). The file must be the operator's alone: a key any
        other user can read protects nothing, so a group- or world-readable file is refused."""
        if path is None:
            return cls()
        try:
            mode = os.stat(path).st_mode
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SealingError(f"cannot read the secrets key file {path}: {exc}") from None
        if not stat.S_ISREG(mode):
            raise SealingError(f"the secrets key file {path} is not a regular file")
        if mode & 0o077:
            raise SealingError(f"the secrets key file {path} may be read by other users (mode {mode & 0o777:o}); "
                               f"make it 0600 or 0400")
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != KEY_BYTES:
            raise SealingError(f"the secrets key file {path} must hold {KEY_BYTES} bytes in base64 "
                               f"(make one with `shoal secrets-key new {path}`)")
        return cls(key)

    @property
    def sealing(self) -> bool:
        return self.key is not None

    def seal(self, value: str | None, purpose: str) -> str | None:
        """``value`` as the store keeps it: sealed when a key is configured (a value already
        sealed is kept as it is)."""
        if value is None or self.key is None or is_sealed(value):
            return value
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, value.encode("utf-8"), purpose.encode("ascii"))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def unseal(self, value: str | None, purpose: str) -> str | None:
        """The value a stored one stands for; a value in the clear is returned as it is."""
        if value is None or not is_sealed(value):
            return value
        if self.key is None:
            raise SealingError("the store holds secrets sealed with a secrets key, and none is configured: start "
                               "with --secrets-key-file (or $SHOAL_SECRETS_KEY_FILE) naming that key")
        try:
            raw = base64.b64decode(value[len(PREFIX):], validate=True)
            opened = AESGCM(self.key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], purpose.encode("ascii"))
        except (binascii.Error, InvalidTag, ValueError):
            raise SealingError("the configured secrets key does not open the store's secrets: it is not the key "
                               "they were sealed with") from None
        return opened.decode("utf-8")


# ---- the store's sealed columns ----------------------------------------------------------------

def _sealed_columns() -> list[tuple[Any, str, str]]:
    """(table, key column, secret column) of every secret the store keeps whole."""
    from shoal.store.schema import accounts, certificates, signing_keys

    return [(accounts, "name", "primary_key"), (accounts, "name", "secondary_key"),
            (signing_keys, "kid", "secret"),
            (certificates, "seq", "private_data"), (certificates, "seq", "password")]


def purpose(table: Any, column: str) -> str:
    """The associated data a column's values are sealed with."""
    return f"{table.name}.{column}"


def seal_store(engine: Engine, sealer: Sealer) -> int:
    """At start: with a key, seal every secret still in the clear (the values of a store that
    had no key before) and check the key opens those already sealed; without one, check none is
    sealed. Raises SealingError when the store and the key do not go together. The number of
    values sealed now. The tables read are the few rows of accounts, keys and certificates."""
    from sqlalchemy import select, update

    sealed_now = 0
    with engine.begin() as conn:
        for table, key, column in _sealed_columns():
            label = purpose(table, column)
            rows = conn.execute(select(table.c[key], table.c[column]).where(table.c[column].is_not(None))).all()
            for row_key, value in rows:
                if is_sealed(value):
                    sealer.unseal(value, label)  # raises when the key is missing or another
                elif sealer.sealing:
                    conn.execute(update(table).where(table.c[key] == row_key)
                                 .values({column: sealer.seal(value, label)}))
                    sealed_now += 1
    return sealed_now
