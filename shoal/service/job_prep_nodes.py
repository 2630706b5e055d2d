"""What a job's preparation and release tasks did on each node (semantics §3.4), one
`job_node_tasks` row per (job, node), and what each node must run next.

- Placing a task of a job with a preparation task on a node that has not run it (or must run it
  again after a reboot or reimage) orders it there: `pending = "prep"` with a new `generation`.
  With waitForSuccess the node's agent holds the job's tasks until it succeeds.
- A preparation that ultimately fails with waitForSuccess bars the node from the job: its tasks
  of the job there go back to `active` and the scheduler gives the job's tasks to other nodes.
- When the job ends, every node where the preparation ran owes the release (`pending =
  "release"`); the job stays `terminating` (or, deleted, keeps its record) until none is owed on
  a node that is still there.

Every lookup is an index seek of the few rows it wants (see schema.py); nothing here reads all
the tasks of a job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update

from shoal import odata as odata_sql
from shoal.agent.layout import task_folder
from shoal.model.states import NodeState, TaskState
from shoal.service import transitions
from shoal.service.job_prep import PREP, RELEASE, definition
from shoal.store.chunks import in_chunks
from shoal.store.schema import job_node_tasks, jobs, nodes, tasks

PREP_KIND = "prep"
RELEASE_KIND = "release"
KINDS = (PREP_KIND, RELEASE_KIND)
# prep_result of a preparation that succeeded before a reboot and runs again before the next task.
RERUN = "rerun"
# Nodes that will never run an owed release: a gone record does not block its job either.
# A deallocated node runs nothing until started again: it does not hold its jobs back either.
_LOST_STATES = (NodeState.PREEMPTED, NodeState.UNUSABLE, NodeState.DEALLOCATING, NodeState.DEALLOCATED)

JobTaskKey = tuple[str, str, int]  # (kind, job id, generation)


_ROWS_OF_JOB_ON = (
    select(job_node_tasks.c.seq, job_node_tasks.c.job_seq, job_node_tasks.c.node_id, job_node_tasks.c.pending,
           job_node_tasks.c.prep_result, job_node_tasks.c.generation)
    .where(job_node_tasks.c.job_seq == bindparam("b_job"),
           job_node_tasks.c.node_id.in_(bindparam("b_nodes", expanding=True)))
)


def order_preparations(conn: Connection, pool_id: str, placed: Iterable[tuple[int, str]]) -> None:
    """Tasks of jobs with a preparation task were just placed on these (job seq, node) pairs:
    order the preparation where it has not run (or must run again)."""
    pairs = sorted(set(placed))
    if not pairs:
        return
    by_job: dict[int, list[str]] = {}
    for job, node in pairs:
        by_job.setdefault(job, []).append(node)
    existing: dict[tuple[int, str], Any] = {}
    for job, node_ids in by_job.items():
        # Seeks of uq_job_node_tasks_job_node, a chunk of the job's nodes at a time.
        for chunk in in_chunks(node_ids):
            for row in conn.execute(_ROWS_OF_JOB_ON, {"b_job": job, "b_nodes": list(chunk)}):
                existing[(row.job_seq, row.node_id)] = row
    fresh = [{"job_seq": job, "node_id": node, "pool_id": pool_id, "generation": 1, "pending": PREP_KIND}
             for job, node in pairs if (job, node) not in existing]
    if fresh:
        conn.execute(insert(job_node_tasks), fresh)
    # A row whose preparation must run again (a reimage cleared its result, a reboot asked for a rerun).
    again = [row.seq for row in existing.values() if row.pending is None and row.prep_result in (None, RERUN)]
    for chunk in in_chunks(again):
        conn.execute(update(job_node_tasks).where(job_node_tasks.c.seq.in_(chunk)).values(
            pending=PREP_KIND, generation=job_node_tasks.c.generation + 1))


_BARRED = (
    select(job_node_tasks.c.job_seq, job_node_tasks.c.node_id)
    .where(job_node_tasks.c.job_seq.in_(bindparam("b_jobs", expanding=True)), job_node_tasks.c.barred)
)


def barred_nodes(conn: Connection, job_seqs: Sequence[int]) -> dict[int, frozenset[str]]:
    """The nodes each job may no longer use (its preparation failed there with waitForSuccess):
    a walk of the partial index of barred rows."""
    found: dict[int, set[str]] = {}
    for chunk in in_chunks(list(job_seqs)):
        for job_seq, node_id in conn.execute(_BARRED, {"b_jobs": list(chunk)}):
            found.setdefault(job_seq, set()).add(node_id)
    return {job: frozenset(ids) for job, ids in found.items()}


def prepared(conn: Connection, node_id: str, job_seqs: Sequence[int]) -> set[int]:
    """The jobs among `job_seqs` whose preparation has succeeded on the node (and need not rerun)."""
    done: set[int] = set()
    for chunk in in_chunks(list(job_seqs)):
        done.update(conn.execute(select(job_node_tasks.c.job_seq).where(
            job_node_tasks.c.node_id == node_id, job_node_tasks.c.job_seq.in_(chunk),
            job_node_tasks.c.prep_result == "success")).scalars())
    return done


_PENDING_COLUMNS = (job_node_tasks.c.node_id, job_node_tasks.c.job_seq, job_node_tasks.c.pending,
                    job_node_tasks.c.generation, jobs.c.id.label("job_id"), jobs.c.spec)
_PENDING_ON_NODE = (
    select(*_PENDING_COLUMNS).join(jobs, jobs.c.seq == job_node_tasks.c.job_seq)
    .where(job_node_tasks.c.node_id == bindparam("b_node"), job_node_tasks.c.pending.is_not(None))
)
_PENDING_ON_NODES = (
    select(*_PENDING_COLUMNS).join(jobs, jobs.c.seq == job_node_tasks.c.job_seq)
    .where(job_node_tasks.c.node_id.in_(bindparam("b_nodes", expanding=True)), job_node_tasks.c.pending.is_not(None))
)


def pending_on(conn: Connection, node_ids: Sequence[str]) -> dict[str, list[Any]]:
    """The pending runs of many nodes (a batch of syncs), one statement a chunk."""
    found: dict[str, list[Any]] = {}
    for chunk in in_chunks(list(node_ids)):
        for row in conn.execute(_PENDING_ON_NODES, {"b_nodes": list(chunk)}):
            found.setdefault(row.node_id, []).append(row)
    return found


def deliveries(conn: Connection, node_id: str, known: Iterable[Any],
               pending: list[Any] | None = None) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """(what the node should run and does not hold, what it holds and should not run): the node's
    pending rows (`pending`, when read with other nodes') are one seek of a partial index."""
    held = {(str(k[0]), str(k[1]).lower(), int(k[2])): k for k in known}
    due: dict[JobTaskKey, Any] = {}
    rows = pending if pending is not None else conn.execute(_PENDING_ON_NODE, {"b_node": node_id}).all()
    for row in rows:
        due[(row.pending, row.job_id.lower(), row.generation)] = row
    run = [definition(row.pending, row.job_id, row.generation, row.spec)
           for key, row in due.items() if key not in held]
    kill = [list(original) for key, original in held.items() if key not in due]
    return run, kill


def _node_url(base_url: str, pool_id: str, node_id: str) -> str:
    return f"{base_url}/pools/{pool_id}/nodes/{node_id}"


def _info(report: dict[str, Any], root: str, url: str, *, retries: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"startTime": report.get("startTime"), "endTime": report.get("endTime"),
                            "state": report["state"], "taskRootDirectory": root,
                            "taskRootDirectoryUrl": f"{url}/files/{root}"}
    if report.get("exitCode") is not None:
        info["exitCode"] = report["exitCode"]
    if report.get("failure"):
        info["failureInfo"] = report["failure"]
    if retries:
        info["retryCount"] = report.get("retryCount") or 0
        if report.get("lastRetryTime"):
            info["lastRetryTime"] = report["lastRetryTime"]
    if report["state"] == "completed":
        info["result"] = "success" if report.get("exitCode") == 0 and not report.get("failure") else "failure"
    return {name: value for name, value in info.items() if value is not None}


def record_reports(conn: Connection, base_url: str, account: str, node_id: str,
                   reports: list[dict[str, Any]]) -> tuple[set[int], set[str]]:
    """Record what a node's agent says its preparation and release runs did (the latest state of
    each, resent until a sync carries it). A report of a run that is no longer the node's pending
    one is dropped. Returns (jobs whose release finished, nodes whose tasks moved)."""
    released: set[int] = set()
    moved: set[str] = set()
    for report in reports:
        kind, job_key, generation = report["kind"], report["jobId"].lower(), report["generation"]
        row = conn.execute(select(job_node_tasks, jobs.c.id.label("job_id"), jobs.c.spec, jobs.c.prep_wait)
                           .join(jobs, jobs.c.seq == job_node_tasks.c.job_seq)
                           .where(jobs.c.account == account, jobs.c.key == job_key,
                                  job_node_tasks.c.node_id == node_id)).first()
        if row is None or row.pending != kind or row.generation != generation:
            continue
        shown = row.spec.get(PREP if kind == PREP_KIND else RELEASE) or {}
        root = task_folder(row.job_id, shown.get("id", kind))
        info = _info(report, root, _node_url(base_url, row.pool_id, node_id), retries=kind == PREP_KIND)
        completed = info["state"] == "completed"
        values: dict[str, Any] = {}
        if kind == PREP_KIND:
            values.update(prep_info=info, prep_state=info["state"])
            if completed:
                values.update(pending=None, prep_result=info["result"])
                if info["result"] == "failure" and row.prep_wait:
                    values["barred"] = True
                    moved |= _send_back(conn, row.job_seq, node_id)
        else:
            values.update(release_info=info, release_state=info["state"])
            if completed:
                values["pending"] = None
                released.add(row.job_seq)
        conn.execute(update(job_node_tasks).where(job_node_tasks.c.seq == row.seq).values(**values))
    return released, moved


def _send_back(conn: Connection, job_seq: int, node_id: str) -> set[str]:
    """The job's tasks the node holds for a preparation that failed go back to `active`, to run
    elsewhere: not a retry (they never ran). The node's running tasks are an index seek."""
    held = conn.execute(select(tasks).where(tasks.c.node_id == node_id, tasks.c.state == TaskState.RUNNING,
                                            tasks.c.job_seq == job_seq)).all()
    touched = transitions.requeue(conn, held, user_requested=False)
    transitions.refresh_node_busy(conn, touched)
    return touched


def start_releases(conn: Connection, job_row: Any) -> int:
    """The job ends: every node where its preparation ran owes the release (the preparation
    still under way is stopped by that); nothing more is prepared. Returns how many are owed."""
    if job_row.prep_wait is None:
        return 0
    base = job_node_tasks.c.job_seq == job_row.seq
    owed = 0
    if job_row.spec.get(RELEASE):
        # Where it ran (and ended, or runs now): not where a reimage has wiped it since.
        ran = or_(job_node_tasks.c.prep_result.is_not(None),
                  and_(job_node_tasks.c.pending == PREP_KIND, job_node_tasks.c.prep_state == "running"))
        owed = conn.execute(update(job_node_tasks).where(base, ran).values(
            pending=RELEASE_KIND, generation=job_node_tasks.c.generation + 1)).rowcount
    conn.execute(update(job_node_tasks).where(base, job_node_tasks.c.pending == PREP_KIND).values(pending=None))
    return int(owed)


# An unusable node without an incarnation is one whose agent died and which its provider is
# starting a new agent on (nodes.agent_lost): it comes back and runs what it owes.
_COMING_BACK = and_(nodes.c.state == NodeState.UNUSABLE, nodes.c.incarnation.is_(None))
_OWED = (
    select(job_node_tasks.c.seq).join(nodes, nodes.c.id == job_node_tasks.c.node_id)
    .where(job_node_tasks.c.job_seq == bindparam("b_job"), job_node_tasks.c.pending == RELEASE_KIND,
           or_(nodes.c.state.not_in(_LOST_STATES), _COMING_BACK)).limit(1)
)


def releases_owed(conn: Connection, job_seq: int) -> bool:
    """Whether a node that is still there owes the job its release: the partial index of owed
    releases, then the node's record by key."""
    return conn.execute(_OWED, {"b_job": job_seq}).first() is not None


def nodes_owing(conn: Connection, job_seq: int) -> list[str]:
    return list(conn.execute(select(job_node_tasks.c.node_id).where(
        job_node_tasks.c.job_seq == job_seq, job_node_tasks.c.pending == RELEASE_KIND)).scalars())


def node_restarted(conn: Connection, node_id: str, how: str) -> None:
    """A node's agent said hello again. `reimage`: the preparations must all run again and a
    release owed is skipped (the node lost the job's files); `reboot`: a successful preparation
    runs again where rerunOnNodeRebootAfterSuccess; anything pending runs again either way (its
    new agent does not hold it)."""
    on_node = job_node_tasks.c.node_id == node_id
    if how == "reimage":
        conn.execute(update(job_node_tasks).where(on_node).values(
            prep_result=None, barred=False, pending=None))
        return
    if how == "reboot":
        succeeded = conn.execute(
            select(job_node_tasks.c.seq, jobs.c.spec).join(jobs, jobs.c.seq == job_node_tasks.c.job_seq)
            .where(on_node, job_node_tasks.c.prep_result == "success", job_node_tasks.c.pending.is_(None))).all()
        rerun = [row.seq for row in succeeded if (row.spec.get(PREP) or {}).get("rerunOnNodeRebootAfterSuccess", True)]
        for chunk in in_chunks(rerun):
            conn.execute(update(job_node_tasks).where(job_node_tasks.c.seq.in_(chunk)).values(prep_result=RERUN))


# What the status list may filter on in SQL, by lower-cased OData path.
FILTER_PROPERTIES = {
    "nodeid": odata_sql.SqlProperty(job_node_tasks.c.node_id, "text"),
    "poolid": odata_sql.SqlProperty(job_node_tasks.c.pool_id, "text"),
    "jobpreparationtaskexecutioninfo/state": odata_sql.SqlProperty(job_node_tasks.c.prep_state, "text",
                                                                   nullable=True),
    "jobreleasetaskexecutioninfo/state": odata_sql.SqlProperty(job_node_tasks.c.release_state, "text",
                                                               nullable=True),
}


# Rows one list request turns into their wire form at most when Python judges a $filter.
MAX_EVALUATED_ROWS_PER_PAGE = 2_000


def status_entry(base_url: str, row: Any) -> dict[str, Any]:
    """One node's JobPreparationAndReleaseTaskExecutionInformation."""
    out: dict[str, Any] = {"poolId": row.pool_id, "nodeId": row.node_id,
                           "nodeUrl": _node_url(base_url, row.pool_id, row.node_id)}
    if row.prep_info:
        out["jobPreparationTaskExecutionInfo"] = row.prep_info
    if row.release_info:
        out["jobReleaseTaskExecutionInfo"] = row.release_info
    return out


def status_page(conn: Connection, base_url: str, job_seq: int, *, after_seq: int, limit: int,
                conditions: Sequence[Any] = (),
                predicate: Callable[[dict[str, Any]], bool] | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """The nodes where the job's preparation has run, in the order they first got it, after
    `after_seq` (keyset paging over uq_job_node_tasks_job_node's rows by seq); the page and the
    seq to continue from. Only rows whose preparation has started are listed."""
    query = (select(job_node_tasks)
             .where(job_node_tasks.c.job_seq == job_seq, job_node_tasks.c.prep_state.is_not(None),
                    job_node_tasks.c.seq > after_seq, *conditions)
             .order_by(job_node_tasks.c.seq))
    if predicate is None:
        rows = conn.execute(query.limit(limit + 1)).all()
        page = rows[:limit]
        return [status_entry(base_url, row) for row in page], (page[-1].seq if len(rows) > limit else None)
    out: list[dict[str, Any]] = []
    rows = conn.execute(query.limit(MAX_EVALUATED_ROWS_PER_PAGE + 1)).all()
    for position, row in enumerate(rows[:MAX_EVALUATED_ROWS_PER_PAGE]):
        entry = status_entry(base_url, row)
        if predicate(entry):
            out.append(entry)
            if len(out) == limit:
                return out, (row.seq if position + 1 < len(rows) else None)
    if len(rows) > MAX_EVALUATED_ROWS_PER_PAGE:
        return out, rows[MAX_EVALUATED_ROWS_PER_PAGE - 1].seq
    return out, None
