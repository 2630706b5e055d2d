"""The Batch account as the management API sees it: what it is (its authentication modes, its
quotas, its linked storage) and its two keys, which can be regenerated one at a time.

A regenerated key is written sealed when a secrets key is configured (store/sealing.py); the
caller (shoal/api/management.py) swaps it into the keys Shared Key verification reads, so the old
key stops working on the next request while the other key keeps working."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from shoal.errors import BadRequest
from shoal.service import ids, principals, quotas
from shoal.service.context import Context
from shoal.store.schema import accounts
from shoal.store.sealing import purpose

# Where the management API says the account is: Shoal runs where it runs.
LOCATION = "local"
# The names `regenerateKeys` takes (azure-mgmt-batch's AccountKeyType), and the column of each.
KEY_COLUMNS = {"Primary": "primary_key", "Secondary": "secondary_key"}


@dataclass(frozen=True)
class AccountRecord:
    """What the account resource shows, read from the store and the server's quotas."""

    name: str
    created: datetime
    allowed_modes: tuple[str, ...]
    quotas: quotas.Quotas


def record(ctx: Context) -> AccountRecord:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(accounts.c.name, accounts.c.created).where(accounts.c.name == ctx.account)).one()
        policy = principals.account_policy(conn, ctx.account)
    return AccountRecord(row.name, row.created, policy.allowed_modes, quotas.current())


def key_name(body: Any) -> str:
    """The key a `regenerateKeys` body names, as the SDK spells it; BadRequest for anything else
    (the value is quoted cut short: a body is the caller's, and may be huge)."""
    if not isinstance(body, dict) or set(body) != {"keyName"}:
        raise BadRequest("The request body must be an object with exactly one property, 'keyName'.")
    value = body["keyName"]
    if not isinstance(value, str):
        raise BadRequest("The property 'keyName' must be a string: 'Primary' or 'Secondary'.")
    chosen = next((name for name in KEY_COLUMNS if name.lower() == value.lower()), None)
    if chosen is None:
        raise BadRequest(f"The value '{value[:32]!s}' of 'keyName' is not valid: 'Primary' or 'Secondary'.")
    return chosen


def regenerate_key(ctx: Context, which: str) -> tuple[str, str]:
    """A new random value for the key ``which`` names ('Primary' or 'Secondary'), stored sealed;
    the account's keys after it, (primary, secondary)."""
    column = KEY_COLUMNS[which]
    new_key = ids.account_key()
    with ctx.engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.name == ctx.account)
                     .values({column: ctx.sealer.seal(new_key, purpose(accounts, column))}))
        row = conn.execute(select(accounts.c.primary_key, accounts.c.secondary_key)
                           .where(accounts.c.name == ctx.account)).one()
    return (str(ctx.sealer.unseal(row.primary_key, purpose(accounts, "primary_key"))),
            str(ctx.sealer.unseal(row.secondary_key, purpose(accounts, "secondary_key"))))
