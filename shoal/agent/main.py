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

from shoal.agent.client import (
    AuthRejectedError,
    Backoff,
    ControlPlaneClient,
    NodeGoneError,
    ProtocolError,
    UnreachableError,
)
from shoal.agent.fileserver import FileServer
from shoal.agent.layout import (
    NodeIdentity,
    NodeLayout,
    UnsafeIdError,
    settings_to_dict,
    start_task_environment,
    task_environment,
)
from shoal.agent.metrics import ResourceMeter
from shoal.agent.process import (
    KILL_GRACE_S,
    USER_ERROR,
    Failure,
    ProcessResult,
    ProcessSpec,
    TaskProcess,
    iso,
    utc_now,
)
from shoal.agent.tree import contain_node, release_node

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


class _Leave(Exception):
    """The node must leave the pool: kill everything, delete the root, exit 0."""


class _Restart(Exception):
    """Reboot or reimage: stop everything, (reimage: wipe the root), start over as a new incarnation."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.reimage = kind == "reimage"


class Agent:
    """One agent process's worth of state; :func:`run_agent` is the public entry point."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.layout = NodeLayout.at(config.root)
        self.meter = ResourceMeter(str(config.root))
        self.client = ControlPlaneClient(config.join_url, config.node_id, config.token)
        self.incarnation = uuid.uuid4().hex
        self.node: NodeIdentity | None = None
        self.start_task_def: dict[str, Any] | None = None
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
        self._news = asyncio.Event()
        self._stop = asyncio.Event()
        self._is_root = os.geteuid() == 0
        self.fileserver: FileServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        self.layout.create()
        # Task trees die with their node (shoal.agent.tree): what an earlier agent on this root
        # left running dies before hello lets the control plane requeue it elsewhere.
        containment = await asyncio.to_thread(contain_node, self.layout.root)
        try:
            if self.config.node_id is None and not await self._unless_stopped(self._register()):
                return EXIT_OK
            assert self.client.token is not None
            self.fileserver = FileServer(self.layout.root, self.client.token)
            file_url = await self.fileserver.start(self.config.files_host)
            while True:
                if not await self._unless_stopped(self._hello(file_url)):
                    await self._shutdown(delete_root=False)
                    return EXIT_OK
                try:
                    return await self._sync_until_done()
                except _Restart as restart:
                    await self._restart(wipe=restart.reimage)
        except _Leave:
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
            await asyncio.to_thread(release_node, containment)

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
            await self.client.goodbye()

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
        }
        try:
            answer = await self.client.hello(body, give_up_after_s=self.config.orphan_timeout_s)
        except NodeGoneError as exc:
            raise _Leave() from exc
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

    async def _restart(self, wipe: bool) -> None:
        """What a reboot does to a node, without a new process: every task and the start task
        killed, reports of this incarnation dropped (the control plane already moved those
        tasks), and with a reimage the node root emptied and laid out afresh."""
        log.info("restarting the node (%s)", "reimage" if wipe else "reboot")
        kills = [proc.kill() for proc in self.running.values()]
        if self._start_task_proc is not None:
            kills.append(self._start_task_proc.kill())
        if self._start_task_runner is not None:
            self._start_task_runner.cancel()
        await asyncio.gather(*kills, return_exceptions=True)
        self.running.clear()
        self.reports.clear()
        self._delivered.clear()
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
        self.layout.create()

    async def _shutdown(self, delete_root: bool) -> None:
        kills = [proc.kill() for proc in self.running.values()]
        if self._start_task_proc is not None:
            kills.append(self._start_task_proc.kill())
        self.running.clear()
        if self._start_task_runner is not None:
            self._start_task_runner.cancel()
        await asyncio.gather(*kills, return_exceptions=True)
        if self._background:
            # Let kills already under way reach their SIGKILL; deletions may be cut short.
            await asyncio.wait(list(self._background), timeout=KILL_GRACE_S + 1)
        for task in list(self._background):
            task.cancel()
        if self.fileserver is not None:
            await self.fileserver.stop()
        if delete_root:
            await asyncio.to_thread(shutil.rmtree, self.layout.root, True)

    # ---- the sync loop -----------------------------------------------------------------------

    def _has_news(self) -> bool:
        if self._start_task_version != self._start_task_delivered:
            return True
        return any(key not in self._delivered for key in self.reports)

    def _build_body(self, wait: bool) -> tuple[dict[str, Any], list[AttemptKey], int]:
        keys = list(self.reports)[:MAX_REPORTS_PER_SYNC]
        known = [[j, t, a] for (j, t, a) in self.running]
        known.extend([j, t, a] for (j, t, a) in self.reports)
        body: dict[str, Any] = {
            "incarnation": self.incarnation,
            "known": known,
            "reports": [self.reports[k] for k in keys],
            "startTask": self._start_task_state
            if self._start_task_version != self._start_task_delivered
            else None,
            "wait": wait,
        }
        if self.meter.due():
            body["metrics"] = self.meter.reading()
        return body, keys, self._start_task_version

    async def _sync_until_done(self) -> int:
        backoff = Backoff()
        stop_waiter = asyncio.ensure_future(self._stop.wait())
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
                    raise _Leave() from exc
                except (httpx.TransportError, httpx.HTTPStatusError, ValueError, ProtocolError) as exc:
                    if time.monotonic() - self.client.last_contact > self.config.orphan_timeout_s:
                        raise UnreachableError(f"no contact for {self.config.orphan_timeout_s} s") from exc
                    log.warning("sync failed (%r); retrying", exc)
                    await self._sleep_unless_stopped(backoff.next_delay())
                    continue
                backoff.reset()
                self._delivered.update(sent_keys)
                self._start_task_delivered = sent_version
                had_work = self._apply(answer)
                if wait and not had_work and time.monotonic() - began < MIN_LONG_POLL_S:
                    await self._sleep_unless_stopped(self.heartbeat_interval_s, wake_on_news=True)
        finally:
            stop_waiter.cancel()

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
        """Act on a sync answer; True when it asked anything of us."""
        had_work = False
        for j, t, a in answer.get("ack") or ():
            key = (j, t, int(a))
            self.reports.pop(key, None)
            self._delivered.discard(key)
            had_work = True
        for item in answer.get("kill") or ():
            self._kill_attempt((item[0], item[1], int(item[2])))
            had_work = True
        for assignment in answer.get("run") or ():
            self._start_attempt(assignment)
            had_work = True
        for j, t in answer.get("deleteTaskDirs") or ():
            self._spawn_background(self._delete_task_dir(j, t))
            had_work = True
        if answer.get("runStartTask"):
            self._launch_start_task()
            had_work = True
        if answer.get("leave"):
            raise _Leave()
        if answer.get("restart"):
            raise _Restart(str(answer["restart"]))
        return had_work

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- tasks -------------------------------------------------------------------------------

    def _start_attempt(self, assignment: dict[str, Any]) -> None:
        job_id, task_id = str(assignment["jobId"]), str(assignment["taskId"])
        key = (job_id, task_id, int(assignment["attempt"]))
        if key in self.running or key in self.reports:
            return  # already ours: a resent assignment
        assert self.node is not None
        started = utc_now()
        try:
            paths = self.layout.task(job_id, task_id)
        except UnsafeIdError as exc:
            self._finish_without_running(key, started, Failure(USER_ERROR, "CommandLaunchFailed", str(exc)))
            return
        user, failure = self._resolve_user(assignment.get("userIdentity"))
        if failure is not None:
            self._finish_without_running(key, started, failure)
            return
        try:
            paths.create()
            if user is not None:
                for d in (paths.task_dir, paths.working_dir):
                    os.chown(d, user.pw_uid, user.pw_gid)
        except OSError as exc:
            failure = Failure(USER_ERROR, "CommandLaunchFailed", f"Cannot create the task directory: {exc}")
            self._finish_without_running(key, started, failure)
            return
        env = task_environment(
            self.layout, self.node, job_id, task_id, settings_to_dict(assignment.get("environment")), user
        )
        wall = assignment.get("maxWallClockTimeS")
        spec = ProcessSpec(
            command_line=str(assignment.get("commandLine") or ""),
            cwd=paths.working_dir,
            env=env,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            max_wall_clock_s=float(wall) if wall is not None else None,
            user=user,
        )
        proc = TaskProcess(spec)
        self.running[key] = proc
        proc.start().add_done_callback(lambda fut: self._on_attempt_done(key, proc, fut.result()))

    def _finish_without_running(self, key: AttemptKey, started: Any, failure: Failure) -> None:
        self._record_report(key, ProcessResult(started, utc_now(), None, failure))

    def _on_attempt_done(self, key: AttemptKey, proc: TaskProcess, result: ProcessResult) -> None:
        if self.running.get(key) is not proc:
            return  # killed on the control plane's order: report nothing more for it
        del self.running[key]
        self._record_report(key, result)

    def _record_report(self, key: AttemptKey, result: ProcessResult) -> None:
        report = {"jobId": key[0], "taskId": key[1], "attempt": key[2]}
        report.update(result.to_report_fields())
        self.reports[key] = report
        self._news.set()

    def _kill_attempt(self, key: AttemptKey) -> None:
        proc = self.running.pop(key, None)
        if proc is not None:
            self._spawn_background(proc.kill())
        self.reports.pop(key, None)
        self._delivered.discard(key)

    async def _delete_task_dir(self, job_id: str, task_id: str) -> None:
        if any(k[0] == job_id and k[1] == task_id for k in self.running):
            log.warning("not deleting the directory of running task %s/%s", job_id, task_id)
            return
        try:
            task_dir = self.layout.task(job_id, task_id).task_dir
        except UnsafeIdError:
            return
        await asyncio.to_thread(shutil.rmtree, task_dir, True)
        # Tidy the now-empty job-1 and job directories; rmdir refuses non-empty ones.
        for parent in (task_dir.parent, task_dir.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break

    def _resolve_user(
        self, identity: dict[str, Any] | None
    ) -> tuple[pwd.struct_passwd | None, Failure | None]:
        """The OS user to run as: None = the agent's own user.

        Limitation: auto users (and named users when the agent is not root) run as the agent's
        own user; creating pool users is the provisioning step's job, not the agent's.
        """
        if not identity or not self._is_root:
            return None, None
        name = identity.get("userName")
        if not name:
            return None, None
        try:
            return pwd.getpwnam(name), None
        except KeyError:
            return None, Failure(
                USER_ERROR,
                "CommandLaunchFailed",
                f"The user identity {name!r} does not exist on node {self.client.node_id}",
            )

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
        max_retries = int(definition.get("maxTaskRetryCount") or 0)
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
            user, failure = self._resolve_user(definition.get("userIdentity"))
            if failure is None:
                paths.create()
                env = start_task_environment(
                    self.layout, self.node, settings_to_dict(definition.get("environmentSettings")), user
                )
                spec = ProcessSpec(
                    command_line=str(definition.get("commandLine") or ""),
                    cwd=paths.working_dir,
                    env=env,
                    stdout_path=paths.stdout,
                    stderr_path=paths.stderr,
                    user=user,
                    # A start task may legitimately leave a daemon running.
                    kill_leftovers=False,
                )
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
                self._set_start_task_state(state)
                return
            retry += 1


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
) -> int:
    """Run a node agent until it leaves the pool, is orphaned, or gets SIGTERM; returns an exit code."""
    agent = Agent(
        AgentConfig(join_url, pool_id, node_id, token, Path(root), files_host, join_token, orphan_timeout_s)
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


def cli_main(argv: list[str] | None = None) -> int:
    """``python -m shoal.agent`` / ``shoal agent``: parse arguments and run the agent."""
    from shoal.agent.cli import cli_main as _cli_main

    return _cli_main(argv)
