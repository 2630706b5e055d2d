"""A scripted control-plane stand-in that speaks the agent protocol (tests only).

It is deliberately dumb: it holds a list of assignments, hands out the ones a node does not
list in ``known``, commits reports once per attempt, and lets a test script kill, leave,
ask for the start task, or lose a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

NODE_ID = "tvmps_0123456789abcdef_d"
NODE_TOKEN = "node-token"


@contextlib.contextmanager
def node_base() -> Iterator[Path]:
    """A folder for a node root that task users can walk into (pytest's own are root's, 0700).
    The stand-in's node's users are removed afterwards, whatever the agent managed to do."""
    from shoal.agent.users import remove_node_users

    base = Path(tempfile.mkdtemp(prefix="shoal-agent-test-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        if os.geteuid() == 0:
            remove_node_users(NODE_ID)
        shutil.rmtree(base, ignore_errors=True)


class StandIn:
    def __init__(self, start_task: dict[str, Any] | None = None, poll_timeout_s: float = 5.0,
                 user_accounts: list[dict[str, Any]] | None = None) -> None:
        self.start_task = start_task
        self.user_accounts = user_accounts or []
        self.poll_timeout_s = poll_timeout_s
        self.hellos: list[dict[str, Any]] = []
        self.syncs: list[dict[str, Any]] = []
        self.assignments: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.committed: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.commit_count: dict[tuple[str, str, int], int] = {}
        self.report_arrivals: dict[tuple[str, str, int], float] = {}
        self.start_task_states: list[dict[str, Any]] = []
        self.pending_kill: list[list[Any]] = []
        self.pending_delete: list[list[str]] = []
        self.pending_delete_jobs: list[str] = []
        # Folder deletions the agent acknowledged, in the order of its syncs.
        self.deleted_task_dirs: list[list[str]] = []
        self.deleted_job_dirs: list[str] = []
        self.run_start_task = start_task is not None
        self.leave = False
        self.gone = False
        self.lose_next_report_response = False
        self.lost_responses = 0
        self.changed = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/agent/v1/nodes/{node_id}/hello", self.hello, methods=["POST"]),
                Route("/agent/v1/nodes/{node_id}/sync", self.sync, methods=["POST"]),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    # ---- script API ---------------------------------------------------------------------------

    def assign(
        self, job: str, task: str, command: str, attempt: int = 1, **extra: Any
    ) -> tuple[str, str, int]:
        key = (job, task, attempt)
        self.assignments[key] = {
            "jobId": job,
            "taskId": task,
            "attempt": attempt,
            "commandLine": command,
            "environment": extra.pop("environment", {}),
            "requiredSlots": 1,
            "maxWallClockTimeS": extra.pop("maxWallClockTimeS", None),
            "userIdentity": None,
            **extra,
        }
        self.poke()
        return key

    def kill(self, key: tuple[str, str, int], mode: str = "requeue") -> None:
        self.assignments.pop(key, None)
        self.pending_kill.append([*key, mode])
        self.poke()

    def delete_dir(self, job: str, task: str) -> None:
        self.pending_delete.append([job, task])
        self.poke()

    def delete_job_dir(self, job: str) -> None:
        self.pending_delete_jobs.append(job)
        self.poke()

    def poke(self) -> None:
        self.changed.set()

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)

    # ---- protocol -----------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"ShoalNode {NODE_TOKEN}"

    async def hello(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"code": "Unauthorized"}, status_code=401)
        self.hellos.append(await request.json())
        return JSONResponse(
            {
                "heartbeatIntervalS": 1.0,
                "pollTimeoutS": self.poll_timeout_s,
                "node": {
                    "poolId": "pool1",
                    "isDedicated": True,
                    "accountName": "acct",
                    "accountUrl": "http://acct.local",
                    "taskSlotsPerNode": 4,
                    "startTask": self.start_task,
                    "userAccounts": self.user_accounts,
                },
            }
        )

    def _answer(self, body: dict[str, Any], ack: list[list[Any]]) -> dict[str, Any]:
        known = {(j, t, int(a)) for j, t, a in body.get("known", [])}
        run = [a for k, a in self.assignments.items() if k not in known and k not in self.committed]
        answer = {
            "ack": ack,
            "run": run,
            "kill": self.pending_kill,
            "deleteTaskDirs": self.pending_delete,
            "deleteJobDirs": self.pending_delete_jobs,
            "runStartTask": self.run_start_task,
            "leave": self.leave,
        }
        self.pending_kill, self.pending_delete, self.pending_delete_jobs = [], [], []
        self.run_start_task = False
        return answer

    @staticmethod
    def _has_work(answer: dict[str, Any]) -> bool:
        return any(answer[k] for k in ("ack", "run", "kill", "deleteTaskDirs", "deleteJobDirs", "runStartTask",
                                       "leave"))

    async def sync(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"code": "Unauthorized"}, status_code=401)
        if self.gone:
            return JSONResponse({"code": "NodeGone"}, status_code=410)
        body = await request.json()
        self.syncs.append(body)
        self.deleted_task_dirs.extend(body.get("deletedTaskDirs") or [])
        self.deleted_job_dirs.extend(body.get("deletedJobDirs") or [])
        now = asyncio.get_running_loop().time()
        ack = []
        for r in body.get("reports", []):
            key = (r["jobId"], r["taskId"], int(r["attempt"]))
            if key in self.assignments and key not in self.committed:
                self.committed[key] = r
                self.report_arrivals[key] = now
                self.commit_count[key] = self.commit_count.get(key, 0) + 1
            ack.append([*key])
        if body.get("startTask"):
            self.start_task_states.append(body["startTask"])
        if ack and self.lose_next_report_response:
            # Committed, but the answer never reaches the agent: it must resend and we ack again.
            self.lose_next_report_response = False
            self.lost_responses += 1
            return Response(status_code=503)
        answer = self._answer(body, ack)
        if body.get("wait") and not self._has_work(answer):
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.poll_timeout_s)
            if await request.is_disconnected():
                # The agent dropped this poll (it had news): what is pending goes to its next call.
                return Response(status_code=499)
            answer = self._answer(body, ack)
        return JSONResponse(answer)

    # ---- serving ------------------------------------------------------------------------------

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self.app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = _Server(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.005)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self.poke()
            await self._task


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield
