"""The lifecycle duties: everything that happens because time passed. Each runs in a loop of
its own (`duty.run_periodically`): one that fails or is slow cannot hold up resizes or the
detection of silent nodes. None of them calls a node: folder deletions travel to agents as
orders in their sync answers (shoal.service.folder_orders)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from shoal.config import Settings
from shoal.service import allocation, node_copies, node_operations, preemption
from shoal.service import certificates as certificate_service
from shoal.service import jobs as job_service
from shoal.service import nodes as node_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.service.liveness import Liveness
from shoal.store.chunks import in_chunks
from shoal.store.runner import StoreRunner
from shoal.store.schema import nodes

LIFECYCLE_INTERVAL_S = 0.5
# A duty that takes longer than this is abandoned and runs again on its next pass.
LIFECYCLE_DUTY_TIMEOUT_S = 60.0


def lifecycle_duties(ctx: Context, settings: Settings, runner: StoreRunner,
                     liveness: Liveness) -> list[tuple[str, Callable[[], Any]]]:
    """Every duty's store work runs on the writer (each may write); only the calls to nodes stay
    on the loop."""

    def allocate() -> None:
        if allocation.reconcile(ctx):
            # From the writer thread: the signals are the thread-safe way to the loop's events.
            ctx.signals.wake_provider()
            ctx.signals.wake_scheduler()

    def finish_complete_jobs() -> None:
        with ctx.engine.begin() as conn:
            job_service.finish_all_complete_jobs(ctx, conn)
            # Releases owed by nodes that have gone since hold no job back.
            job_service.finish_released_jobs(ctx, conn)

    retention_scan = _RetentionScan()

    def on_writer(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: runner.write(fn, *args)

    return [
        ("allocation", on_writer(allocate)),
        ("silent nodes", on_writer(node_service.mark_silent_nodes_unusable, ctx, settings.heartbeat_timeout_s,
                                   liveness)),
        ("spot recovery", on_writer(preemption.recover, ctx, timedelta(seconds=settings.spot_recovery_s),
                                    settings.spot_capacity)),
        ("job disables", on_writer(job_service.finish_waiting_disables, ctx)),
        ("job completion", on_writer(finish_complete_jobs)),
        ("deleted jobs", lambda: _reap_deleted_jobs(ctx, runner)),
        ("folder orders of gone nodes", lambda: _forget_orders_of_gone_nodes(ctx, runner)),
        ("job wall clock", on_writer(job_service.enforce_max_wall_clock, ctx)),
        ("node operations", on_writer(node_operations.start_pending, ctx)),
        ("certificate deletions", on_writer(certificate_service.finish_deletions, ctx)),
        ("task retention", lambda: _remove_expired_task_folders(ctx, runner, retention_scan)),
        ("node log copies", on_writer(node_copies.Purge(), ctx)),
    ]


async def _reap_deleted_jobs(ctx: Context, runner: StoreRunner) -> None:
    """A deleted job goes in three steps: its tasks, a bounded number a pass; its folder, by
    order to every node of its pool; its record, once they have acknowledged (so a server that
    restarts in between finds the job still `deleting` and orders its folders again)."""
    orders = ctx.folder_orders
    settled = orders.take_settled_jobs()
    if settled:
        await runner.write(job_service.remove_deleted_jobs, ctx, settled)
    emptied = await runner.write(job_service.reap_deleted, ctx, orders.ordered_job_seqs())
    for job in emptied:
        if not orders.job_deletion_ordered(job.seq):
            orders.order_job_folder(job.seq, job.id, job.node_ids)
            for node_id in job.node_ids:
                ctx.signals.wake_node(node_id)


# Expired task folders looked at per pass.
RETENTION_SCAN_BATCH = 500


class _RetentionScan:
    """Where the walk of expired tasks resumes: tasks whose folders are ordered deleted but not
    yet acknowledged stay expired in the store, so the walk steps past them rather than reading
    the same ones every pass, and starts again from the oldest when it reaches the end."""

    def __init__(self) -> None:
        self.after: tuple[Any, int] | None = None


async def _remove_expired_task_folders(ctx: Context, runner: StoreRunner, scan: _RetentionScan) -> None:
    orders = ctx.folder_orders
    removed = orders.take_removed_task_seqs()
    if removed:
        await runner.write(task_service.folders_removed, ctx, removed)
    expired, scan.after = await runner.read(task_service.expired_folders, ctx, scan.after, RETENTION_SCAN_BATCH)
    woken = set()
    for folder in expired:
        if orders.is_task_ordered(folder.seq):
            continue
        if folder.node_id is None:
            orders.task_folder_gone(folder.seq)
        elif orders.order_task_folder(folder.node_id, folder.job_id, folder.task_id, folder.seq):
            woken.add(folder.node_id)
    for node_id in woken:
        ctx.signals.wake_node(node_id)


def _present_nodes(ctx: Context, node_ids: list[str]) -> set[str]:
    present: set[str] = set()
    with ctx.engine.connect() as conn:
        for chunk in in_chunks(node_ids):
            present.update(conn.execute(select(nodes.c.id).where(nodes.c.id.in_(chunk))).scalars())
    return present


async def _forget_orders_of_gone_nodes(ctx: Context, runner: StoreRunner) -> None:
    """A node that left its pool took its folders with it: its orders are done."""
    orders = ctx.folder_orders
    waiting = orders.nodes_with_orders()
    if not waiting:
        return
    present = await runner.read(_present_nodes, ctx, waiting)
    for node_id in waiting:
        if node_id not in present:
            orders.forget_node(node_id)
