"""The lifecycle duties: everything that happens because time passed. Each runs in a loop of
its own (`duty.run_periodically`): one that fails or hangs, such as a node that never answers a
folder deletion, cannot hold up resizes or the detection of silent nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from shoal.api import remote_files
from shoal.config import Settings
from shoal.service import allocation, node_operations, preemption
from shoal.service import jobs as job_service
from shoal.service import nodes as node_service
from shoal.service import tasks as task_service
from shoal.service.context import Context
from shoal.service.liveness import Liveness
from shoal.store.runner import StoreRunner
from shoal.store.schema import nodes

LIFECYCLE_INTERVAL_S = 0.5
# A duty that talks to nodes gives up after this long and tries again on its next pass.
LIFECYCLE_DUTY_TIMEOUT_S = 60.0
# Node folder deletions sent at once: a pool of unresponsive nodes costs one timeout, not one each.
REMOTE_DELETE_CONCURRENCY = 32


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
        ("job wall clock", on_writer(job_service.enforce_max_wall_clock, ctx)),
        ("node operations", on_writer(node_operations.start_pending, ctx)),
        ("task retention", lambda: _remove_expired_task_folders(ctx, runner)),
    ]


async def _reap_deleted_jobs(ctx: Context, runner: StoreRunner) -> None:
    for job_id, pool_seq in await runner.write(job_service.reap_deleted, ctx):
        await _remove_job_folders(ctx, runner, job_id, pool_seq)


async def _remove_expired_task_folders(ctx: Context, runner: StoreRunner) -> None:
    expired = await runner.read(task_service.expired_folders, ctx)
    await _bounded_gather(remote_files.delete_remote_tree(url, token, folder) for _seq, url, token, folder in expired)
    await runner.write(task_service.folders_removed, ctx, [seq for seq, *_ in expired])


def _job_folder_servers(ctx: Context, pool_seq: int) -> list[Any]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(nodes.c.file_server_url, nodes.c.token)
                                 .where(nodes.c.pool_seq == pool_seq)).all())


async def _remove_job_folders(ctx: Context, runner: StoreRunner, job_id: str, pool_seq: int | None) -> None:
    if pool_seq is None:
        return
    rows = await runner.read(_job_folder_servers, ctx, pool_seq)
    await _bounded_gather(remote_files.delete_remote_tree(url, token, f"workitems/{job_id}") for url, token in rows)


async def _bounded_gather(calls: Iterable[Awaitable[Any]]) -> None:
    """Await ``calls`` REMOTE_DELETE_CONCURRENCY at a time; failures are the callee's to swallow."""
    gate = asyncio.Semaphore(REMOTE_DELETE_CONCURRENCY)

    async def gated(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(gated(c) for c in calls), return_exceptions=True)
