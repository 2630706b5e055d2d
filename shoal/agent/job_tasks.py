"""A node's job preparation and release tasks (semantics §3.4), run on the control plane's order.

The control plane hands a run as ``runJobTasks`` ({kind, jobId, generation, …}) and stops one
with ``killJobTasks``; a run is named ``(kind, jobId, generation)``. As with the start task, the
agent owns the retries of a preparation (its maxTaskRetryCount) and sends the latest state of
each run until a sync carrying it succeeds; the control plane drops a state of a run that is no
longer the node's pending one, so nothing here must be exact about what it has sent.

Tasks of a job whose preparation must succeed first (``jobPreparation.await``) are held here
until it has; if it fails they stay held: the control plane moves them back to the queue, and
the kill it sends for them drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.agent import taskfiles
from shoal.agent.certificates import TASK
from shoal.agent.identity import parse_identity
from shoal.agent.layout import STARTUP_DIR_MODE, Ownership, TaskPaths, settings_to_dict, task_environment
from shoal.agent.process import USER_ERROR, Failure, ProcessResult, ProcessSpec, TaskProcess, iso, utc_now

if TYPE_CHECKING:
    from shoal.agent.main import Agent

log = logging.getLogger("shoal.agent")

RunKey = tuple[str, str, int]  # (prep | release, job id, generation)
PREP = "prep"


class _DownloadFailed(Exception):
    """A resource file of the run could not be fetched: a pre-processing failure, not retried."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def prep_environment(env: dict[str, str], prep_paths: TaskPaths) -> None:
    """AZ_BATCH_JOB_PREP_DIR and its working dir, for every task of a job with a preparation
    task except the preparation itself (semantics §4.2)."""
    env["AZ_BATCH_JOB_PREP_DIR"] = str(prep_paths.task_dir)
    env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_paths.working_dir)


class JobTaskRunner:
    """The job preparation and release runs of one agent process."""

    def __init__(self, agent: Agent, start_task: Callable[[dict[str, Any]], None],
                 failure_of: Callable[[BaseException, tuple[str, str, int]], Failure]) -> None:
        self.agent = agent
        self._start_task = start_task  # starts a held task's attempt once it may run
        self._failure_of = failure_of  # the agent's one wording of launch failures
        self._runs: dict[RunKey, asyncio.Task[None]] = {}
        self._procs: dict[RunKey, TaskProcess] = {}
        self._states: dict[RunKey, dict[str, Any]] = {}
        self._versions: dict[RunKey, int] = {}
        self._delivered: dict[RunKey, int] = {}
        # job id → the outcome of its latest preparation here: running | success | failure.
        self._prepared: dict[str, str] = {}
        self._held: dict[str, dict[tuple[str, str, int], dict[str, Any]]] = {}

    # ---- what the sync body carries ---------------------------------------------------------

    def known(self) -> list[list[Any]]:
        keys = set(self._runs) | {key for key in self._states if self._versions[key] != self._delivered.get(key)}
        return [list(key) for key in sorted(keys)]

    def held_keys(self) -> list[tuple[str, str, int]]:
        return [key for held in self._held.values() for key in held]

    def has_news(self) -> bool:
        return any(version != self._delivered.get(key) for key, version in self._versions.items())

    def reports(self) -> tuple[list[dict[str, Any]], dict[RunKey, int]]:
        sent = {key: version for key, version in self._versions.items() if version != self._delivered.get(key)}
        return [self._states[key] for key in sent], sent

    def delivered(self, sent: dict[RunKey, int]) -> None:
        for key, version in sent.items():
            if key not in self._versions:
                continue  # killed or forgotten since
            self._delivered[key] = version
            if key not in self._runs and self._versions.get(key) == version:
                # Finished and recorded: nothing more to say about it.
                self._states.pop(key, None)
                self._versions.pop(key, None)
                self._delivered.pop(key, None)

    # ---- orders -----------------------------------------------------------------------------

    def hold(self, assignment: dict[str, Any], key: tuple[str, str, int]) -> bool:
        """Whether the attempt must wait for its job's preparation (it is kept until then)."""
        prep = assignment.get("jobPreparation")
        if not isinstance(prep, dict) or not prep.get("await"):
            return False
        if self._prepared.get(key[0]) == "success":
            return False
        self._held.setdefault(key[0], {})[key] = assignment
        return True

    def drop_held(self, key: tuple[str, str, int]) -> bool:
        held = self._held.get(key[0])
        if held is None or key not in held:
            return False
        del held[key]
        return True

    def start(self, definition: Any) -> None:
        if not isinstance(definition, dict):
            return
        kind, job_id, generation = definition.get("kind"), definition.get("jobId"), definition.get("generation")
        if kind not in (PREP, "release") or not isinstance(job_id, str) or not isinstance(generation, int):
            log.warning("dropped a job task order without kind, jobId and generation")
            return
        key = (kind, job_id, generation)
        if key in self._runs or key in self._states:
            return  # already ours: a resent order
        if kind == PREP:
            self._prepared[job_id] = "running"
        self._runs[key] = asyncio.ensure_future(self._run(key, definition))

    def kill(self, item: Any) -> None:
        key = (str(item[0]), str(item[1]), int(item[2]))
        run = self._runs.pop(key, None)
        if run is not None:
            run.cancel()
        proc = self._procs.pop(key, None)
        if proc is not None:
            self.agent._spawn_background(proc.kill())
        self._states.pop(key, None)
        self._versions.pop(key, None)
        self._delivered.pop(key, None)

    async def stop_all(self) -> None:
        """A restart or shutdown: everything killed and forgotten (the control plane orders the
        pending runs again to the next incarnation)."""
        for run in self._runs.values():
            run.cancel()
        kills = [proc.kill() for proc in self._procs.values()]
        self._runs.clear()
        self._procs.clear()
        await asyncio.gather(*kills, return_exceptions=True)
        self._states.clear()
        self._versions.clear()
        self._delivered.clear()
        self._prepared.clear()
        self._held.clear()

    def busy_with(self, job_id: str) -> bool:
        return any(key[1] == job_id for key in self._runs)

    # ---- one run ----------------------------------------------------------------------------

    def _set_state(self, key: RunKey, state: dict[str, Any]) -> None:
        self._states[key] = {"kind": key[0], "jobId": key[1], "generation": key[2], **state}
        self._versions[key] = self._versions.get(key, 0) + 1
        self.agent._news.set()

    async def _run(self, key: RunKey, definition: dict[str, Any]) -> None:
        kind, job_id, _ = key
        max_retries = definition.get("maxTaskRetryCount") if kind == PREP else 0
        max_retries = max_retries if isinstance(max_retries, int) and not isinstance(max_retries, bool) else 0
        retry = 0
        last_retry_time: str | None = None
        while True:
            started = utc_now()
            if retry:
                last_retry_time = iso(started)
            self._set_state(key, {"state": "running", "startTime": iso(started), "retryCount": retry,
                                  "lastRetryTime": last_retry_time})
            failure: Failure | None = None
            try:
                spec = await self._prepare(definition)
            except asyncio.CancelledError:
                raise
            except _DownloadFailed as exc:
                failure = exc.failure
            except Exception as exc:
                failure = self._failure_of(exc, (job_id, str(definition.get("taskId")), retry))
            if failure is None:
                proc = self._procs[key] = TaskProcess(spec)
                try:
                    result = await proc.start()
                finally:
                    if self._procs.get(key) is proc:
                        del self._procs[key]
            else:
                result = ProcessResult(started, utc_now(), None, failure)
            exhausted = max_retries != -1 and retry >= max_retries
            if result.exit_code == 0 or result.failure is not None or exhausted:
                if result.failure is None and result.exit_code != 0:
                    # The agent owns the retries, so it states the final failure itself.
                    result.failure = Failure(USER_ERROR, "FailureExitCode",
                                             f"The task exited with exit code {result.exit_code}")
                state = {"state": "completed", "retryCount": retry, "lastRetryTime": last_retry_time}
                state.update(result.to_report_fields())
                self._set_state(key, state)
                break
            retry += 1
        self._runs.pop(key, None)
        if kind == PREP:
            succeeded = result.exit_code == 0 and result.failure is None
            self._prepared[job_id] = "success" if succeeded else "failure"
            if succeeded:
                for assignment in self._held.pop(job_id, {}).values():
                    self._start_task(assignment)

    async def _prepare(self, definition: dict[str, Any]) -> ProcessSpec:
        agent = self.agent
        assert agent.node is not None
        command_line = definition.get("commandLine")
        job_id, task_id = str(definition["jobId"]), str(definition.get("taskId"))
        if not isinstance(command_line, str):
            raise ValueError("The command line is not a string")
        paths = agent.layout.task(job_id, task_id)
        user = await agent._user(parse_identity(definition.get("userIdentity")), f"{job_id}/{task_id}")
        owner = None
        if agent.users is not None and agent.users.gid is not None:
            # The job's tasks read what the preparation leaves (semantics §4.1); only its user writes.
            owner = Ownership(user.pw_uid if user else os.geteuid(), agent.users.gid, STARTUP_DIR_MODE)
        paths.create(owner)
        await agent.install_certificates(paths, TASK, user)
        resource_files = definition.get("resourceFiles")
        if resource_files:
            failure = await taskfiles.download(resource_files, str(paths.working_dir), user)
            if failure is not None:
                raise _DownloadFailed(failure)
        env = task_environment(agent.layout, agent.node, job_id, task_id,
                               settings_to_dict(definition.get("environment")), user)
        # Every task of a pool with packages sees them (semantics §4.2).
        env.update(agent.applications.pool_env)
        if definition.get("kind") != PREP:
            prep_id = definition.get("prepTaskId")
            if isinstance(prep_id, str):
                with contextlib.suppress(ValueError):
                    prep_environment(env, agent.layout.task(job_id, prep_id))
        wall = definition.get("maxWallClockTimeS")
        return ProcessSpec(command_line=command_line, cwd=paths.working_dir, env=env, stdout_path=paths.stdout,
                           stderr_path=paths.stderr, max_wall_clock_s=float(wall) if wall is not None else None,
                           user=user)
