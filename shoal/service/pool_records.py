"""Finding a pool's record by its id: what every module that acts on one pool starts from.

Kept apart from `pools.py` so that modules pools.py itself uses (`autoscale.py`) can look a pool
up without importing it back: no import cycle, and no import inside a function to hide one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from shoal.errors import Conflict, NotFound
from shoal.model.states import PoolState
from shoal.service.context import Context
from shoal.store.schema import pools


def pool_not_found(pool_id: str) -> NotFound:
    return NotFound("The specified pool does not exist.", code="PoolNotFound")


def load(conn: Connection, ctx: Context, pool_id: str, *, for_update: bool = False) -> Any:
    query = select(pools).where(pools.c.account == ctx.account, pools.c.key == pool_id.lower())
    row = conn.execute(query).first()
    if row is None:
        raise pool_not_found(pool_id)
    return row


def pool_being_deleted() -> Conflict:
    return Conflict("The specified pool has been marked for deletion and is being reclaimed.",
                    code="PoolBeingDeleted")


def guard_not_deleting(row: Any) -> None:
    """Batch refuses every change to a deleting pool, a second delete included (semantics §2.1)."""
    if row.state == PoolState.DELETING:
        raise pool_being_deleted()
