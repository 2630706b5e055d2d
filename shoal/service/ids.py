"""Identifiers Shoal mints: Azure-style node ids and secrets."""

from __future__ import annotations

import base64
import secrets


def node_id(dedicated: bool) -> str:
    return f"tvmps_{secrets.token_hex(32)}_{'d' if dedicated else 'p'}"


def token() -> str:
    return secrets.token_urlsafe(32)


def account_key() -> str:
    return base64.b64encode(secrets.token_bytes(64)).decode()
