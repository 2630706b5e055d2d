"""Folder deletions the control plane orders nodes to make, on the agent protocol.

A completed task's folder is deleted when its retention time passes, and a deleted job's folder
on every node of its pool. Both travel to the agent in sync answers (`deleteTaskDirs`,
`deleteJobDirs`) rather than as calls to the node's file server, so a node that hangs costs
nothing but its own orders. The agent acknowledges each deletion in a later sync body
(`deletedTaskDirs`, `deletedJobDirs`); an order not acknowledged within RESEND_AFTER_S is sent
again.

The outbox lives in memory and is touched only on the event loop. What makes it durable is the
store: a task's `retention_deadline` is cleared, and a deleted job's record removed, only once
the order is acknowledged (or the node is gone, taking its folders with it). A server that
restarts finds the same expired tasks and emptied jobs and orders them again; deleting a folder
that is already gone is acknowledged like any other, so an order is safe to repeat.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# An order unacknowledged this long is sent again (its answer may have been lost, or the agent
# restarted before it acted).
RESEND_AFTER_S = 30.0
# At most this many orders travel in one answer; the agent acknowledges as many in one body.
MAX_ORDERS_PER_ANSWER = 1000
# A node that never answers (unusable, partitioned) holds at most this many task orders; the
# rest wait in the store until it has acknowledged some, so its backlog cannot grow the outbox.
MAX_PENDING_PER_NODE = 5000
# How long a deleted job waits for the nodes of its pool to acknowledge its folder before its
# record goes anyway: a node silent that long is not holding up the job's id for ever.
JOB_FOLDER_WAIT_S = 300.0


@dataclass
class _Order:
    sent_at: float | None = None
    # A task folder's: the task's seq, for the retention record (None: the task is deleted).
    task_seq: int | None = None


@dataclass
class _JobDeletion:
    job_id: str
    waiting_on: set[str]
    ordered_at: float


class FolderOrders:
    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        # node id -> (job id, task id) -> order; the seqs of the tasks ordered or just done.
        self._tasks: dict[str, dict[tuple[str, str], _Order]] = {}
        self._ordered_seqs: set[int] = set()
        # node id -> job id -> order.
        self._jobs: dict[str, dict[str, _Order]] = {}
        # job seq -> the deletion of its folders, until every node has acknowledged.
        self._job_deletions: dict[int, _JobDeletion] = {}
        # Seqs of tasks whose folder is gone (acknowledged, or its node gone): the retention duty
        # records them and takes them.
        self._removed_task_seqs: list[int] = []

    # ---- filled by the duties ---------------------------------------------------------------

    def is_task_ordered(self, seq: int) -> bool:
        return seq in self._ordered_seqs

    def order_task_folder(self, node_id: str, job_id: str, task_id: str, seq: int | None) -> bool:
        """Order a task's folder deleted on its node; False when the node's backlog is full.
        ``seq`` is the task's, for the retention record; None for a task deleted outright,
        which has no record left to update."""
        orders = self._tasks.setdefault(node_id, {})
        if (job_id, task_id) in orders:
            return True
        if len(orders) >= MAX_PENDING_PER_NODE:
            return False
        orders[(job_id, task_id)] = _Order(task_seq=seq)
        if seq is not None:
            self._ordered_seqs.add(seq)
        return True

    def task_folder_gone(self, seq: int) -> None:
        """A task whose folder went with its node: nothing to order, only to record."""
        self._removed_task_seqs.append(seq)

    def take_removed_task_seqs(self) -> list[int]:
        """For the duty to record; it scans for more only after the record is written."""
        taken, self._removed_task_seqs = self._removed_task_seqs, []
        self._ordered_seqs.difference_update(taken)
        return taken

    def job_deletion_ordered(self, job_seq: int) -> bool:
        return job_seq in self._job_deletions

    def ordered_job_seqs(self) -> set[int]:
        return set(self._job_deletions)

    def order_job_folder(self, job_seq: int, job_id: str, node_ids: Iterable[str]) -> None:
        waiting = set(node_ids)
        self._job_deletions[job_seq] = _JobDeletion(job_id, waiting, self._now())
        for node_id in waiting:
            self._jobs.setdefault(node_id, {})[job_id] = _Order()

    def take_settled_jobs(self) -> list[int]:
        """Seqs of deleted jobs whose folders every node has acknowledged (or whose wait ran out)."""
        now = self._now()
        settled = [seq for seq, deletion in self._job_deletions.items()
                   if not deletion.waiting_on or now - deletion.ordered_at >= JOB_FOLDER_WAIT_S]
        for seq in settled:
            deletion = self._job_deletions.pop(seq)
            for node_id in deletion.waiting_on:
                self._drop_job_order(node_id, deletion.job_id)
        return settled

    def nodes_with_orders(self) -> list[str]:
        return list(self._tasks.keys() | self._jobs.keys())

    def forget_node(self, node_id: str) -> None:
        """The node left the pool with its disk: every order to it is done."""
        for order in self._tasks.pop(node_id, {}).values():
            self._task_done(order)
        for job_id in self._jobs.pop(node_id, {}):
            self._job_acknowledged(node_id, job_id)

    # ---- the agent protocol -----------------------------------------------------------------

    def has_due(self, node_id: str) -> bool:
        now = self._now()
        return any(_due(order, now) for orders in (self._tasks.get(node_id), self._jobs.get(node_id))
                   for order in (orders or {}).values())

    def take_due(self, node_id: str) -> tuple[list[list[str]], list[str]]:
        """The orders to send the node now (unsent, or sent too long ago), marked sent."""
        now = self._now()
        task_dirs: list[list[str]] = []
        job_dirs: list[str] = []
        for key, order in (self._tasks.get(node_id) or {}).items():
            if len(task_dirs) >= MAX_ORDERS_PER_ANSWER:
                break
            if _due(order, now):
                order.sent_at = now
                task_dirs.append([key[0], key[1]])
        for job_id, order in (self._jobs.get(node_id) or {}).items():
            if len(job_dirs) >= MAX_ORDERS_PER_ANSWER:
                break
            if _due(order, now):
                order.sent_at = now
                job_dirs.append(job_id)
        return task_dirs, job_dirs

    def acknowledge(self, node_id: str, task_dirs: Iterable[list[str]], job_dirs: Iterable[str]) -> None:
        """The node says these folders are gone. Anything it was not ordered is ignored: a node
        can only speak for its own orders."""
        orders = self._tasks.get(node_id)
        if orders:
            for job_id, task_id in task_dirs:
                order = orders.pop((job_id, task_id), None)
                if order is not None:
                    self._task_done(order)
            if not orders:
                del self._tasks[node_id]
        for job_id in job_dirs:
            if self._drop_job_order(node_id, job_id):
                self._job_acknowledged(node_id, job_id)

    def _task_done(self, order: _Order) -> None:
        # Still counted as ordered until the duty has recorded it, so no scan orders it again.
        if order.task_seq is not None:
            self._removed_task_seqs.append(order.task_seq)

    def _drop_job_order(self, node_id: str, job_id: str) -> bool:
        orders = self._jobs.get(node_id)
        if not orders or orders.pop(job_id, None) is None:
            return False
        if not orders:
            del self._jobs[node_id]
        return True

    def _job_acknowledged(self, node_id: str, job_id: str) -> None:
        for deletion in self._job_deletions.values():
            if deletion.job_id == job_id:
                deletion.waiting_on.discard(node_id)


def _due(order: _Order, now: float) -> bool:
    return order.sent_at is None or now - order.sent_at >= RESEND_AFTER_S
