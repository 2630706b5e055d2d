"""The node agent's main loop: hello, then sync forever, running what the control plane assigns.

State the agent holds (and nothing else; the control plane's store is the truth):

- ``running``: attempts whose process tree is alive, keyed ``(jobId, taskId, attempt)``;
- ``reports``: finished attempts not yet acknowledged, resent on every sync until acked;
- the start task's latest state, resent until a sync carrying it succeeds.

One sync is in flight at a time. A long-poll (``wait=true``) is cancelled as soon as there is
news (a finished attempt, a start-task change) and replaced by a ``wait=false`` sync carrying all
the news gathered so far, so completions reach the control plane within milliseconds and
arrive batched under load. Cancelling is safe because the protocol is idempotent: unacked reports
are resent, and an assignment lost with a cancelled answer is sent again since it is not in ``known``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shoal.agent import certificates as node_certificates
from shoal.agent import instance as instance_command
from shoal.agent import launcher, outputs, service_logs, taskfiles
from shoal.agent import packages as package_files
from shoal.agent.answer import (
    LeavePool,
    RestartNode,
    acknowledge_deletions,
    raise_node_orders,
    skipping_malformed,
)
from shoal.agent.applications import PACKAGE_ERROR, NodeApplications
from shoal.agent.client import (
    AuthRejectedError,
    Backoff,
    ControlPlaneClient,
    NodeGoneError,
    ProtocolError,
    UnreachableError,
)
from shoal.agent.fileserver import FileServer
from shoal.agent.identity import ACCOUNT, AGENT, POOL, Identity, IdentityError, parse_identity
from shoal.agent.job_tasks import JobTaskRunner, prep_environment
from shoal.agent.layout import (
    STARTUP_DIR_MODE,
    NodeIdentity,
    NodeLayout,
    Ownership,
    TaskPaths,
    UnsafeIdError,
    base_environment,
    multi_instance_environment,
    node_environment,
    settings_to_dict,
    start_task_environment,
    task_environment,
)
from shoal.agent.limits import NodeLimits
from shoal.agent.metrics import ResourceMeter
from shoal.agent.packages import PackageError
from shoal.agent.process import (
    KILL_GRACE_S,
    SERVER_ERROR,
    USER_ERROR,
    Failure,
    ProcessResult,
    ProcessSpec,
    TaskProcess,
    iso,
    utc_now,
    warm_up,
)
from shoal.agent.ssh import NodeLogins, UsersRefused
from shoal.agent.tree import contain_node, release_node
from shoal.agent.tree import current as current_containment
from shoal.agent.users import NodeUsers, UserProvisionError

log = logging.getLogger("shoal.agent")

ORPHAN_TIMEOUT_S = 600.0
DEFAULT_POLL_TIMEOUT_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
# After news, wait this long before syncing so completions finishing together share one sync.
REPORT_COALESCE_S = 0.002
# A long-poll answered empty faster than this means the server does not hold polls; pace ourselves.
MIN_LONG_POLL_S = 0.2
# Upper bound on reports per sync body, so a backlog after an outage goes in digestible pieces.
MAX_REPORTS_PER_SYNC = 2000
# How often the agent looks for a multi-instance instance's coordination marker.
COORDINATION_POLL_S = 0.1

# How often task-scope users whose folders are gone (retention, job deletion) are removed.
TASK_USER_SWEEP_S = 5.0
# The scope of the start task's own user when it asks for a task-scope auto user; job/task
# scopes always contain a '/', so no task can collide with it.
START_TASK_SCOPE = "startup"
# Failure messages quote what went wrong, never a whole hostile value.
MAX_FAILURE_MESSAGE_CHARS = 500

EXIT_OK = 0
EXIT_AUTH_REJECTED = 1
EXIT_ORPHANED = 3

AttemptKey = tuple[str, str, int]


@dataclass(frozen=True)
class AgentConfig:
    join_url: str
    pool_id: str
    node_id: str | None
    token: str | None
    root: Path
    files_host: str = "127.0.0.1"
    join_token: str | None = None
    orphan_timeout_s: float = ORPHAN_TIMEOUT_S
    # The CA to trust when the control plane serves https with a certificate of its own.
    ca_file: str | None = None




class Agent:
    """One agent process's worth of state; :func:`run_agent` is the public entry point."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.layout = NodeLayout.at(config.root, trusts_own_ca=config.ca_file is not None)
        self.meter = ResourceMeter(str(config.root))
        self.client = ControlPlaneClient(config.join_url, config.node_id, config.token, ca_file=config.ca_file)
        self.incarnation = uuid.uuid4().hex
        self.node: NodeIdentity | None = None
        self.start_task_def: dict[str, Any] | None = None
        # The pool's certificates as of the last hello (boot): installed per task, by visibility.
        self.certificates: list[node_certificates.NodeCertificate] = []
        self.poll_timeout_s = DEFAULT_POLL_TIMEOUT_S
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.running: dict[AttemptKey, TaskProcess] = {}
        self.reports: dict[AttemptKey, dict[str, Any]] = {}
        self._delivered: set[AttemptKey] = set()  # reports a successful sync carried, not yet acked
        self._start_task_state: dict[str, Any] | None = None
        self._start_task_version = 0
        self._start_task_delivered = 0
        self._start_task_runner: asyncio.Task[None] | None = None
        self._start_task_proc: TaskProcess | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Kills under way, so a folder is deleted only once its task's processes are dead.
        self._dying: dict[AttemptKey, asyncio.Task[Any]] = {}
        # Folder deletions done and not yet acknowledged to the control plane:
        # ("task", job, task) or ("job", job).
        self._deleted: set[tuple[str, ...]] = set()
        self._deletions_sent: set[tuple[str, ...]] = set()
        self._news = asyncio.Event()
        self._stop = asyncio.Event()
        # Application packages: the pool's (installed at each boot) and tasks' own.
        self.applications = NodeApplications(self.layout.applications, self._news.set)
        self._packages_sent = 0
        # Copies of running output and of the agent's log the next syncs carry (agent/outputs.py).
        self.copies = outputs.CopyClock(self.layout.root)
        self._copies_sent: Any = None
        self._is_root = os.geteuid() == 0
        self.fileserver: FileServer | None = None
        # Attempts being prepared (user created, folders made) before their process exists.
        self._launching: dict[AttemptKey, asyncio.Task[None]] = {}
        # Multi-instance instances held here; those whose coordination succeeded, until the
        # control plane acknowledges it, and those of them a sync has carried.
        self._instances: dict[AttemptKey, _Instance] = {}
        self._coordinated: set[AttemptKey] = set()
        self._coordination_sent: set[AttemptKey] = set()
        # Output files of the attempts that will upload some once their process exits.
        self._outputs: dict[AttemptKey, _Outputs] = {}
        self._uploading: dict[AttemptKey, asyncio.Future[Any]] = {}
        # The node's users; None when the agent is not root (tasks run as the agent's user).
        self.users: NodeUsers | None = None
        # Node users' logins (ComputeNode_AddUser): only a root agent can create their accounts.
        self.logins: NodeLogins | None = None
        self.limits = NodeLimits()  # entered in run(), before any child starts
        self.pool_account_names: set[str] = set()
        self._last_user_sweep = time.monotonic()
        # Job preparation and release runs, and the tasks waiting for a preparation.
        self.job_tasks = JobTaskRunner(self, self._start_attempt, _failure_of)
        self._job_tasks_sent: dict[Any, int] = {}
        if not self._is_root:
            log.warning("%s", _no_isolation_message())

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        self.layout.create()
        if self.config.ca_file is not None:
            await asyncio.to_thread(self.layout.install_ca_bundle, self.config.ca_file)
        # Task trees die with their node (shoal.agent.tree): what an earlier agent on this root
        # left running dies before hello lets the control plane requeue it elsewhere.
        containment = await asyncio.to_thread(contain_node, self.layout.root)
        await asyncio.to_thread(package_files.sweep, self.layout.applications)
        self.limits = await asyncio.to_thread(NodeLimits.enter, self.layout.root)
        try:
            if self.config.node_id is None and not await self._unless_stopped(self._register()):
                return EXIT_OK
            assert self.client.token is not None
            if self._is_root:
                self.logins = NodeLogins(self.config.files_host, self.layout.root,
                                         self.layout.root.parent / "ssh_host_ed25519_key", lambda: self.users,
                                         self._session_environment, lambda: self.certificates)
            controls: dict[str, Any] = {"service-logs": self._upload_service_logs}
            if self.logins is not None:
                controls["users"] = self.logins.apply
            self.fileserver = FileServer(self.layout.root, self.client.token, controls)
            file_url = await self.fileserver.start(self.config.files_host)
            while True:
                if not await self._unless_stopped(self._hello(file_url)):
                    await self._shutdown(delete_root=False)
                    return EXIT_OK
                try:
                    return await self._sync_until_done()
                except RestartNode as restart:
                    await self._restart(wipe=restart.reimage)
        except LeavePool:
            await self._shutdown(delete_root=True)
            await self._say_goodbye()
            return EXIT_OK
        except AuthRejectedError as exc:
            log.error("control plane rejected the node token: %s", exc)
            await self._shutdown(delete_root=False)
            return EXIT_AUTH_REJECTED
        except UnreachableError as exc:
            log.error("orphaned: %s; killing tasks and exiting", exc)
            await self._shutdown(delete_root=False)
            return EXIT_ORPHANED
        except asyncio.CancelledError:
            await self._shutdown(delete_root=False)
            raise
        finally:
            await self.client.aclose()
            await asyncio.to_thread(launcher.close_users, self._lasting_users())
            await asyncio.to_thread(release_node, containment)
            await asyncio.to_thread(self.limits.release)

    async def _unless_stopped(self, coro: Any) -> bool:
        """Run ``coro`` unless SIGTERM comes first; False when stopped."""
        work = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work.done():
            work.result()
            return True
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return False

    async def _say_goodbye(self) -> None:
        """Tell the control plane the node is gone, so its record goes now rather than when a
        provider or the heartbeat timeout notices. Best effort: one short try."""
        with contextlib.suppress(Exception):
            await self.client.goodbye({"agentLog": outputs.agent_log_copy()})

    def request_stop(self) -> None:
        """SIGTERM: kill running trees and exit; unsent reports may be lost (the node left)."""
        self._stop.set()

    async def _register(self) -> None:
        if not self.config.join_token:
            raise ValueError("an agent without --node-id needs a join token to register")
        cores = os.cpu_count() or 1
        memory_mib = int(_total_memory_bytes() // (1024 * 1024))
        node_id, _ = await self.client.register(
            self.config.join_token, self.config.pool_id, socket.gethostname(), cores, memory_mib
        )
        log.info("registered as node %s", node_id)

    async def _hello(self, file_url: str) -> None:
        body = {
            "pid": os.getpid(),
            "fileServerUrl": file_url,
            "ipAddress": _ip_address(self.config.files_host),
            "incarnation": self.incarnation,
            "isolation": self._isolation(),
            "sshPort": self.logins.port if self.logins is not None else None,
        }
        try:
            answer = await self.client.hello(body, give_up_after_s=self.config.orphan_timeout_s)
        except NodeGoneError as exc:
            raise LeavePool() from exc
        self.poll_timeout_s = float(answer.get("pollTimeoutS") or DEFAULT_POLL_TIMEOUT_S)
        self.heartbeat_interval_s = float(answer.get("heartbeatIntervalS") or DEFAULT_HEARTBEAT_INTERVAL_S)
        node = answer.get("node") or {}
        assert self.client.node_id is not None
        self.node = NodeIdentity(
            account_name=str(node.get("accountName") or ""),
            account_url=str(node.get("accountUrl") or ""),
            pool_id=str(node.get("poolId") or self.config.pool_id),
            node_id=self.client.node_id,
            is_dedicated=bool(node.get("isDedicated", True)),
        )
        self.start_task_def = node.get("startTask")
        # The log of each boot reaches the control plane (its first lines say how the node came up).
        self.copies.log_wanted = True
        self.certificates = node_certificates.from_hello(node.get("certificates"))
        # Before the start task and any task, which wait for them (semantics §5.4).
        self.applications.boot(node.get("applicationPackages"))
        size = node.get("vmSize")
        if isinstance(size, dict) and self.limits.enforced:
            await asyncio.to_thread(self.limits.apply, _int_or(size.get("vCPUs"), 1),
                                    _int_or(size.get("memoryMiB"), 0))
        accounts = node.get("userAccounts")
        accounts = accounts if isinstance(accounts, list) else []
        self.pool_account_names = {a["name"] for a in accounts if isinstance(a, dict) and isinstance(a.get("name"), str)}
        if self._is_root:
            if self.users is None:
                self.users = NodeUsers.for_node(self.client.node_id, self.layout.root.parent / "home")
            await asyncio.to_thread(self._provision, self.users, accounts)
            if self.users.pool_user is not None:
                warm_up(self.users.pool_user)
        if self.logins is not None:
            try:
                await self.logins.apply(node.get("loginUsers") or {"generation": 0, "users": []})
            except UsersRefused as exc:
                log.error("cannot create the node's login users: %s", exc.message)

    async def install_certificates(self, paths: TaskPaths, kind: str, user: pwd.struct_passwd | None) -> None:
        """The pool's certificates `kind` may see, into the task's `certs`, as its user's alone."""
        if not self.certificates:
            return
        try:
            await asyncio.to_thread(node_certificates.install, paths.task_dir, self.certificates, kind,
                                    (user.pw_uid, user.pw_gid) if user is not None else None)
        except OSError as exc:
            raise _LaunchFailure(Failure(USER_ERROR, "CommandLaunchFailed",
                                         f"Cannot install the pool's certificates: {exc.strerror}")) from exc

    async def _upload_service_logs(self, request: Any) -> dict[str, Any]:
        return {"numberOfFiles": await service_logs.upload(request, self.layout.startup)}

    def _session_environment(self, account: pwd.struct_passwd) -> dict[str, str]:
        """An SSH session's environment: the user's, and the node's AZ_BATCH_* variables."""
        env = base_environment(account)
        if self.node is not None:
            env.update(node_environment(self.layout, self.node))
        return env

    def _isolation(self) -> dict[str, Any]:
        """What the hello tells the control plane about running tasks as their own users."""
        limits = {"sizeLimits": {"enforced": self.limits.enforced, "reason": "; ".join(self.limits.errors)[:500]}}
        if self._is_root:
            return {"userIsolation": True, **limits}
        return {"userIsolation": False, "agentUser": _name_of_uid(os.geteuid()), "message": _no_isolation_message(),
                **limits}

    def _provision(self, users: NodeUsers, accounts: list[Any]) -> None:
        """Worker thread: the node's group and users, then ``shared`` for that group. A failure
        here is logged; tasks needing the missing user then fail with a clear failureInfo."""
        try:
            users.provision(accounts)
        except (UserProvisionError, OSError) as exc:
            log.error("cannot create the node's users: %s", exc)
        if users.gid is not None:
            self.layout.create(group=users.gid)
        closed = [str(p) for p in self.layout.root.parents if p.is_dir() and not p.stat().st_mode & 0o001]
        if closed:
            log.warning("task users cannot walk down to the node root through %s (no search permission for "
                        "others): absolute paths such as AZ_BATCH_NODE_SHARED_DIR fail in their tasks", closed[0])

    async def _restart(self, wipe: bool) -> None:
        """What a reboot does to a node, without a new process: every task and the start task
        killed, reports of this incarnation dropped (the control plane already moved those
        tasks), and with a reimage the node root emptied and laid out afresh."""
        log.info("restarting the node (%s)", "reimage" if wipe else "reboot")
        self._cancel_launches()
        self.applications.stop()
        if self.logins is not None:
            self.logins.forget()  # sessions end with the "machine"; the next hello sends the users again
        kills = [proc.kill() for proc in self.running.values()]
        if self._start_task_proc is not None:
            kills.append(self._start_task_proc.kill())
        if self._start_task_runner is not None:
            self._start_task_runner.cancel()
        await asyncio.gather(*kills, self.job_tasks.stop_all(), return_exceptions=True)
        containment = current_containment()
        if containment is not None:
            # What the start task left running (daemons) dies with a reboot, as on a real node.
            await asyncio.to_thread(containment.kill_tasks)
        self.running.clear()
        self.reports.clear()
        self._delivered.clear()
        self.copies = outputs.CopyClock(self.layout.root)
        self._start_task_state = None
        self._start_task_proc = None
        self._start_task_runner = None
        self._start_task_version = self._start_task_delivered = 0
        self.incarnation = uuid.uuid4().hex
        if wipe:
            for child in list(self.layout.root.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    await asyncio.to_thread(shutil.rmtree, child, True)
                else:
                    child.unlink(missing_ok=True)
            # A reimaged node has only the users its next hello provisions.
            await self._remove_users()
        self.layout.create()

    def _cancel_launches(self) -> None:
        for launch in self._launching.values():
            launch.cancel()
        self._launching.clear()

    def _lasting_users(self) -> list[pwd.struct_passwd]:
        if self.users is None:
            return []
        return [*([self.users.pool_user] if self.users.pool_user else []), *self.users.accounts.values()]

    async def _remove_users(self) -> None:
        if self.users is not None:
            try:
                await asyncio.to_thread(launcher.close_users, self._lasting_users())
                await asyncio.to_thread(self.users.remove_all)
            except Exception:  # best effort: the provider removes them again once the node is gone
                log.exception("cannot remove the node's users")

    async def _shutdown(self, delete_root: bool) -> None:
        self._cancel_launches()
        self.applications.stop()
        kills = [proc.kill() for proc in self.running.values()]
        if self._start_task_proc is not None:
            kills.append(self._start_task_proc.kill())
        self.running.clear()
        if self._start_task_runner is not None:
            self._start_task_runner.cancel()
        await asyncio.gather(*kills, self.job_tasks.stop_all(), return_exceptions=True)
        if self._background:
            # Let kills already under way reach their SIGKILL; deletions may be cut short.
            await asyncio.wait(list(self._background), timeout=KILL_GRACE_S + 1)
        for task in list(self._background):
            task.cancel()
        if self.fileserver is not None:
            await self.fileserver.stop()
        if self.logins is not None:
            await self.logins.close()
        if delete_root:
            await asyncio.to_thread(shutil.rmtree, self.layout.root, True)
            await self._remove_users()

    # ---- the sync loop -----------------------------------------------------------------------

    def _has_news(self) -> bool:
        if (self._start_task_version != self._start_task_delivered or self._deleted or self.job_tasks.has_news()
                or self.applications.has_news()):
            return True
        if self.copies.has_due() or self._coordinated - self._coordination_sent:
            return True
        return any(key not in self._delivered for key in self.reports)

    def _build_body(self, wait: bool) -> tuple[dict[str, Any], list[AttemptKey], int]:
        """The sync body, the reports it carries and the start-task version it carries; the
        deletions it acknowledges are kept in ``_deletions_sent``."""
        keys = _within_copy_budget(self.reports, MAX_REPORTS_PER_SYNC)
        known = [[j, t, a] for (j, t, a) in self.running]
        known.extend([j, t, a] for (j, t, a) in self._launching)
        known.extend([j, t, a] for (j, t, a) in self.reports)
        known.extend([j, t, a] for (j, t, a) in self.job_tasks.held_keys())
        job_task_reports, self._job_tasks_sent = self.job_tasks.reports()
        body: dict[str, Any] = {
            "incarnation": self.incarnation,
            "known": known,
            "reports": [self.reports[k] for k in keys],
            "startTask": self._start_task_state
            if self._start_task_version != self._start_task_delivered
            else None,
            "wait": wait,
            "knownJobTasks": self.job_tasks.known(),
            "jobTasks": job_task_reports,
        }
        if self._coordinated:
            body["coordinated"] = [list(key) for key in sorted(self._coordinated)]
            self._coordination_sent |= self._coordinated
        packages_report, self._packages_sent = self.applications.unsent()
        if packages_report is not None:
            body["applicationPackages"] = packages_report
        if self.meter.due():
            body["metrics"] = self.meter.reading()
        copies, self._copies_sent = self.copies.take(outputs.COPY_BUDGET_PER_SYNC)
        body.update(copies)
        self._deletions_sent = acknowledge_deletions(body, self._deleted)
        return body, keys, self._start_task_version

    async def _copy_ticks(self) -> None:
        """Wake the sync loop when a copy of running output or of the agent's log is due."""
        while True:
            await asyncio.sleep(outputs.COPY_CHECK_S)
            if self.copies.check(list(self.running)):
                self._news.set()

    async def _sync_until_done(self) -> int:
        backoff = Backoff()
        stop_waiter = asyncio.ensure_future(self._stop.wait())
        ticker = asyncio.ensure_future(self._copy_ticks())
        try:
            while True:
                if self._stop.is_set():
                    await self._shutdown(delete_root=False)
                    return EXIT_OK
                wait = not self._has_news()
                body, sent_keys, sent_version = self._build_body(wait)
                self._news.clear()
                began = time.monotonic()
                request = asyncio.ensure_future(self.client.sync_once(body, self.poll_timeout_s))
                waiters: set[asyncio.Future[Any]] = {request, stop_waiter}
                news_waiter = None
                if wait:
                    news_waiter = asyncio.ensure_future(self._news.wait())
                    waiters.add(news_waiter)
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if news_waiter is not None:
                        news_waiter.cancel()
                    if not request.done():
                        request.cancel()
                if not request.done() or request.cancelled():
                    # News (or SIGTERM) while long-polling: drop the poll, resend with wait=false.
                    with contextlib.suppress(BaseException):
                        await request
                    if not self._stop.is_set():
                        await asyncio.sleep(REPORT_COALESCE_S)
                    continue
                try:
                    answer = request.result()
                except NodeGoneError as exc:
                    raise LeavePool() from exc
                except (httpx.TransportError, httpx.HTTPStatusError, ValueError, ProtocolError) as exc:
                    if time.monotonic() - self.client.last_contact > self.config.orphan_timeout_s:
                        raise UnreachableError(f"no contact for {self.config.orphan_timeout_s} s") from exc
                    log.warning("sync failed (%r); retrying", exc)
                    await self._sleep_unless_stopped(backoff.next_delay())
                    continue
                backoff.reset()
                self._delivered.update(sent_keys)
                self._start_task_delivered = sent_version
                self.applications.delivered(self._packages_sent)
                self.job_tasks.delivered(self._job_tasks_sent)
                self._deleted.difference_update(self._deletions_sent)
                self.copies.delivered(self._copies_sent)
                had_work = self._apply(answer)
                if wait and not had_work and time.monotonic() - began < MIN_LONG_POLL_S:
                    await self._sleep_unless_stopped(self.heartbeat_interval_s, wake_on_news=True)
        finally:
            stop_waiter.cancel()
            ticker.cancel()

    async def _sleep_unless_stopped(self, seconds: float, wake_on_news: bool = False) -> None:
        waiters = [asyncio.ensure_future(self._stop.wait())]
        if wake_on_news:
            waiters.append(asyncio.ensure_future(self._news.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds)
        finally:
            for w in waiters:
                w.cancel()

    def _apply(self, answer: dict[str, Any]) -> bool:
        """Act on a sync answer; True when it asked anything of us. One malformed item is
        logged and skipped: nothing in an answer may stop the agent."""
        had_work = False
        for item in answer.get("killJobTasks") or ():
            had_work = True
            with skipping_malformed("killJobTasks", item, log):
                self.job_tasks.kill(item)
        for definition in answer.get("runJobTasks") or ():
            had_work = True
            with skipping_malformed("runJobTasks", definition, log):
                self.job_tasks.start(definition)
        for item in answer.get("ack") or ():
            had_work = True
            with skipping_malformed("ack", item, log):
                key = (str(item[0]), str(item[1]), int(item[2]))
                self.reports.pop(key, None)
                self._delivered.discard(key)
        for item in answer.get("coordinatedAck") or ():
            with skipping_malformed("coordinatedAck", item, log):
                key = (str(item[0]), str(item[1]), int(item[2]))
                self._coordinated.discard(key)
                self._coordination_sent.discard(key)
        for item in answer.get("allCoordinated") or ():
            with skipping_malformed("allCoordinated", item, log):
                self._release_primary((str(item[0]), str(item[1]), int(item[2])))
        for item in answer.get("kill") or ():
            had_work = True
            with skipping_malformed("kill", item, log):
                self._kill_attempt((str(item[0]), str(item[1]), int(item[2])))
        for assignment in answer.get("run") or ():
            had_work = True
            with skipping_malformed("run", assignment, log):
                self._start_attempt(assignment)
        for item in answer.get("deleteTaskDirs") or ():
            had_work = True
            with skipping_malformed("deleteTaskDirs", item, log):
                self._spawn_background(self._delete_task_dir(str(item[0]), str(item[1])))
        for item in answer.get("deleteJobDirs") or ():
            had_work = True
            with skipping_malformed("deleteJobDirs", item, log):
                self._spawn_background(self._delete_job_dir(str(item)))
        if answer.get("runStartTask"):
            self._launch_start_task()
            had_work = True
        self._maybe_sweep_task_users()
        raise_node_orders(answer)
        return had_work

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- tasks -------------------------------------------------------------------------------

    def _start_attempt(self, assignment: Any) -> None:
        key = _attempt_key(assignment)
        if key is None:
            log.warning("dropped an assignment without jobId, taskId and attempt")
            return
        if key in self.running or key in self.reports or key in self._launching:
            return  # already ours: a resent assignment
        if self.job_tasks.hold(assignment, key):
            return  # it runs once its job's preparation has succeeded here
        self._launching[key] = asyncio.ensure_future(self._launch_attempt(key, assignment))

    async def _launch_attempt(self, key: AttemptKey, assignment: dict[str, Any]) -> None:
        """Prepare and start one attempt. Whatever goes wrong before the process runs fails this
        attempt with a failureInfo; it never reaches the agent's loop."""
        started = utc_now()
        spec: ProcessSpec | None = None
        failure: Failure | None = None
        try:
            spec = await self._prepare_attempt(key, assignment)
        except asyncio.CancelledError:
            raise  # killed before it started: nothing to report
        except Exception as exc:
            failure = _failure_of(exc, key)
        if self._launching.get(key) is not asyncio.current_task():
            return  # killed (or the node restarted) while it was being prepared
        del self._launching[key]
        if spec is None:
            self._finish_without_running(key, started, failure or _failure_of(RuntimeError("no process"), key))
            return
        proc = TaskProcess(spec)
        self.running[key] = proc
        if key in self._instances:
            self._spawn_background(self._watch_coordination(key, proc))
        try:
            result = await proc.start()
            outputs = self._outputs.pop(key, None)
            if outputs is not None and self.running.get(key) is proc:
                # Uploads run after the process exits and before the report; a failed upload
                # keeps the exit code and makes the task's result a failure (semantics §5.3).
                # Held where a kill finds it: a task terminated or requeued while its files
                # upload must not go on pushing them (into the folder of its next attempt, say).
                upload = asyncio.ensure_future(taskfiles.upload(outputs.files, outputs.task_dir, outputs.env,
                                                                result.exit_code, outputs.user))
                self._uploading[key] = upload
                try:
                    failure = await upload
                finally:
                    if self._uploading.get(key) is upload:
                        del self._uploading[key]
                if failure is not None and result.failure is None:
                    result.failure = failure
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = ProcessResult(started, utc_now(), None, _failure_of(exc, key))
        self._on_attempt_done(key, proc, result)

    async def _prepare_attempt(self, key: AttemptKey, assignment: dict[str, Any]) -> ProcessSpec:
        assert self.node is not None
        job_id, task_id, _ = key
        command_line = assignment.get("commandLine")
        if not isinstance(command_line, str):
            raise _LaunchFailure(Failure(USER_ERROR, "CommandLaunchFailed", "The command line is not a string"))
        try:
            paths = self.layout.task(job_id, task_id)
        except UnsafeIdError as exc:
            raise _LaunchFailure(Failure(USER_ERROR, "CommandLaunchFailed", str(exc))) from exc
        identity = parse_identity(assignment.get("userIdentity"))
        user = await self._user(identity, f"{job_id}/{task_id}")
        try:
            paths.create(Ownership(user.pw_uid, user.pw_gid) if user is not None else None)
        except OSError as exc:
            raise _LaunchFailure(
                Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot create the task directory: {exc}")
            ) from exc
        await self.install_certificates(paths, node_certificates.TASK, user)
        env = task_environment(
            self.layout, self.node, job_id, task_id, settings_to_dict(assignment.get("environment")), user
        )
        env.update(await self._task_packages(assignment))
        prep = assignment.get("jobPreparation")
        if isinstance(prep, dict) and isinstance(prep.get("taskId"), str):
            with contextlib.suppress(UnsafeIdError):
                prep_environment(env, self.layout.task(job_id, prep["taskId"]))
        multi = assignment.get("multiInstance")
        if isinstance(multi, dict):
            command_line = await self._prepare_instance(key, multi, command_line, paths, env, user)
        resource_files = assignment.get("resourceFiles")
        if resource_files:
            failure = await taskfiles.download(resource_files, str(paths.working_dir), user)
            if failure is not None:
                raise _LaunchFailure(failure)
        if assignment.get("outputFiles"):
            self._outputs[key] = _Outputs(assignment["outputFiles"], str(paths.task_dir), env, user)
        wall = assignment.get("maxWallClockTimeS")
        return ProcessSpec(
            command_line=command_line,
            cwd=paths.working_dir,
            env=env,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            max_wall_clock_s=float(wall) if wall is not None else None,
            user=user,
            lasting_user=identity.kind in LASTING_KINDS,
        )

    async def _prepare_instance(self, key: AttemptKey, multi: dict[str, Any], command_line: str, paths: TaskPaths,
                                env: dict[str, str], user: pwd.struct_passwd | None) -> str:
        """An instance of a multi-instance task: its common resource files go into the task's
        folder (AZ_BATCH_TASK_SHARED_DIR) and it runs the command `shoal.agent.instance` builds: the
        coordination command and then, on the primary, the task's command line (semantics §3.5)."""
        instance = int(multi.get("instance") or 0)
        hosts = [str(host) for host in multi.get("hosts") or []]
        env.update(multi_instance_environment(paths, instance, hosts, int(multi.get("masterPort") or 0)))
        common = multi.get("commonResourceFiles")
        if common:
            failure = await taskfiles.download(common, str(paths.task_dir), user)
            if failure is not None:
                raise _LaunchFailure(failure)
        for marker in (instance_command.COORDINATED, instance_command.ALL_COORDINATED):
            # Left by an earlier attempt in the same folder: it must not count for this one.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.task_dir / marker)
        self._instances[key] = _Instance(paths.task_dir, instance == 0)
        try:
            return instance_command.command_line(str(multi.get("coordinationCommandLine") or ""),
                                                 command_line if instance == 0 else None, str(paths.task_dir))
        except ValueError as exc:
            raise _LaunchFailure(Failure(USER_ERROR, "CommandLaunchFailed",
                                         f"Cannot parse the multi-instance command lines: {exc}")) from exc
    async def _task_packages(self, assignment: dict[str, Any]) -> dict[str, str]:
        """The variables of the pool's packages and the task's own, installed first; a package
        that cannot be installed fails the task (a pre-processing error, not retried)."""
        if not await self.applications.pool_ready():
            raise _LaunchFailure(Failure(USER_ERROR, PACKAGE_ERROR, self.applications.pool_failure
                                         or "The pool's application packages are not installed."))
        env = dict(self.applications.pool_env)
        try:
            env.update(await self.applications.install(assignment.get("applicationPackages")))
        except PackageError as exc:
            raise _LaunchFailure(Failure(USER_ERROR, PACKAGE_ERROR, str(exc)[:2000])) from exc
        return env

    async def _user(self, identity: Identity, scope_key: str) -> pwd.struct_passwd | None:
        """The OS user for ``identity``; None = the agent's own (root for admin auto users, as
        Batch gives root to admin auto users on Linux). Creating a user runs in a thread."""
        if not self._is_root or self.users is None:
            if identity.kind == ACCOUNT:
                self._check_account_name(identity)
                raise IdentityError(
                    "IsolationUnavailable",
                    f"The node agent does not run as root, so it cannot run a task as user {identity.account!r}",
                )
            return None
        users = self.users
        if identity.kind == AGENT:
            return None
        if identity.kind == POOL:
            return users.pool_user or await asyncio.to_thread(users.ensure_pool_user)
        if identity.kind == ACCOUNT:
            self._check_account_name(identity)
            assert identity.account is not None
            account = users.accounts.get(identity.account)
            if account is None:
                reason = users.account_errors.get(identity.account, "it could not be created")
                raise IdentityError(
                    "UserAccountUnavailable",
                    f"The pool user account {identity.account!r} is not available on this node: {reason}",
                )
            return account
        return users.task_users.get(scope_key) or await asyncio.to_thread(users.ensure_task_user, scope_key)

    def _check_account_name(self, identity: Identity) -> None:
        if identity.account not in self.pool_account_names:
            raise IdentityError(
                "UserAccountNotFound",
                f"The userIdentity names {identity.account!r}, which is not a user account of pool "
                f"{self.node.pool_id if self.node else self.config.pool_id}",
            )

    def _finish_without_running(self, key: AttemptKey, started: Any, failure: Failure) -> None:
        self._record_report(key, ProcessResult(started, utc_now(), None, failure))

    async def _watch_coordination(self, key: AttemptKey, proc: TaskProcess) -> None:
        """Report a multi-instance instance's coordination once its marker appears (its
        coordination command succeeded), for as long as the instance runs."""
        instance = self._instances.get(key)
        while instance is not None and self.running.get(key) is proc:
            if (instance.task_dir / instance_command.COORDINATED).exists():
                self._coordinated.add(key)
                self._news.set()
                return
            await asyncio.sleep(COORDINATION_POLL_S)

    def _release_primary(self, key: AttemptKey) -> None:
        """Every instance has coordinated: the primary may run the task's command line. The
        marker is made in the task's folder (the task user's) without following a link."""
        instance = self._instances.get(key)
        if instance is None or not instance.primary or instance.released or key not in self.running:
            return
        instance.released = True
        try:
            folder = os.open(instance.task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.close(os.open(instance_command.ALL_COORDINATED, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                                 os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder))
            finally:
                os.close(folder)
        except FileExistsError:
            pass  # the task made it itself: it only skips its own wait
        except OSError as exc:
            log.warning("cannot release the primary of %s: %s", key, exc)

    def _forget_instance(self, key: AttemptKey) -> None:
        self._instances.pop(key, None)
        self._coordinated.discard(key)
        self._coordination_sent.discard(key)

    def _on_attempt_done(self, key: AttemptKey, proc: TaskProcess, result: ProcessResult) -> None:
        if self.running.get(key) is not proc:
            return  # killed on the control plane's order: report nothing more for it
        del self.running[key]
        self._forget_instance(key)
        self._record_report(key, result)

    def _record_report(self, key: AttemptKey, result: ProcessResult) -> None:
        report = {"jobId": key[0], "taskId": key[1], "attempt": key[2]}
        report.update(result.to_report_fields())
        # The output's copy is taken once, as the attempt ends, and resent with the report.
        report["output"] = outputs.output_copy(self.layout.root, key[0], key[1])
        self.reports[key] = report
        self._news.set()

    def _kill_attempt(self, key: AttemptKey) -> None:
        self.job_tasks.drop_held(key)
        self._forget_instance(key)
        self._outputs.pop(key, None)
        launch = self._launching.pop(key, None)
        if launch is not None:
            launch.cancel()
        proc = self.running.pop(key, None)
        upload = self._uploading.pop(key, None)
        if upload is not None:
            upload.cancel()  # the transfer kills its process group before it ends
        if proc is not None or upload is not None:
            ends = [asyncio.ensure_future(proc.kill())] if proc is not None else []
            kill = asyncio.ensure_future(asyncio.gather(*ends, *([upload] if upload else []), return_exceptions=True))
            self._dying[key] = kill

            def dead(done: asyncio.Task[Any], key: AttemptKey = key) -> None:
                if self._dying.get(key) is done:
                    del self._dying[key]
                self._background.discard(done)

            self._background.add(kill)
            kill.add_done_callback(dead)
        self.reports.pop(key, None)
        self._delivered.discard(key)

    async def _deleted_when_dead(self, job_id: str, task_id: str | None) -> bool:
        """Wait for the kills of the job's (or the task's) attempts; False while one still runs,
        whose folder is not deleted (the order comes again, by then for a finished task)."""
        def ours(key: AttemptKey) -> bool:
            return key[0] == job_id and (task_id is None or key[1] == task_id)

        if any(ours(key) for key in (*self.running, *self._launching)):
            log.warning("not deleting the folder of %s/%s: a task of it is running", job_id, task_id or "*")
            return False
        dying = [kill for key, kill in self._dying.items() if ours(key)]
        if dying:
            await asyncio.wait(dying)
        return True

    async def _delete_task_dir(self, job_id: str, task_id: str) -> None:
        if not await self._deleted_when_dead(job_id, task_id):
            return
        try:
            task_dir = self.layout.task(job_id, task_id).task_dir
        except UnsafeIdError:
            self._acknowledge_deletion(("task", job_id, task_id))
            return
        await asyncio.to_thread(shutil.rmtree, task_dir, True)
        # Tidy the now-empty job-1 and job directories; rmdir refuses non-empty ones.
        for parent in (task_dir.parent, task_dir.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break
        if self.users is not None:
            await asyncio.to_thread(self.users.remove_task_user, f"{job_id}/{task_id}")
        self._acknowledge_deletion(("task", job_id, task_id))

    async def _delete_job_dir(self, job_id: str) -> None:
        if not await self._deleted_when_dead(job_id, None):
            return
        try:
            job_dir = self.layout.job_dir(job_id)
        except UnsafeIdError:
            self._acknowledge_deletion(("job", job_id))
            return
        await asyncio.to_thread(shutil.rmtree, job_dir, True)
        # The job's task-scope users go with the next sweep, which finds their folders gone.
        self._acknowledge_deletion(("job", job_id))

    def _acknowledge_deletion(self, key: tuple[str, ...]) -> None:
        self._deleted.add(key)
        self._news.set()

    def _maybe_sweep_task_users(self) -> None:
        """Task-scope users go with their task's folder, whoever removed it (the file server on
        the control plane's order, job deletion, a deleteTaskDirs)."""
        if self.users is None or not self.users.task_users:
            return
        now = time.monotonic()
        if now - self._last_user_sweep < TASK_USER_SWEEP_S:
            return
        self._last_user_sweep = now
        active = {f"{j}/{t}" for (j, t, _) in (*self.running, *self._launching)}
        if self._start_task_runner is not None and not self._start_task_runner.done():
            active.add(START_TASK_SCOPE)
        self._spawn_background(asyncio.to_thread(self._sweep_task_users, self.users, active))

    def _sweep_task_users(self, users: NodeUsers, active: set[str]) -> None:
        for scope_key in list(users.task_users):
            if scope_key in active or self._scope_folder_exists(scope_key):
                continue
            try:
                users.remove_task_user(scope_key)
            except (UserProvisionError, OSError) as exc:
                log.warning("cannot remove the user of %s: %s", scope_key, exc)

    def _scope_folder_exists(self, scope_key: str) -> bool:
        if scope_key == START_TASK_SCOPE:
            return self.layout.startup.is_dir()
        job_id, _, task_id = scope_key.partition("/")
        try:
            return self.layout.task(job_id, task_id).task_dir.is_dir()
        except UnsafeIdError:
            return False

    # ---- start task --------------------------------------------------------------------------

    def _launch_start_task(self) -> None:
        if self._start_task_runner is not None and not self._start_task_runner.done():
            return  # already running; its outcome will be reported
        if self._start_task_version != self._start_task_delivered:
            # The control plane asked before it saw our latest start-task state (it repeats
            # runStartTask until a report arrives); that state answers the request.
            return
        if not self.start_task_def:
            return
        self._start_task_runner = asyncio.ensure_future(self._run_start_task(self.start_task_def))

    def _set_start_task_state(self, state: dict[str, Any]) -> None:
        self._start_task_state = state
        self._start_task_version += 1
        self._news.set()

    async def _run_start_task(self, definition: dict[str, Any]) -> None:
        assert self.node is not None
        if not await self.applications.pool_ready():
            return  # the node is unusable: the start task does not run (semantics §5.4)
        max_retries = _int_or(definition.get("maxTaskRetryCount"), 0)
        retry = 0
        last_retry_time: str | None = None
        paths = self.layout.start_task()
        while True:
            started = utc_now()
            if retry:
                last_retry_time = iso(started)
            self._set_start_task_state(
                {
                    "state": "running",
                    "startTime": iso(started),
                    "endTime": None,
                    "exitCode": None,
                    "retryCount": retry,
                    "lastRetryTime": last_retry_time,
                    "failure": None,
                }
            )
            failure: Failure | None = None
            try:
                spec = await self._prepare_start_task(definition, paths)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = _failure_of(exc, ("", START_TASK_SCOPE, retry))
            if failure is None:
                self._start_task_proc = TaskProcess(spec)
                result = await self._start_task_proc.start()
                self._start_task_proc = None
            else:
                result = ProcessResult(started, utc_now(), None, failure)
            exhausted = max_retries != -1 and retry >= max_retries
            if result.exit_code == 0 or result.failure is not None or exhausted:
                if result.failure is None and result.exit_code != 0:
                    # The agent owns start-task retries, so it states the final failure itself.
                    result.failure = Failure(
                        USER_ERROR,
                        "FailureExitCode",
                        f"The start task exited with exit code {result.exit_code}",
                    )
                state = {"state": "completed", "retryCount": retry, "lastRetryTime": last_retry_time}
                state.update(result.to_report_fields())
                if result.failure is not None:
                    # What the node's errors quote, so a user sees why without fetching files.
                    state["stderrTail"] = await asyncio.to_thread(_tail, self.layout.start_task().stderr)
                # Kept by the control plane past the node (service/node_copies.py), with the
                # agent's log as it stands when the node is ready (or not).
                state["output"] = await asyncio.to_thread(outputs.start_task_copy, self.layout.root)
                self.copies.log_wanted = True
                self._set_start_task_state(state)
                return
            retry += 1

    async def _prepare_start_task(self, definition: dict[str, Any], paths: Any) -> ProcessSpec:
        assert self.node is not None
        command_line = definition.get("commandLine")
        if not isinstance(command_line, str):
            raise _LaunchFailure(Failure(USER_ERROR, "CommandLaunchFailed", "The command line is not a string"))
        identity = parse_identity(definition.get("userIdentity"))
        user = await self._user(identity, START_TASK_SCOPE)
        owner = None
        if self.users is not None and self.users.gid is not None:
            # Pool users read what the start task leaves (semantics §4.1); only its user writes.
            owner = Ownership(user.pw_uid if user else os.geteuid(), self.users.gid, STARTUP_DIR_MODE)
        try:
            paths.create(owner)
        except OSError as exc:
            raise _LaunchFailure(
                Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot create the start task directory: {exc}")
            ) from exc
        await self.install_certificates(paths, node_certificates.START_TASK, user)
        resource_files = definition.get("resourceFiles")
        if resource_files:
            failure = await taskfiles.download(resource_files, str(paths.working_dir), user)
            if failure is not None:
                raise _LaunchFailure(failure)
        env = start_task_environment(
            self.layout, self.node, settings_to_dict(definition.get("environmentSettings")), user
        )
        env.update(self.applications.pool_env)
        return ProcessSpec(
            command_line=command_line,
            cwd=paths.working_dir,
            env=env,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            user=user,
            lasting_user=identity.kind in LASTING_KINDS,
            # A start task may legitimately leave a daemon running.
            kill_leftovers=False,
        )


@dataclass
class _Instance:
    """An instance of a multi-instance task held on this node."""

    task_dir: Path
    primary: bool
    released: bool = False  # ALL_COORDINATED is in place


@dataclass(frozen=True)
class _Outputs:
    """What an attempt uploads when its process has exited."""

    files: list[dict[str, Any]]
    task_dir: str
    env: dict[str, str]
    user: pwd.struct_passwd | None


LASTING_KINDS = (POOL, ACCOUNT)
"""Identities whose user outlives the task, so that a spawner of its own pays off."""


STDERR_TAIL_BYTES = 2048
STDERR_TAIL_LINES = 10


def _tail(path: Path) -> str:
    """The last lines of a file the agent wrote (a task's stderr), bounded; empty if none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - STDERR_TAIL_BYTES), os.SEEK_SET)
        data = os.read(fd, STDERR_TAIL_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)


def _int_or(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return default
    try:
        return int(value)
    except ValueError:
        return default


class _LaunchFailure(Exception):
    """An attempt that cannot start, with the failureInfo that says why."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _failure_of(exc: BaseException, key: tuple[str, str, int]) -> Failure:
    """The failureInfo of an attempt whose start raised ``exc``."""
    if isinstance(exc, _LaunchFailure):
        return exc.failure
    if isinstance(exc, IdentityError):
        return Failure(USER_ERROR, exc.code, exc.message[:MAX_FAILURE_MESSAGE_CHARS])
    if isinstance(exc, UserProvisionError):
        return Failure(SERVER_ERROR, "UserCreationFailed",
                       f"The task's user could not be created on the node: {exc}"[:MAX_FAILURE_MESSAGE_CHARS])
    log.warning("attempt %s/%s/%s could not start", *key, exc_info=exc)
    return Failure(USER_ERROR, "CommandLaunchFailed",
                   f"The task could not be started: {type(exc).__name__}: {exc}"[:MAX_FAILURE_MESSAGE_CHARS])


def _within_copy_budget(reports: dict[AttemptKey, dict[str, Any]], most: int) -> list[AttemptKey]:
    """The reports the next sync carries: at most ``most``, and no more output copies than
    outputs.COPY_BUDGET_PER_SYNC (always at least one report)."""
    keys: list[AttemptKey] = []
    spent = 0
    for key, report in reports.items():
        cost = outputs.copy_bytes(report)
        if len(keys) >= most or (keys and spent + cost > outputs.COPY_BUDGET_PER_SYNC):
            break
        keys.append(key)
        spent += cost
    return keys


def _attempt_key(assignment: Any) -> AttemptKey | None:
    if not isinstance(assignment, dict):
        return None
    job_id, task_id, attempt = assignment.get("jobId"), assignment.get("taskId"), assignment.get("attempt")
    if not isinstance(job_id, str) or not isinstance(task_id, str):
        return None
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        return None
    return job_id, task_id, attempt




def _no_isolation_message() -> str:
    return (f"The node agent runs as {_name_of_uid(os.geteuid())!r}, not root: it cannot create users, so "
            "every task runs as that user and tasks are not isolated from each other or from the agent; "
            "a task naming a userName fails.")


def _name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _ip_address(files_host: str) -> str:
    if files_host not in ("0.0.0.0", "::", ""):
        return files_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _total_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


async def run_agent(
    join_url: str,
    pool_id: str,
    node_id: str | None,
    token: str | None,
    root: str | os.PathLike[str],
    files_host: str = "127.0.0.1",
    join_token: str | None = None,
    orphan_timeout_s: float = ORPHAN_TIMEOUT_S,
    ca_file: str | None = None,
) -> int:
    """Run a node agent until it leaves the pool, is orphaned, or gets SIGTERM; returns an exit code."""
    agent = Agent(
        AgentConfig(join_url, pool_id, node_id, token, Path(root), files_host, join_token, orphan_timeout_s,
                    ca_file)
    )
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, agent.request_stop)
            installed.append(sig)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not the main thread (tests): the caller stops us by cancelling
    try:
        return await agent.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
