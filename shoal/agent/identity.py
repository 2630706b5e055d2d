"""Which user a task asks to run as: its ``userIdentity`` read defensively (semantics §5.5).

Pure: turns whatever JSON the control plane sent into one of four kinds, or an
:class:`IdentityError` carrying a Batch-style failure code. The agent decides what each kind
means on its node (see ``users.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Batch caps a pool user account name at 20 characters; leave room for names another Batch
# version allows, but never accept something absurd.
MAX_USER_NAME_CHARS = 64

AGENT = "agent"  # admin auto user: the agent's own identity (root when the agent is root)
POOL = "pool"  # the pool's non-admin auto user on this node
TASK = "task"  # a fresh non-admin user for this task alone
ACCOUNT = "account"  # a named pool user account


class IdentityError(ValueError):
    """A userIdentity the agent cannot honour; becomes the attempt's failureInfo."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    kind: str
    account: str | None = None


DEFAULT_IDENTITY = Identity(POOL)


def parse_identity(value: Any) -> Identity:
    """Batch's default (no identity) is the pool-scope non-admin auto user."""
    if value is None:
        return DEFAULT_IDENTITY
    if not isinstance(value, dict):
        raise IdentityError("InvalidUserIdentity", "userIdentity must be an object")
    # The wire name is "username" (userName is only the SDKs' spelling); take either.
    name = value.get("username", value.get("userName"))
    if name is not None:
        return Identity(ACCOUNT, check_user_name(name))
    auto = value.get("autoUser")
    if auto is None:
        return DEFAULT_IDENTITY
    if not isinstance(auto, dict):
        raise IdentityError("InvalidUserIdentity", "userIdentity.autoUser must be an object")
    scope = _enum(auto, "scope", ("pool", "task"), "pool")
    elevation = _enum(auto, "elevationLevel", ("nonadmin", "admin"), "nonadmin")
    if elevation == "admin":
        return Identity(AGENT)
    return Identity(TASK if scope == "task" else POOL)


def check_user_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise IdentityError("InvalidUserIdentity", "userIdentity.username must be a non-empty string")
    if len(name) > MAX_USER_NAME_CHARS:
        raise IdentityError("InvalidUserIdentity",
                            f"userIdentity.username is longer than {MAX_USER_NAME_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or ":" in name:
        raise IdentityError("InvalidUserIdentity",
                            "userIdentity.username contains a control character or ':'")
    return name


def _enum(obj: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    raw = obj.get(key)
    if raw is None:
        return default
    if isinstance(raw, str) and raw.lower() in allowed:
        return raw.lower()
    shown = repr(raw)[:40] if isinstance(raw, str | int | float | bool) else type(raw).__name__
    raise IdentityError("InvalidUserIdentity",
                        f"userIdentity.autoUser.{key} is {shown}; expected one of {', '.join(allowed)}")
