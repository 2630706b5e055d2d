"""The control plane's copy of a task's stdout.txt and stderr.txt (beyond Azure).

An agent sends the last bytes of both files with the report that ends an attempt
(shoal/agent/outputs.py); they are kept in the same transaction that ends it, one row per task,
replaced by each later attempt. When the task's node cannot answer any more (the node is gone,
preempted, unusable or deallocated), the task's file routes serve these copies instead, so a
task's output outlives the node it ran on, for as long as the task and its retention last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from shoal.agent.layout import STDERR_FILE, STDOUT_FILE
from shoal.model.states import NodeState, TaskState
from shoal.store.chunks import in_chunks
from shoal.store.schema import jobs, task_outputs, tasks

# Nodes whose agent cannot serve a file: their tasks' copies are served instead.
UNREACHABLE_NODE_STATES = (NodeState.PREEMPTED, NodeState.UNUSABLE, NodeState.DEALLOCATED,
                           NodeState.DEALLOCATING)


@dataclass(frozen=True)
class KeptFile:
    name: str
    data: bytes  # the file's last bytes (all of it when size == len(data))
    size: int
    modified: datetime

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


def keep(conn: Connection, reported: list[tuple[Any, dict[str, Any]]], node_of: dict[int, str],
         now: datetime) -> None:
    """Keep the copies the reports of ended attempts carry (``node_of``: task seq → node id)."""
    rows = []
    for row, report in reported:
        output = report.get("output")
        if not output:
            continue
        (stdout, stdout_size), (stderr, stderr_size) = output["stdout"], output["stderr"]
        rows.append({"task_seq": row.seq, "attempt": report["attempt"], "node_id": node_of[row.seq],
                     "ended": now, "stdout": stdout, "stdout_size": stdout_size, "stderr": stderr,
                     "stderr_size": stderr_size})
    if not rows:
        return
    forget(conn, [r["task_seq"] for r in rows])
    conn.execute(insert(task_outputs), rows)


def keep_running(conn: Connection, account: str, node_id: str, entries: list[dict[str, Any]],
                 now: datetime) -> None:
    """Keep copies of the output so far of attempts still running on the node (`runningOutputs`),
    so that it stays readable if the node is lost before they end. Only the attempts the node runs
    now count: a copy of anything else (requeued, ended, never held) is dropped."""
    running = {(row.job_key, row.task_key): row for row in conn.execute(
        select(tasks.c.seq, tasks.c.attempt, jobs.c.key.label("job_key"), tasks.c.key.label("task_key"))
        .join(jobs, jobs.c.seq == tasks.c.job_seq)
        .where(tasks.c.node_id == node_id, tasks.c.state == TaskState.RUNNING, jobs.c.account == account))}
    held = []
    for entry in entries:
        row = running.get((entry["jobId"].lower(), entry["taskId"].lower()))
        if row is not None and row.attempt == entry["attempt"]:
            held.append((row, entry))
    keep(conn, held, {row.seq: node_id for row, _entry in held}, now)


def forget(conn: Connection, task_seqs: list[int]) -> None:
    for chunk in in_chunks(task_seqs):
        conn.execute(delete(task_outputs).where(task_outputs.c.task_seq.in_(chunk)))


def kept_files(conn: Connection, task_seq: int) -> list[KeptFile]:
    """The task's kept files, stdout.txt then stderr.txt; none when nothing was kept."""
    row = conn.execute(select(task_outputs).where(task_outputs.c.task_seq == task_seq)).first()
    if row is None:
        return []
    return [KeptFile(STDOUT_FILE, row.stdout, row.stdout_size, row.ended),
            KeptFile(STDERR_FILE, row.stderr, row.stderr_size, row.ended)]


def serves_copies(node: Any) -> bool:
    """Whether a task's files come from the copies: its node is gone or cannot answer."""
    return node is None or node.state in UNREACHABLE_NODE_STATES
