"""The control plane process: wiring of the store, the API, a provider and the background duties.

`shoal up` and `shoal server` both run this; `up` adds the local provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import traceback
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import uvicorn

from shoal import logs, telemetry
from shoal.api.agent import AgentHub
from shoal.api.app import Api, build_app
from shoal.api.auth import Identity
from shoal.api.http_protocol import BoundedHeadProtocol
from shoal.config import Settings
from shoal.nodeclient import files as node_files
from shoal.server.autoscaling import autoscale_loop
from shoal.server.duty import Wakeups, run_periodically
from shoal.server.lifecycle import LIFECYCLE_DUTY_TIMEOUT_S, LIFECYCLE_INTERVAL_S, lifecycle_duties
from shoal.server.provisioning import provider_loop
from shoal.server.sampling import sampler_loop
from shoal.server.schedules import SCHEDULE_DUTY_TIMEOUT_S, SCHEDULE_INTERVAL_S, schedule_duty
from shoal.server.scheduling import scheduler_loop
from shoal.server.startup import (
    DEFAULT_ACCOUNT,
    AlreadyRunning,
    CannotStart,
    bind_socket,
    check_nodes_dir_reachable,
    ensure_account,
    ensure_identity,
    ensure_metrics_token,
    hold_data_dir,
    make_private,
    open_secrets,
    write_endpoint_file,
)
from shoal.server.tls import ServerCertificate, ensure_certificates
from shoal.service import prices
from shoal.service.context import Context, Signals
from shoal.service.liveness import Liveness
from shoal.store.db import StoreInUse, create_store_engine, hold_store, migrate
from shoal.store.runner import StoreRunner, on_loop
from shoal.timebase import TimeBase

log = logging.getLogger("shoal.server")
# How long a stop waits for the background duties to end once cancelled.
DUTY_STOP_TIMEOUT_S = 5.0


class _QuietServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its shutdown, which would skip ours (stopping agents); and
    what holds connections open (agents' long-polls, the agents themselves) must end before
    uvicorn waits for requests and connections to finish, else it cancels them after its grace
    period and logs an error for a normal stop."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield

    async def shutdown(self, sockets: Any = None) -> None:
        await self._before_shutdown()
        await super().shutdown(sockets)


class ControlPlane:
    def __init__(self, settings: Settings, *, local_provider: bool = True) -> None:
        self.settings = settings
        if local_provider:
            check_nodes_dir_reachable(settings.effective_nodes_dir)
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
        try:
            sealer = open_secrets(self.engine, settings.secrets_key_file)
        except CannotStart:
            if self._store_claim is not None:
                self._store_claim.close()
            self.engine.dispose()
            raise
        self.keys = ensure_account(self.engine, sealer=sealer)
        self.certificate: ServerCertificate | None = None
        if settings.tls:
            self.certificate = ensure_certificates(settings.data_dir, settings.host)
        self.sock = bind_socket(settings.host, settings.port)
        port = self.sock.getsockname()[1]
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        self.endpoint = f"{'https' if self.certificate else 'http'}://{host}:{port}"
        ca_file = self.certificate.ca_file if self.certificate else None
        # Every store call of the server goes through the runner: the event loop only does I/O.
        self.runner = StoreRunner()
        self.liveness = Liveness()
        self.hub = AgentHub(self.liveness)
        self.timebase = TimeBase(settings.time_scale)
        self.wakeups = Wakeups()
        # Bound to the loop in `serve`: service code calls them from the runner's threads.
        signals = Signals()
        self.ctx = Context(engine=self.engine, account=DEFAULT_ACCOUNT, signals=signals, base_url=self.endpoint,
                           timebase=self.timebase, sample_lag=timedelta(seconds=settings.sample_lag_s),
                           spot_capacity=settings.spot_capacity, provider_runs_nodes=local_provider,
                           prices_file=settings.data_dir / prices.PRICES_FILE, sealer=sealer)
        # Bearer tokens name the server's endpoint as their authority (issuer), unless told another.
        identity = Identity(ensure_identity(self.engine, sealer=sealer),
                            (settings.authority or self.endpoint).rstrip("/"))
        self.api = Api(self.ctx, {DEFAULT_ACCOUNT: self.keys}, self.runner, identity)
        self.api.on_keys_changed = self.keys_changed
        # An idle agent calls at least once per long-poll: keep that well inside the timeout
        # after which a silent node is declared unusable.
        poll_timeout = min(settings.poll_timeout_s, settings.heartbeat_timeout_s / 3)
        self.app = build_app(self.api, self.hub, poll_timeout, min(5.0, settings.heartbeat_timeout_s / 3),
                             manual_join=not local_provider, metrics_token=ensure_metrics_token(settings.data_dir),
                             duties_running=self.duties_running)
        telemetry.watch_store(self.engine, DEFAULT_ACCOUNT)
        self.provider: Any = None
        if local_provider and settings.provider == "sim":
            from shoal.providers.sim import SimProvider

            self.provider = SimProvider(self.ctx, self.endpoint, log_path=settings.data_dir / "sim-agents.log",
                                        spot_eviction_rate=settings.spot_eviction_rate, runner=self.runner,
                                        batch_syncs=settings.sim_batch_syncs)
        elif local_provider:
            from shoal.providers.local import LocalProvider

            self.provider = LocalProvider(self.ctx, settings.effective_nodes_dir, self.endpoint,
                                          spot_eviction_rate=settings.spot_eviction_rate, runner=self.runner,
                                          ca_file=ca_file)
        self._tasks: list[asyncio.Task[None]] = []
        self._duties_stopped = False

    def keys_changed(self, _account: str, keys: tuple[str, str]) -> None:
        """A key was regenerated (the management API): the CLI must find the new one."""
        self.keys = keys
        self.write_endpoint_file()

    def write_endpoint_file(self) -> None:
        # The CLI (`shoal account show`, every command without AZURE_BATCH_*) reads the account
        # from here, never from the store: it needs neither read access to SQLite nor
        # PostgreSQL's credentials. The file is private (write_endpoint_file).
        primary, secondary = self.keys
        record = {"endpoint": self.endpoint, "account": DEFAULT_ACCOUNT, "primaryKey": primary,
                  "secondaryKey": secondary}
        if self.provider is not None:
            record["nodesDir"] = str(self.settings.effective_nodes_dir)
        if self.certificate is not None:
            # Public: what a client trusts to reach the https endpoint.
            record["caFile"] = str(self.certificate.ca_file)
        write_endpoint_file(self.settings.data_dir, record)

    def bind_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """The wake-ups set asyncio events of ``loop``; the service calls them from any thread."""
        signals = self.ctx.signals
        signals.wake_scheduler = on_loop(loop, self.wakeups.scheduler.set)
        signals.wake_node = on_loop(loop, self.hub.wake)
        signals.wake_provider = on_loop(loop, self.wakeups.provider.set)

    async def start_loops(self) -> None:
        # Start-up (the provider's first pass) may have taken a while: no agent has had a chance
        # to call yet, so every node's timeout counts from now.
        self.liveness.forgive()
        duties: list[Any] = [self.liveness.watch_loop(),
                             scheduler_loop(self.ctx, self.wakeups.scheduler, self.hub, self.runner),
                             sampler_loop(self.ctx, self.runner), autoscale_loop(self.ctx, self.wakeups, self.runner)]
        duties.extend(run_periodically(name, duty, LIFECYCLE_INTERVAL_S, LIFECYCLE_DUTY_TIMEOUT_S)
                      for name, duty in lifecycle_duties(self.ctx, self.settings, self.runner, self.liveness))
        duties.append(run_periodically("job schedules", schedule_duty(self.ctx, self.runner), SCHEDULE_INTERVAL_S,
                                       SCHEDULE_DUTY_TIMEOUT_S))
        if self.provider is not None:
            duties.append(provider_loop(self.provider, self.wakeups.provider))
        self._tasks.extend(asyncio.create_task(duty) for duty in duties)

    def duties_running(self) -> bool:
        """Whether every background duty has started and none has ended (they never should)."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def stop_duties(self) -> None:
        """The background duties end, then the provider's agents: before the HTTP server closes
        its connections, so that no agent holds one open (a TLS connection's close waits for
        its peer) and nothing is cancelled. Held long-polls answer at once."""
        if self._duties_stopped:
            return
        self._duties_stopped = True
        self.hub.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=DUTY_STOP_TIMEOUT_S)
            for task in stuck:
                # A stop must end: a duty that does not is named (with where it waits) and left.
                stack = task.get_stack(limit=8)
                where = "".join(traceback.format_stack(stack[-1])) if stack else "?"
                log.error("the %s duty did not stop within %.0f s; stopping without it. It waits at:\n%s",
                          getattr(task.get_coro(), "__qualname__", task.get_name()), DUTY_STOP_TIMEOUT_S, where)
        if self.provider is not None:
            await self.provider.shutdown(stop_agents=True)

    async def close_store(self) -> None:
        await node_files.close()
        # What was acknowledged is committed already; this lets queued duty work finish.
        await asyncio.to_thread(self.runner.shutdown)

    def _tls_options(self) -> dict[str, Any]:
        if self.certificate is None:
            return {}
        return {"ssl_certfile": str(self.certificate.cert_file), "ssl_keyfile": str(self.certificate.key_file)}

    async def serve(self) -> None:
        # log_config=None: uvicorn's loggers go where shoal.logs sends every logger.
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_keep_alive=75, loop="none", timeout_graceful_shutdown=2,
                                http=BoundedHeadProtocol, **self._tls_options())
        server = _QuietServer(config, self.stop_duties)
        self.bind_signals(asyncio.get_running_loop())
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
            await self.stop_duties()  # done already unless serving failed
            await self.close_store()


def run(settings: Settings, *, local_provider: bool = True, on_ready: Any = None) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        pass

    logs.configure(settings.log_level, settings.log_format)

    async def main() -> None:
        plane = ControlPlane(settings, local_provider=local_provider)
        if on_ready is not None:
            on_ready(plane)
        await plane.serve()

    asyncio.run(main())
