"""The control plane process: the API, the scheduler loop, the lifecycle loop and a provider.

`shoal up` and `shoal server` both run this; `up` adds the local provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import select

from shoal import clock
from shoal.api import remote_files
from shoal.api.agent import AgentHub
from shoal.api.app import Api, build_app
from shoal.api.http_protocol import BoundedHeadProtocol
from shoal.config import PROVIDER_RECONCILE_S, SCHEDULER_IDLE_WAKE_S, Settings
from shoal.service import allocation, autoscale, ids, metrics, node_operations, preemption, scheduling
from shoal.service import jobs as job_service
from shoal.service import nodes as node_service
from shoal.service import tasks as task_service
from shoal.service.context import Context, Signals
from shoal.store.db import StoreInUse, create_store_engine, hold_store, migrate
from shoal.store.schema import accounts, nodes
from shoal.timebase import TimeBase

log = logging.getLogger("shoal.server")
DEFAULT_ACCOUNT = "shoal"
ENDPOINT_FILE = "endpoint.json"
# A short pause after a wake-up lets a burst of adds or completions share one scheduling pass.
SCHEDULER_COALESCE_S = 0.002
LIFECYCLE_INTERVAL_S = 0.5
# A lifecycle duty that talks to nodes gives up after this long and tries again on its next pass.
LIFECYCLE_DUTY_TIMEOUT_S = 60.0
# Node folder deletions sent at once: a pool of unresponsive nodes costs one timeout, not one each.
REMOTE_DELETE_CONCURRENCY = 32
AUTOSCALE_CHECK_S = 1.0


def ensure_account(engine: Any, name: str = DEFAULT_ACCOUNT) -> tuple[str, str]:
    with engine.begin() as conn:
        row = conn.execute(select(accounts).where(accounts.c.name == name)).first()
        if row is not None:
            return row.primary_key, row.secondary_key
        keys = (ids.account_key(), ids.account_key())
        conn.execute(accounts.insert().values(name=name, primary_key=keys[0], secondary_key=keys[1],
                                              created=clock.now()))
        return keys


class AlreadyRunning(RuntimeError):
    """Another Shoal process already serves this data directory."""


def make_private(data_dir: Path) -> None:
    """The data directory holds the keys and every node token: only Shoal's user may enter it,
    and whatever the server creates there (database, WAL, logs, endpoint file) is 0600. An older
    data directory made with looser modes is tightened, its files too."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for child in data_dir.iterdir():
        if child.is_file() and not child.is_symlink() and child.stat().st_uid == os.geteuid():
            child.chmod(0o600)


def hold_data_dir(data_dir: Path) -> Any:
    """One server per data directory: two would both schedule and both start agents for the
    same nodes. The lock is the kernel's, so it goes with the process, even after kill -9."""
    handle = open(data_dir / "shoal.lock", "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"another Shoal server is already using {data_dir}") from None
    return handle


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY on accepted sockets, which spares
    # every keep-alive request a 40 ms delayed-ACK stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its shutdown, which would skip ours (stopping agents)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield


class ControlPlane:
    def __init__(self, settings: Settings, *, local_provider: bool = True) -> None:
        self.settings = settings
        make_private(settings.data_dir)
        self._lock = hold_data_dir(settings.data_dir)
        self.engine = create_store_engine(settings.effective_database_url)
        try:
            # Claimed before migrating: a second server must not change the schema under the first.
            self._store_claim = hold_store(self.engine)
        except StoreInUse as exc:
            self.engine.dispose()
            raise AlreadyRunning(str(exc)) from None
        migrate(self.engine)
        self.keys = ensure_account(self.engine)
        self.sock = bind_socket(settings.host, settings.port)
        port = self.sock.getsockname()[1]
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        self.endpoint = f"http://{host}:{port}"
        self.hub = AgentHub()
        self.timebase = TimeBase(settings.time_scale)
        self._scheduler_wake = asyncio.Event()
        self._provider_wake = asyncio.Event()
        signals = Signals(wake_scheduler=self._scheduler_wake.set, wake_node=self.hub.wake,
                          wake_provider=self._provider_wake.set)
        self.ctx = Context(engine=self.engine, account=DEFAULT_ACCOUNT, signals=signals, base_url=self.endpoint,
                           timebase=self.timebase, sample_lag=timedelta(seconds=settings.sample_lag_s),
                           spot_capacity=settings.spot_capacity)
        self.api = Api(self.ctx, {DEFAULT_ACCOUNT: self.keys})
        # An idle agent calls at least once per long-poll: keep that well inside the timeout
        # after which a silent node is declared unusable.
        poll_timeout = min(settings.poll_timeout_s, settings.heartbeat_timeout_s / 3)
        self.app = build_app(self.api, self.hub, poll_timeout, min(5.0, settings.heartbeat_timeout_s / 3),
                             manual_join=not local_provider)
        self.provider = None
        if local_provider:
            from shoal.providers.local import LocalProvider

            self.provider = LocalProvider(self.ctx, settings.effective_nodes_dir, self.endpoint,
                                          spot_eviction_rate=settings.spot_eviction_rate)
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    def write_endpoint_file(self) -> None:
        path = Path(self.settings.data_dir) / ENDPOINT_FILE
        tmp = path.with_suffix(".tmp")
        record = {"endpoint": self.endpoint, "account": DEFAULT_ACCOUNT}
        if self.provider is not None:
            record["nodesDir"] = str(self.settings.effective_nodes_dir)
        if self.settings.database_url:
            # `shoal account show` finds the account in that database; the file is private.
            record["database"] = self.settings.database_url
        tmp.write_text(json.dumps(record))
        tmp.chmod(0o600)
        tmp.replace(path)

    async def _scheduler_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scheduler_wake.wait(), SCHEDULER_IDLE_WAKE_S)
            await asyncio.sleep(SCHEDULER_COALESCE_S)
            self._scheduler_wake.clear()
            try:
                for node_id in scheduling.schedule(self.ctx):
                    self.hub.wake(node_id)
            except Exception:
                log.exception("scheduling pass failed")

    def _lifecycle_duties(self) -> list[tuple[str, Callable[[], Any]]]:
        """The lifecycle's duties, each run by its own loop: one that fails or hangs (a node that
        never answers a folder deletion) cannot hold up the others (resizes, silent nodes)."""
        ctx, settings = self.ctx, self.settings

        def allocate() -> None:
            if allocation.reconcile(ctx):
                self._provider_wake.set()
                self._scheduler_wake.set()

        def finish_complete_jobs() -> None:
            with self.engine.begin() as conn:
                job_service.finish_all_complete_jobs(ctx, conn)

        return [
            ("allocation", allocate),
            ("silent nodes", lambda: node_service.mark_silent_nodes_unusable(ctx, settings.heartbeat_timeout_s)),
            ("spot recovery", lambda: preemption.recover(ctx, timedelta(seconds=settings.spot_recovery_s),
                                                         settings.spot_capacity)),
            ("job disables", lambda: job_service.finish_waiting_disables(ctx)),
            ("job completion", finish_complete_jobs),
            ("deleted jobs", self._reap_deleted_jobs),
            ("job wall clock", lambda: job_service.enforce_max_wall_clock(ctx)),
            ("node operations", lambda: node_operations.start_pending(ctx)),
            ("task retention", self._remove_expired_task_folders),
        ]

    async def _duty_loop(self, name: str, duty: Callable[[], Any]) -> None:
        while True:
            try:
                outcome = duty()
                if asyncio.iscoroutine(outcome):
                    await asyncio.wait_for(outcome, LIFECYCLE_DUTY_TIMEOUT_S)
            except TimeoutError:
                log.warning("lifecycle duty %r took longer than %s s; it runs again next pass",
                            name, LIFECYCLE_DUTY_TIMEOUT_S)
            except Exception:
                log.exception("lifecycle duty %r failed", name)
            await asyncio.sleep(LIFECYCLE_INTERVAL_S)

    async def _reap_deleted_jobs(self) -> None:
        for job_id, pool_seq in job_service.reap_deleted(self.ctx):
            await self._remove_job_folders(job_id, pool_seq)

    async def _remove_expired_task_folders(self) -> None:
        expired = task_service.expired_folders(self.ctx)
        await _bounded_gather(remote_files.delete_remote_tree(url, token, folder) for _seq, url, token, folder in expired)
        task_service.folders_removed(self.ctx, [seq for seq, *_ in expired])

    async def _remove_job_folders(self, job_id: str, pool_seq: int | None) -> None:
        if pool_seq is None:
            return
        with self.engine.connect() as conn:
            rows = conn.execute(select(nodes.c.file_server_url, nodes.c.token).where(nodes.c.pool_seq == pool_seq)).all()
        await _bounded_gather(remote_files.delete_remote_tree(url, token, f"workitems/{job_id}") for url, token in rows)

    async def _sampler_loop(self) -> None:
        """Metric samples every sample period, on the scaled timeline."""
        while True:
            try:
                metrics.sample(self.ctx)
            except Exception:
                log.exception("metric sampling failed")
            await self.timebase.sleep(metrics.SAMPLE_PERIOD)

    async def _autoscale_loop(self) -> None:
        while True:
            try:
                if autoscale.run_due(self.ctx):
                    self._provider_wake.set()
            except Exception:
                log.exception("autoscale pass failed")
            await asyncio.sleep(min(AUTOSCALE_CHECK_S, self.timebase.real_seconds(metrics.SAMPLE_PERIOD)))

    async def _provider_loop(self) -> None:
        assert self.provider is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._provider_wake.wait(), PROVIDER_RECONCILE_S)
            self._provider_wake.clear()
            try:
                await self.provider.reconcile()
            except Exception:
                log.exception("provider pass failed")

    async def start_loops(self) -> None:
        self._tasks.append(asyncio.create_task(self._scheduler_loop()))
        for name, duty in self._lifecycle_duties():
            self._tasks.append(asyncio.create_task(self._duty_loop(name, duty)))
        self._tasks.append(asyncio.create_task(self._sampler_loop()))
        self._tasks.append(asyncio.create_task(self._autoscale_loop()))
        if self.provider is not None:
            self._tasks.append(asyncio.create_task(self._provider_loop()))

    async def stop_loops(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.provider is not None:
            await self.provider.shutdown(stop_agents=True)
        await remote_files.close()

    async def serve(self) -> None:
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=75, loop="none", timeout_graceful_shutdown=2,
                                http=BoundedHeadProtocol)
        server = _QuietServer(config)
        if self.provider is not None:
            # Before the first request: nodes whose agents did not survive a restart are marked
            # lost now, so nobody is told a dead node is idle.
            await self.provider.reconcile()
        await self.start_loops()
        self.write_endpoint_file()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        try:
            await server.serve(sockets=[self.sock])
        finally:
            await self.stop_loops()


async def _bounded_gather(calls: Iterable[Awaitable[Any]]) -> None:
    """Await ``calls`` REMOTE_DELETE_CONCURRENCY at a time; failures are the callee's to swallow."""
    gate = asyncio.Semaphore(REMOTE_DELETE_CONCURRENCY)

    async def gated(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(gated(c) for c in calls), return_exceptions=True)


def run(settings: Settings, *, local_provider: bool = True, on_ready: Any = None) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        pass

    async def main() -> None:
        plane = ControlPlane(settings, local_provider=local_provider)
        if on_ready is not None:
            on_ready(plane)
        await plane.serve()

    asyncio.run(main())
