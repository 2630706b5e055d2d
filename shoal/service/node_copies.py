"""The control plane's copies of a node's own logs (beyond Azure): the last bytes of the agent's
log and of the start task's stdout.txt/stderr.txt.

A node that crashes, is preempted or is removed takes its disk with it, and with it the one
thing that says what went wrong there. So the agent sends the start task's output with the report
that ends the start task, and its own log now and then and when it leaves
(shoal/agent/outputs.py); the local provider keeps the log of an agent it finds dead. They are
kept by pool and node id, past the node's record: served by the node's file routes while the node
cannot answer (api/files.py) and under `/shoal/v1/pools/{pool}/removednodes/{node}/files` after it
is gone (api/node_copies.py). Bounded: KEPT_BYTES a file, three files a node, removed nodes' copies
kept REMOVED_RETENTION and at most MAX_REMOVED_FILES of them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from shoal import clock
from shoal.service.context import Context
from shoal.service.task_outputs import KeptFile
from shoal.store.chunks import in_chunks
from shoal.store.schema import node_logs, nodes

AGENT_LOG = "agent.log"
START_TASK_STDOUT = "startup/stdout.txt"
START_TASK_STDERR = "startup/stderr.txt"
NAMES = (AGENT_LOG, START_TASK_STDOUT, START_TASK_STDERR)
REMOVED_RETENTION = timedelta(days=1)
# 10,000 removed nodes' worth: at most 480 MiB of copies whatever the churn.
MAX_REMOVED_FILES = 30_000
PURGE_BATCH = 1000
# The count cap is checked this often (it walks the index up to the cap); the age cut every pass.
CAP_CHECK_S = 60.0


def keep(conn: Connection, account: str, pool_id: str, node_id: str,
         copies: dict[str, tuple[bytes, int]], now: datetime | None = None) -> None:
    """Replace the node's copies of the files named in ``copies`` ({name: (last bytes, size)})."""
    if not copies:
        return
    now = now or clock.now()
    exists = conn.execute(select(nodes.c.id).where(nodes.c.id == node_id)).first() is not None
    key = and_(node_logs.c.account == account, node_logs.c.pool_id == pool_id, node_logs.c.node_id == node_id)
    conn.execute(delete(node_logs).where(key, node_logs.c.name.in_(list(copies))))
    conn.execute(insert(node_logs), [
        {"account": account, "pool_id": pool_id, "node_id": node_id, "name": name, "data": data, "size": size,
         "updated": now, "removed": None if exists else now}
        for name, (data, size) in copies.items()])


def keep_agent_log(ctx: Context, pool_id: str, node_id: str, copy: tuple[bytes, int]) -> None:
    """The provider's copy of the log of an agent it found dead or stopped (its node's disk is
    the provider's to read)."""
    with ctx.engine.begin() as conn:
        keep(conn, ctx.account, pool_id, node_id, {AGENT_LOG: copy})


def start_task_copies(output: dict[str, tuple[bytes, int]]) -> dict[str, tuple[bytes, int]]:
    """A start-task report's checked `output` as the copies it replaces."""
    return {START_TASK_STDOUT: output["stdout"], START_TASK_STDERR: output["stderr"]}


def gone(conn: Connection, node_ids: list[str], now: datetime | None = None) -> None:
    """The nodes' records are gone: their copies start their retention."""
    for chunk in in_chunks(node_ids):
        conn.execute(update(node_logs).where(node_logs.c.node_id.in_(chunk), node_logs.c.removed.is_(None))
                     .values(removed=now or clock.now()))


def files_of(conn: Connection, account: str, pool_id: str, node_id: str) -> list[KeptFile]:
    rows = conn.execute(select(node_logs).where(
        node_logs.c.account == account, node_logs.c.pool_id == pool_id, node_logs.c.node_id == node_id)).all()
    by_name = {row.name: row for row in rows}
    return [KeptFile(name, by_name[name].data, by_name[name].size, by_name[name].updated)
            for name in NAMES if name in by_name]


class Purge:
    """The lifecycle duty that drops removed nodes' copies: those older than the retention, a
    batch a pass, and beyond the count cap, the oldest first."""

    def __init__(self) -> None:
        self._cap_checked = 0.0

    def __call__(self, ctx: Context) -> int:
        now = clock.now()
        removed = node_logs.c.removed
        with ctx.engine.begin() as conn:
            cut = now - REMOVED_RETENTION
            if time.monotonic() - self._cap_checked >= CAP_CHECK_S:
                self._cap_checked = time.monotonic()
                newest_dropped = conn.execute(select(removed).where(removed.is_not(None))
                                              .order_by(removed.desc()).offset(MAX_REMOVED_FILES).limit(1)).scalar()
                dropped = clock.as_utc(newest_dropped)
                if dropped is not None:
                    cut = max(cut, dropped + timedelta(microseconds=1))
            keys = conn.execute(select(node_logs.c.account, node_logs.c.pool_id, node_logs.c.node_id,
                                       node_logs.c.name)
                                .where(removed.is_not(None), removed < cut).order_by(removed)
                                .limit(PURGE_BATCH)).all()
            for key in keys:
                conn.execute(delete(node_logs).where(
                    node_logs.c.account == key.account, node_logs.c.pool_id == key.pool_id,
                    node_logs.c.node_id == key.node_id, node_logs.c.name == key.name))
            return len(keys)

