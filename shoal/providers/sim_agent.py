"""The simulated agents of one server: one process, each node an asyncio task.

Each simulated node speaks the agent protocol over HTTP exactly as ``shoal agent`` does
(docs/agent-protocol.md: hello with a fresh incarnation, the sync long-poll dropped and resent
with ``wait=false`` when there is news, reports resent until acknowledged, the start task and
its retries, kill, deleteTaskDirs, reboot and reimage, leave and goodbye, metrics every few
seconds), so the control plane cannot tell it from a real agent. What differs is below the
protocol: a task is a timer whose length and exit code come from its command line
(``shoal.providers.sim_script``), and its files live in memory (``shoal.providers.sim_files``).

The nodes share one small HTTP client (``sim_http``: keep-alive connections to the control
plane, at most two in use per node, a long-poll and the call that replaces it) and one file
server.

``python -m shoal.providers.sim_agent --join URL`` reads commands from stdin, one JSON object a
line (node tokens travel only here, never in argv or the environment), and writes events to
stdout the same way:

- ``{"op": "start", "seq", "nodeId", "poolId", "token", "defaults": {"durationS", "exitCode"}}``
  (``seq`` is the provider's number for this start, echoed in the node's ``exited`` event);
- ``{"op": "stop", "nodeId"}``: the node's agent vanishes at once (no goodbye), as a killed
  process would;
- events: ``{"event": "ready", "pid", "filesUrl"}`` once, then
  ``{"event": "exited", "nodeId", "seq", "reason"}`` whenever a node's agent ends (``left``, ``gone``,
  ``rejected``, ``orphaned``, ``stopped``, ``failed``).

End of stdin (the server went away) ends every node and the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn

from shoal.agent.answer import (
    LeavePool,
    RestartNode,
    acknowledge_deletions,
    raise_node_orders,
    skipping_malformed,
)
from shoal.agent.client import (
    API_PREFIX,
    GOODBYE_TIMEOUT_S,
    LONG_POLL_MARGIN_S,
    REQUEST_TIMEOUT_S,
    AuthRejectedError,
    Backoff,
    NodeGoneError,
    ProtocolError,
    UnreachableError,
)
from shoal.agent.identity import ACCOUNT, IdentityError, parse_identity
from shoal.agent.layout import STDERR_FILE, STDOUT_FILE
from shoal.agent.metrics import READING_INTERVAL_S
from shoal.agent.process import USER_ERROR
from shoal.providers.sim_batch import SyncBatcher, WaitBatcher
from shoal.providers.sim_files import File, NodeFiles, SharedFileServer, TaskDir
from shoal.providers.sim_http import HttpClient, TransportError, parse_url
from shoal.providers.sim_script import Defaults, Outcome, outcome_of

log = logging.getLogger("shoal.sim")

# The real agent's constants (shoal/agent/main.py), so timing on the wire is the same.
DEFAULT_POLL_TIMEOUT_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
REPORT_COALESCE_S = 0.002
MIN_LONG_POLL_S = 0.2
# An idle node waiting in batch waits syncs at least this often (a real agent syncs once per
# poll timeout; these wait four of them between syncs, the store read that would find nothing).
IDLE_RESYNC_S = 60.0
MAX_REPORTS_PER_SYNC = 2000
ORPHAN_TIMEOUT_S = 600.0
# A task killed at its wall-clock limit dies of SIGTERM: 128 + 15, as the real agent reports.
WALL_CLOCK_EXIT_CODE = 143

AttemptKey = tuple[str, str, int]


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime:
    return datetime.now(UTC)


def _failure(category: str, code: str, message: str) -> dict[str, str]:
    return {"category": category, "code": code, "message": message}




@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    pool_id: str
    token: str
    defaults: Defaults = Defaults()


@dataclass
class _Attempt:
    """A running attempt: its timer, its folder and what it will report."""

    handle: asyncio.TimerHandle | None
    slots: int
    started: datetime
    folder: TaskDir
    ends_at: datetime | None = None


class SimNode:
    """One simulated agent: the state ``shoal.agent.main.Agent`` keeps, with timers for processes."""

    def __init__(self, spec: NodeSpec, http: HttpClient, files_url: str, files: NodeFiles,
                 pid: int, orphan_timeout_s: float = ORPHAN_TIMEOUT_S, batcher: SyncBatcher | None = None,
                 waiter: WaitBatcher | None = None) -> None:
        self.spec = spec
        self.http = http
        # Syncs that answer at once go through the batcher when there is one (sim_batch), and
        # long-polls through the waiter: a batch wait, then a sync once woken.
        self.batcher = batcher
        self.waiter = waiter
        self._resync = False
        self._synced_at = 0.0
        self._authorization = f"ShoalNode {spec.token}"
        self.files_url = files_url
        self.files = files
        self.pid = pid
        self.orphan_timeout_s = orphan_timeout_s
        self.incarnation = uuid.uuid4().hex
        self.poll_timeout_s = DEFAULT_POLL_TIMEOUT_S
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.slots = 1
        self.pool_accounts: set[str] = set()
        self.start_task_def: dict[str, Any] | None = None
        self.running: dict[AttemptKey, _Attempt] = {}
        self.reports: dict[AttemptKey, dict[str, Any]] = {}
        self._delivered: set[AttemptKey] = set()
        # Folder deletions done, not yet acknowledged (as the real agent's).
        self._deleted: set[tuple[str, ...]] = set()
        # Job preparation and release runs: a simulated node ends each at once, successfully, and
        # says so until a sync carries it ((kind, job, generation) → its completed state).
        self._job_tasks: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._job_tasks_sent: list[tuple[str, str, int]] = []
        self._deletions_sent: set[tuple[str, ...]] = set()
        self._start_state: dict[str, Any] | None = None
        self._start_version = 0
        self._start_delivered = 0
        self._start_handle: asyncio.TimerHandle | None = None
        # A simulated node has no disk to unpack the pool's packages onto: they are "installed"
        # at once, and said so until a sync carries it (the node waits in `starting` until then).
        self._packages_unsent = False
        self._packages_sent = False
        self._news = asyncio.Event()
        self.last_contact = time.monotonic()
        self.started_at = time.monotonic()
        self._metrics_at = 0.0

    # ---- transport ---------------------------------------------------------------------------

    async def _post_once(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One attempt. TransportError (and 5xx, 429) are worth retrying; the rest are final."""
        status, raw = await self.http.post(f"{API_PREFIX}/nodes/{self.spec.node_id}{path}", orjson.dumps(body),
                                           self._authorization, timeout)
        if status == 410:
            raise NodeGoneError(raw[:500].decode(errors="replace"))
        if status == 401:
            raise AuthRejectedError(raw[:500].decode(errors="replace"))
        if status >= 500 or status == 429:
            raise TransportError(f"server answered {status}")
        if status >= 400:
            raise ProtocolError(f"{path}: {status} {raw[:500].decode(errors='replace')}")
        self.last_contact = time.monotonic()
        answer = orjson.loads(raw) if raw else {}
        if not isinstance(answer, dict):
            raise ProtocolError(f"{path}: the answer is not a JSON object")
        return answer

    async def _sync_once(self, body: dict[str, Any], wait: bool, timeout: float) -> dict[str, Any]:
        if wait or self.batcher is None:
            return await self._post_once("/sync", body, timeout)
        answer = await self.batcher.sync(self.spec.node_id, self.spec.token, body, timeout)
        self.last_contact = time.monotonic()
        return answer

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Until the node leaves or is lost; returns why it ended."""
        try:
            while True:
                await self._hello()
                try:
                    await self._sync_until_done()
                except RestartNode as restart:
                    self._restart(restart.reimage)
        except LeavePool:
            self._stop_everything()
            self.files.reset()  # the node root is deleted
            with contextlib.suppress(Exception):
                await self._post_once("/goodbye", {}, GOODBYE_TIMEOUT_S)
            return "left"
        except AuthRejectedError:
            return "rejected"
        except UnreachableError:
            return "orphaned"
        finally:
            self._stop_everything()

    async def _hello(self) -> None:
        body = {"pid": self.pid, "fileServerUrl": self.files_url, "ipAddress": "127.0.0.1",
                "incarnation": self.incarnation,
                # Nothing runs, so nothing can reach another task's files or the agent.
                "isolation": {"userIsolation": True}}
        backoff = Backoff()
        while True:
            try:
                answer = await self._post_once("/hello", body, REQUEST_TIMEOUT_S)
                break
            except NodeGoneError as exc:
                raise LeavePool() from exc
            except (TransportError, ValueError, ProtocolError) as exc:
                if time.monotonic() - self.last_contact > self.orphan_timeout_s:
                    raise UnreachableError(repr(exc)) from exc
                await asyncio.sleep(backoff.next_delay())
        self.poll_timeout_s = float(answer.get("pollTimeoutS") or DEFAULT_POLL_TIMEOUT_S)
        self.heartbeat_interval_s = float(answer.get("heartbeatIntervalS") or DEFAULT_HEARTBEAT_INTERVAL_S)
        node = answer.get("node") or {}
        self.slots = max(1, int(node.get("taskSlotsPerNode") or 1))
        self.start_task_def = node.get("startTask") if isinstance(node.get("startTask"), dict) else None
        self._packages_unsent = bool(node.get("applicationPackages"))
        accounts = node.get("userAccounts")
        accounts = accounts if isinstance(accounts, list) else []
        self.pool_accounts = {a["name"] for a in accounts if isinstance(a, dict) and isinstance(a.get("name"), str)}

    def _stop_everything(self) -> None:
        for attempt in self.running.values():
            if attempt.handle is not None:
                attempt.handle.cancel()
        self.running.clear()
        if self._start_handle is not None:
            self._start_handle.cancel()
            self._start_handle = None

    def _restart(self, wipe: bool) -> None:
        self._stop_everything()
        self.reports.clear()
        self._delivered.clear()
        self._start_state = None
        self._start_version = self._start_delivered = 0
        self.incarnation = uuid.uuid4().hex
        if wipe:
            self.files.reset()

    # ---- the sync loop (as shoal.agent.main.Agent._sync_until_done) ------------------------

    def _has_news(self) -> bool:
        if self._start_version != self._start_delivered or self._deleted or self._job_tasks or self._packages_unsent:
            return True
        return any(key not in self._delivered for key in self.reports)

    def _build_body(self, wait: bool) -> tuple[dict[str, Any], list[AttemptKey], int]:
        keys = list(self.reports)[:MAX_REPORTS_PER_SYNC]
        known = [[j, t, a] for (j, t, a) in self.running]
        known.extend([j, t, a] for (j, t, a) in self.reports)
        body: dict[str, Any] = {
            "incarnation": self.incarnation, "known": known, "reports": [self.reports[k] for k in keys],
            "startTask": self._start_state if self._start_version != self._start_delivered else None,
            "wait": wait, "knownJobTasks": [list(key) for key in self._job_tasks],
            "jobTasks": list(self._job_tasks.values())}
        self._job_tasks_sent = list(self._job_tasks)
        self._packages_sent = self._packages_unsent
        if self._packages_unsent:
            body["applicationPackages"] = {"state": "installed"}
        if time.monotonic() - self._metrics_at >= READING_INTERVAL_S:
            body["metrics"] = self._metrics()
        self._deletions_sent = acknowledge_deletions(body, self._deleted)
        return body, keys, self._start_version

    def _metrics(self) -> dict[str, float]:
        self._metrics_at = time.monotonic()
        busy = sum(a.slots for a in self.running.values())
        return {"cpuPercent": min(100.0, 100.0 * busy / self.slots), "memoryMiB": 512.0 + 256.0 * len(self.running),
                "diskGiB": 1.0, "wallClockSeconds": time.monotonic() - self.started_at, "diskReadBytes": 0.0,
                "diskWriteBytes": 0.0, "diskReadOps": 0.0, "diskWriteOps": 0.0, "networkInBytes": 0.0,
                "networkOutBytes": 0.0}

    async def _until_news(self, call: asyncio.Future[Any]) -> bool:
        """Await ``call`` unless news comes first (then it is dropped); whether it completed."""
        news = asyncio.ensure_future(self._news.wait())
        try:
            await asyncio.wait({call, news}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            news.cancel()
            if not call.done():
                call.cancel()
        return call.done() and not call.cancelled()

    async def _wait_in_batch(self) -> bool:
        """A long-poll as part of a batch wait: True when woken (or news came); False when the
        wait ended without either."""
        assert self.waiter is not None
        watch = asyncio.ensure_future(self.waiter.wait(self.spec.node_id, self.spec.token, self.incarnation,
                                                       self.poll_timeout_s))
        watch.add_done_callback(_retrieve)
        if not await self._until_news(watch):
            return True  # news while waiting
        woken = watch.result()  # raises what a sync of the node would
        self.last_contact = time.monotonic()
        return bool(woken)

    async def _after_failure(self, exc: Exception, backoff: Backoff) -> None:
        """A call that failed: the node is gone (leave), unreachable for too long (give up), or
        it tries again after a backoff."""
        if isinstance(exc, NodeGoneError):
            raise LeavePool() from exc
        if time.monotonic() - self.last_contact > self.orphan_timeout_s:
            raise UnreachableError(f"no contact for {self.orphan_timeout_s} s") from exc
        await self._sleep(backoff.next_delay())

    async def _sync_until_done(self) -> None:
        backoff = Backoff()
        while True:
            wait = not self._has_news() and not self._resync
            self._resync = False
            if wait and self.waiter is not None:
                began = time.monotonic()
                try:
                    woken = await self._wait_in_batch()
                except (NodeGoneError, TransportError, ValueError, ProtocolError) as exc:
                    await self._after_failure(exc, backoff)
                    continue
                backoff.reset()
                if not woken and time.monotonic() - began < MIN_LONG_POLL_S:
                    await self._sleep(self.heartbeat_interval_s, wake_on_news=True)
                # Woken: a sync reads what changed (as a long-poll's answer would). A wait that
                # timed out beat the node's heartbeat already and nothing woke it; a sync reads
                # the store anyway now and then (for anything that changed unannounced, and to
                # carry the node's metrics).
                self._resync = woken or time.monotonic() - self._synced_at >= IDLE_RESYNC_S
                continue
            body, sent_keys, sent_version = self._build_body(wait)
            self._news.clear()
            began = time.monotonic()
            timeout = self.poll_timeout_s + LONG_POLL_MARGIN_S if wait else REQUEST_TIMEOUT_S
            request = asyncio.ensure_future(self._sync_once(body, wait, timeout))
            # A poll dropped for news (or by a stop) may still end in an error no one reads.
            request.add_done_callback(_retrieve)
            if wait and not await self._until_news(request):
                # News while long-polling: drop the poll, resend with wait=false.
                with contextlib.suppress(BaseException):
                    await request
                await asyncio.sleep(REPORT_COALESCE_S)
                continue
            try:
                answer = await request
            except (NodeGoneError, TransportError, ValueError, ProtocolError) as exc:
                await self._after_failure(exc, backoff)
                continue
            backoff.reset()
            self._synced_at = time.monotonic()
            self._delivered.update(sent_keys)
            self._start_delivered = sent_version
            if self._packages_sent:
                self._packages_unsent = False
            self._deleted.difference_update(self._deletions_sent)
            for key in self._job_tasks_sent:
                self._job_tasks.pop(key, None)
            had_work = self._apply(answer)
            if wait and not had_work and time.monotonic() - began < MIN_LONG_POLL_S:
                await self._sleep(self.heartbeat_interval_s, wake_on_news=True)

    async def _sleep(self, seconds: float, wake_on_news: bool = False) -> None:
        if not wake_on_news:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), seconds)

    def _apply(self, answer: dict[str, Any]) -> bool:
        had_work = False
        for item in answer.get("ack") or ():
            had_work = True
            with skipping_malformed("ack", item, log):
                key = (str(item[0]), str(item[1]), int(item[2]))
                self.reports.pop(key, None)
                self._delivered.discard(key)
        for item in answer.get("kill") or ():
            had_work = True
            with skipping_malformed("kill", item, log):
                self._kill((str(item[0]), str(item[1]), int(item[2])))
        for assignment in answer.get("run") or ():
            had_work = True
            with skipping_malformed("run", assignment, log):
                self._start_attempt(assignment)
        for order in answer.get("runJobTasks") or ():
            had_work = True
            with skipping_malformed("runJobTasks", order, log):
                key = (str(order["kind"]), str(order["jobId"]), int(order["generation"]))
                now = _iso(_now())
                self._job_tasks[key] = {"kind": key[0], "jobId": key[1], "generation": key[2], "state": "completed",
                                        "startTime": now, "endTime": now, "exitCode": 0, "retryCount": 0}
                self._news.set()
        for item in answer.get("deleteTaskDirs") or ():
            had_work = True
            with skipping_malformed("deleteTaskDirs", item, log):
                job_id, task_id = str(item[0]), str(item[1])
                if not any(k[0] == job_id and k[1] == task_id for k in self.running):
                    self.files.delete_task_dir(job_id, task_id)
                    self._deleted.add(("task", job_id, task_id))
        for item in answer.get("deleteJobDirs") or ():
            had_work = True
            with skipping_malformed("deleteJobDirs", item, log):
                job_id = str(item)
                if not any(k[0] == job_id for k in self.running):
                    self.files.delete_job_dir(job_id)
                    self._deleted.add(("job", job_id))
        if answer.get("runStartTask"):
            had_work = True
            self._launch_start_task()
        raise_node_orders(answer)
        return had_work

    # ---- tasks -------------------------------------------------------------------------------

    def _start_attempt(self, assignment: dict[str, Any]) -> None:
        job_id, task_id, attempt = assignment["jobId"], assignment["taskId"], assignment["attempt"]
        if not isinstance(job_id, str) or not isinstance(task_id, str) or isinstance(attempt, bool) \
                or not isinstance(attempt, int):
            return
        key = (job_id, task_id, attempt)
        if key in self.running or key in self.reports:
            return  # already ours: a resent assignment
        started = _now()
        failure = self._identity_failure(assignment.get("userIdentity"))
        command_line = assignment.get("commandLine")
        if failure is None and not isinstance(command_line, str):
            failure = _failure(USER_ERROR, "CommandLaunchFailed", "The command line is not a string")
        if failure is not None or not isinstance(command_line, str):
            self._report(key, started, None, failure)
            return
        environment = assignment.get("environment")
        environment = {str(k): str(v) for k, v in environment.items()} if isinstance(environment, dict) else {}
        outcome = outcome_of(command_line, self.spec.defaults, environment)
        wall = assignment.get("maxWallClockTimeS")
        timed_out = isinstance(wall, int | float) and not isinstance(wall, bool) and outcome.duration_s > wall
        duration = float(wall) if timed_out else outcome.duration_s  # type: ignore[arg-type]
        slots = assignment.get("requiredSlots")
        folder = self.files.task_started(job_id, task_id)
        record = _Attempt(None, slots if isinstance(slots, int) and not isinstance(slots, bool) else 1, started,
                          folder)
        self.running[key] = record
        multi = assignment.get("multiInstance")
        if isinstance(multi, dict) and multi.get("instance"):
            # A subtask of a multi-instance task holds its node until its primary ends (the
            # control plane then kills it); the simulated primary does not wait for coordination.
            return
        record.ends_at = started + timedelta(seconds=max(0.0, duration))
        record.handle = asyncio.get_running_loop().call_later(
            max(0.0, duration), self._finish, key, record, outcome, timed_out, wall)

    def _identity_failure(self, identity: Any) -> dict[str, str] | None:
        """What the real agent refuses before starting anything: an unreadable identity, or a
        user account the pool does not have."""
        try:
            parsed = parse_identity(identity)
        except IdentityError as exc:
            return _failure(USER_ERROR, exc.code, exc.message[:500])
        if parsed.kind == ACCOUNT and parsed.account not in self.pool_accounts:
            return _failure(USER_ERROR, "UserAccountNotFound",
                            f"The userIdentity names {parsed.account!r}, which is not a user account of pool "
                            f"{self.spec.pool_id}")
        return None

    def _finish(self, key: AttemptKey, record: _Attempt, outcome: Outcome, timed_out: bool, wall: Any) -> None:
        if self.running.get(key) is not record:
            return  # killed on the control plane's order: nothing more to report
        early = (record.ends_at - _now()).total_seconds() if record.ends_at is not None else 0.0
        if early > 0:
            # Loop timers may fire a millisecond early; a task never ends before its time.
            record.handle = asyncio.get_running_loop().call_later(
                early, self._finish, key, record, outcome, timed_out, wall)
            return
        del self.running[key]
        record.folder.finish(outcome.stdout, outcome.stderr, outcome.synthetic_stdout_bytes, time.time())
        if timed_out:
            failure = _failure(USER_ERROR, "TaskEnded",
                               f"The task exceeded its maxWallClockTime ({wall} s) and was killed")
            self._report(key, record.started, WALL_CLOCK_EXIT_CODE, failure)
        else:
            self._report(key, record.started, outcome.exit_code, None)

    def _report(self, key: AttemptKey, started: datetime, exit_code: int | None,
                failure: dict[str, str] | None) -> None:
        # A timer never fires early, but the clock it is compared with may be coarser.
        ended = max(_now(), started)
        self.reports[key] = {"jobId": key[0], "taskId": key[1], "attempt": key[2], "startTime": _iso(started),
                             "endTime": _iso(ended), "exitCode": exit_code, "failure": failure}
        self._news.set()

    def _kill(self, key: AttemptKey) -> None:
        record = self.running.pop(key, None)
        if record is not None and record.handle is not None:
            record.handle.cancel()
        self.reports.pop(key, None)
        self._delivered.discard(key)

    # ---- start task --------------------------------------------------------------------------

    def _launch_start_task(self) -> None:
        if self._start_handle is not None:
            return  # running; its outcome will be reported
        if self._start_version != self._start_delivered or not self.start_task_def:
            return  # the control plane asked before it saw our latest state
        self._run_start_task(0, None)

    def _set_start_state(self, state: dict[str, Any]) -> None:
        self._start_state = state
        self._start_version += 1
        self._news.set()

    def _run_start_task(self, retry: int, last_retry: str | None) -> None:
        definition = self.start_task_def or {}
        started = _now()
        if retry:
            last_retry = _iso(started)
        self._set_start_state({"state": "running", "startTime": _iso(started), "endTime": None, "exitCode": None,
                               "retryCount": retry, "lastRetryTime": last_retry, "failure": None})
        folder = self.files.start_task_started()
        failure = self._identity_failure(definition.get("userIdentity"))
        command_line = definition.get("commandLine")
        if failure is None and not isinstance(command_line, str):
            failure = _failure(USER_ERROR, "CommandLaunchFailed", "The command line is not a string")
        if failure is not None or not isinstance(command_line, str):
            self._start_task_done(retry, last_retry, started, None, failure)
            return
        environment = {}
        for item in definition.get("environmentSettings") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                environment[item["name"]] = str(item.get("value") or "")
        outcome = outcome_of(command_line, self.spec.defaults, environment)

        ends_at = started + timedelta(seconds=outcome.duration_s)

        def finished() -> None:
            early = (ends_at - _now()).total_seconds()
            if early > 0:  # a loop timer may fire a millisecond early
                self._start_handle = asyncio.get_running_loop().call_later(early, finished)
                return
            self._start_handle = None
            ended = time.time()
            folder.entries[STDOUT_FILE] = File(outcome.stdout, folder.created, outcome.synthetic_stdout_bytes)
            folder.entries[STDERR_FILE] = File(outcome.stderr, folder.created)
            folder.entries[STDOUT_FILE].modified = folder.entries[STDERR_FILE].modified = ended
            max_retries = definition.get("maxTaskRetryCount")
            max_retries = max_retries if isinstance(max_retries, int) and not isinstance(max_retries, bool) else 0
            exhausted = max_retries != -1 and retry >= max_retries
            if outcome.exit_code == 0 or exhausted:
                failure = None if outcome.exit_code == 0 else _failure(
                    USER_ERROR, "FailureExitCode", f"The start task exited with exit code {outcome.exit_code}")
                self._start_task_done(retry, last_retry, started, outcome.exit_code, failure)
            else:
                self._run_start_task(retry + 1, last_retry)

        self._start_handle = asyncio.get_running_loop().call_later(outcome.duration_s, finished)

    def _start_task_done(self, retry: int, last_retry: str | None, started: datetime, exit_code: int | None,
                         failure: dict[str, str] | None) -> None:
        self._set_start_state({"state": "completed", "retryCount": retry, "lastRetryTime": last_retry,
                               "startTime": _iso(started), "endTime": _iso(max(_now(), started)),
                               "exitCode": exit_code, "failure": failure})


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()




# ---- the process ---------------------------------------------------------------------------


@dataclass
class _Running:
    node: SimNode
    task: asyncio.Task[str]
    seq: Any = None
    stopped: bool = False


@dataclass
class Supervisor:
    """Every simulated node of one server, and the file server they share."""

    join_url: str
    emit: Any
    orphan_timeout_s: float = ORPHAN_TIMEOUT_S
    files_url: str = ""
    nodes: dict[str, _Running] = field(default_factory=dict)
    batch: bool = True

    def __post_init__(self) -> None:
        self.http = HttpClient(*parse_url(self.join_url))
        self.batcher = SyncBatcher(self.http) if self.batch else None
        self.waiter = WaitBatcher(self.http) if self.batch else None
        self.file_server = SharedFileServer()
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        config = uvicorn.Config(self.file_server.app, lifespan="off", log_level="warning", access_log=False)
        self._server = _QuietServer(config)
        self._serve_task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
            await asyncio.sleep(0.005)
        self.files_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def handle(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        node_id = command.get("nodeId")
        if not isinstance(node_id, str):
            return
        if op == "start":
            token, pool_id = command.get("token"), command.get("poolId")
            if not isinstance(token, str) or not isinstance(pool_id, str):
                return
            current = self.nodes.get(node_id)
            if current is not None and not current.task.done():
                if current.node.spec.token == token:
                    return
                self._stop(node_id)
            spec = NodeSpec(node_id, pool_id, token, Defaults.from_json(command.get("defaults")))
            self._launch(spec, command.get("seq"))
        elif op == "stop":
            self._stop(node_id)

    def _launch(self, spec: NodeSpec, seq: Any) -> None:
        files = NodeFiles()
        node = SimNode(spec, self.http, self.files_url, files, os.getpid(), self.orphan_timeout_s, self.batcher,
                       self.waiter)
        self.file_server.add(spec.token, files)
        task = asyncio.ensure_future(node.run())
        running = _Running(node, task, seq)
        self.nodes[spec.node_id] = running
        task.add_done_callback(lambda _t: self._ended(running))

    def _stop(self, node_id: str) -> None:
        running = self.nodes.get(node_id)
        if running is not None and not running.task.done():
            running.stopped = True
            running.task.cancel()

    def _ended(self, running: _Running) -> None:
        spec = running.node.spec
        self.file_server.remove(spec.token)
        if self.nodes.get(spec.node_id) is running:
            del self.nodes[spec.node_id]
        if running.stopped or running.task.cancelled():
            reason = "stopped"
        elif running.task.exception() is not None:
            log.error("simulated node %s failed", spec.node_id, exc_info=running.task.exception())
            reason = "failed"
        else:
            reason = running.task.result()
        self.emit({"event": "exited", "nodeId": spec.node_id, "seq": running.seq, "reason": reason})

    async def stop(self) -> None:
        for node_id in list(self.nodes):
            self._stop(node_id)
        tasks = [r.task for r in self.nodes.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serve_task, 5)
        if self.batcher is not None:
            await self.batcher.aclose()
        if self.waiter is not None:
            await self.waiter.aclose()
        await self.http.aclose()


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield


async def _serve(join_url: str, orphan_timeout_s: float, batch: bool = True) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)

    def emit(event: dict[str, Any]) -> None:
        if not transport.is_closing():
            transport.write(json.dumps(event).encode() + b"\n")

    supervisor = Supervisor(join_url, emit, orphan_timeout_s, batch=batch)
    await supervisor.start()
    emit({"event": "ready", "pid": os.getpid(), "filesUrl": supervisor.files_url})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            line_future = asyncio.ensure_future(reader.readline())
            await asyncio.wait({line_future, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not line_future.done():
                line_future.cancel()
                break
            try:
                line = line_future.result()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long line: not a command of ours
            if not line:
                break  # the server is gone
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if isinstance(command, dict):
                supervisor.handle(command)
    finally:
        stopping.cancel()
        await supervisor.stop()
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.providers.sim_agent")
    parser.add_argument("--join", required=True, help="the control plane's URL")
    parser.add_argument("--orphan-timeout", type=float, default=ORPHAN_TIMEOUT_S)
    parser.add_argument("--no-batch", action="store_true",
                        help="every sync its own call (no batch-sync), as real agents make them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SHOAL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(args.join, args.orphan_timeout, batch=not args.no_batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

