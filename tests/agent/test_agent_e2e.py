"""The agent's main loop end to end: real agent, real processes, a scripted control plane."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from shoal.agent.main import EXIT_OK, EXIT_ORPHANED, run_agent
from tests.agent.standin import NODE_ID, NODE_TOKEN, StandIn, node_base

Script = Callable[[StandIn, Path], Awaitable[None]]


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Node roots where the agent's task users can reach them (they run as their own users)."""
    with node_base() as base:
        yield base


def run_with_standin(tmp_path: Path, script: Script, standin: StandIn) -> int:
    root = tmp_path / "node"

    async def main() -> int:
        url = await standin.start()
        agent = asyncio.ensure_future(run_agent(url, "pool1", NODE_ID, NODE_TOKEN, root, orphan_timeout_s=30))
        try:
            await script(standin, root)
            return await asyncio.wait_for(agent, 10)
        finally:
            if not agent.done():
                agent.cancel()
                await asyncio.gather(agent, return_exceptions=True)
            await standin.stop()

    return asyncio.run(main())


def test_start_task_tasks_reports_kill_and_leave(tmp_path: Path) -> None:
    start_task = {
        "commandLine": "sh -c 'echo ready > $AZ_BATCH_NODE_SHARED_DIR/ready.txt; echo $GREETING'",
        "environmentSettings": [{"name": "GREETING", "value": "hi"}],
        "maxTaskRetryCount": 0,
        "waitForSuccess": True,
    }
    standin = StandIn(start_task=start_task)

    async def script(s: StandIn, root: Path) -> None:
        await s.until(lambda: any(st["state"] == "completed" for st in s.start_task_states))
        assert s.hellos and s.hellos[0]["fileServerUrl"].startswith("http://127.0.0.1:")
        # The latest state wins: a start task that ends before the next sync may skip "running".
        final = s.start_task_states[-1]
        assert final["exitCode"] == 0 and final["failure"] is None and final["retryCount"] == 0
        assert (root / "shared/ready.txt").read_text() == "ready\n"
        assert (root / "startup/stdout.txt").read_text() == "hi\n"

        ok = s.assign("job1", "ok", "sh -c 'echo $AZ_BATCH_TASK_ID $MY_VAR'", environment={"MY_VAR": "x"})
        bad = s.assign("job1", "bad", "sh -c 'exit 3'")
        missing = s.assign("job1", "missing", "/no/such/binary")
        slow = s.assign("job1", "slow", "sh -c 'sleep 100 & sleep 100'", maxWallClockTimeS=0.3)
        await s.until(lambda: {ok, bad, missing, slow} <= s.committed.keys())
        assert s.committed[ok]["exitCode"] == 0 and s.committed[ok]["failure"] is None
        assert (root / "workitems/job1/job-1/ok/stdout.txt").read_text() == "ok x\n"
        assert s.committed[bad]["exitCode"] == 3
        assert s.committed[missing]["failure"]["code"] == "CommandProgramNotFound"
        assert s.committed[missing]["exitCode"] is None
        assert s.committed[slow]["failure"]["code"] == "TaskEnded"
        for r in s.committed.values():
            assert r["startTime"].endswith("Z") and r["endTime"] >= r["startTime"]

        # The file server serves the node root with the node token.
        async with httpx.AsyncClient(base_url=s.hellos[0]["fileServerUrl"]) as files:
            r = await files.get(
                "/files/workitems/job1/job-1/ok/stdout.txt",
                headers={"Authorization": f"ShoalNode {NODE_TOKEN}"},
            )
            assert r.text == "ok x\n"

        # Kill: the process goes away and nothing is reported for that attempt.
        victim = s.assign("job1", "victim", "sleep 60")
        await s.until(lambda: any(["job1", "victim", 1] in b["known"] for b in s.syncs))
        # Known from the moment its launch begins; the process exists a little later.
        await s.until(lambda: any(_is_sleep_60(p) for p in psutil.process_iter()), timeout=5)
        s.kill(victim)
        await s.until(lambda: not any(_is_sleep_60(p) for p in psutil.process_iter()), timeout=5)
        await s.until(lambda: ["job1", "victim", 1] not in s.syncs[-1]["known"])
        assert victim not in s.committed

        # deleteTaskDirs removes the task's directory, and the agent says so in a later sync;
        # a folder already gone is acknowledged like any other, so an order can be repeated.
        assert (root / "workitems/job1/job-1/bad").exists()
        s.delete_dir("job1", "bad")
        await s.until(lambda: not (root / "workitems/job1/job-1/bad").exists())
        await s.until(lambda: ["job1", "bad"] in s.deleted_task_dirs)
        s.delete_dir("job1", "bad")
        await s.until(lambda: s.deleted_task_dirs.count(["job1", "bad"]) == 2)

        # deleteJobDirs kills nothing itself but waits for the job's kills, then removes the
        # whole job folder: a task killed in the same answer leaves nothing behind.
        s.assign("job2", "slow", "sleep 60")
        await s.until(lambda: (root / "workitems/job2/job-1/slow").exists())
        await s.until(lambda: any(["job2", "slow", 1] in b["known"] for b in s.syncs))
        s.kill(("job2", "slow", 1))
        s.delete_job_dir("job2")
        await s.until(lambda: "job2" in s.deleted_job_dirs)
        assert not (root / "workitems/job2").exists()
        assert not any(_is_sleep_60(p) for p in psutil.process_iter())

        s.leave = True
        s.poke()

    assert run_with_standin(tmp_path, script, standin) == EXIT_OK
    assert not (tmp_path / "node").exists()
    assert all(n == 1 for n in standin.commit_count.values())


def _is_sleep_60(p: psutil.Process) -> bool:
    try:
        return p.cmdline() == ["sleep", "60"] and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_lost_response_reports_are_resent_and_completions_are_prompt(tmp_path: Path) -> None:
    # A long poll timeout: a completion must not wait for it.
    standin = StandIn(poll_timeout_s=20)

    async def script(s: StandIn, root: Path) -> None:
        await s.until(lambda: len(s.syncs) >= 1)
        s.lose_next_report_response = True
        key = s.assign("job1", "t1", "true")
        await s.until(lambda: key in s.committed)
        # The first response carrying the report was lost; the report came again and was acked.
        await s.until(lambda: not any(b["reports"] for b in s.syncs[-1:]) and key not in _known(s.syncs[-1]))
        assert s.lost_responses == 1
        assert sum(1 for b in s.syncs for r in b["reports"] if r["taskId"] == "t1") >= 2

        # A completion is reported right away, not when the 20 s long-poll would have ended (in
        # milliseconds on a quiet machine; the bound leaves room for a loaded one, and is still
        # far below the poll it must not wait for).
        began = asyncio.get_running_loop().time()
        quick = s.assign("job1", "quick", "true")
        await s.until(lambda: quick in s.committed, timeout=8)
        assert s.report_arrivals[quick] - began < 5.0

        # Many completions are batched into few syncs.
        before = len(s.syncs)
        keys = [s.assign("job2", f"t{i}", "true") for i in range(50)]
        await s.until(lambda: set(keys) <= s.committed.keys())
        assert len(s.syncs) - before < 50

        s.gone = True  # 410 NodeGone also means leave
        s.poke()

    assert run_with_standin(tmp_path, script, standin) == EXIT_OK
    assert not (tmp_path / "node").exists()


def _known(body: dict) -> set:
    return {tuple(k) for k in body["known"]}


def test_start_task_retries_then_fails(tmp_path: Path) -> None:
    standin = StandIn(
        start_task={"commandLine": "sh -c 'echo try >> ../count; exit 2'", "maxTaskRetryCount": 2}
    )

    async def script(s: StandIn, root: Path) -> None:
        await s.until(lambda: any(st["state"] == "completed" for st in s.start_task_states))
        final = s.start_task_states[-1]
        assert final["exitCode"] == 2 and final["retryCount"] == 2
        assert final["failure"]["code"] == "FailureExitCode"
        assert (root / "startup/count").read_text() == "try\n" * 3
        s.leave = True
        s.poke()

    assert run_with_standin(tmp_path, script, standin) == EXIT_OK


def test_orphaned_agent_exits(tmp_path: Path) -> None:
    with socket_port() as port:
        pass  # a port with nothing listening

    async def main() -> int:
        return await run_agent(
            f"http://127.0.0.1:{port}", "p", NODE_ID, NODE_TOKEN, tmp_path / "n", orphan_timeout_s=0.5
        )

    began = time.monotonic()
    assert asyncio.run(main()) == EXIT_ORPHANED
    assert time.monotonic() - began < 5


def test_cli_sigterm_kills_tasks(tmp_path: Path) -> None:
    """``python -m shoal.agent`` as a real process; SIGTERM kills its task trees."""
    standin = StandIn(poll_timeout_s=5)
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"

    async def main() -> None:
        url = await standin.start()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal.agent",
                "--join",
                url,
                "--pool",
                "pool1",
                "--node-id",
                NODE_ID,
                "--token",
                NODE_TOKEN,
                "--root",
                str(tmp_path / "node"),
            ],
            env=env,
        )
        try:
            standin.assign("j", "t", f"sh -c 'sleep 7{marker} & sleep 8{marker}'")
            # Listed as known from the moment it is being launched; running a moment later.
            await standin.until(lambda: bool(_procs_with(marker)), timeout=10)
            agent.send_signal(signal.SIGTERM)
            began = time.monotonic()
            while agent.poll() is None and time.monotonic() - began < 5:
                await asyncio.sleep(0.02)
            assert agent.returncode == 0
            await standin.until(lambda: not _procs_with(marker), timeout=3)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            await standin.stop()

    asyncio.run(main())


def _procs_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_no_assignment_can_stop_the_agent(tmp_path: Path) -> None:
    """Whatever an assignment carries, the attempt fails with a failureInfo and the agent goes on."""
    standin = StandIn()
    deep: dict = {}
    for _ in range(500):  # as deep as the stand-in's JSON encoder goes
        deep = {"autoUser": deep}
    bad = {
        "not-an-object": {"userIdentity": "alice"},
        "nul-in-name": {"userIdentity": {"username": "a\x00b"}},
        "unknown-user": {"userIdentity": {"username": "mallory"}},
        "bad-scope": {"userIdentity": {"autoUser": {"scope": 5}}},
        "deep-username": {"userIdentity": {"username": deep}},
        "dict-command": {"commandLine": {"not": "a string"}},
        "bad-environment": {"environment": [1, 2, 3]},
        "bad-wall-clock": {"maxWallClockTimeS": "soon"},
    }

    async def script(s: StandIn, root: Path) -> None:
        await s.until(lambda: len(s.syncs) >= 1)
        # Items the agent cannot even key are dropped; the loop goes on.
        s.assignments[("x", "y", 1)] = {"jobId": None, "taskId": ["t"], "attempt": "1"}
        s.pending_kill.append(["only-two", "parts"])
        keys = {}
        for task_id, fields in bad.items():
            command = fields.pop("commandLine", "/bin/true")
            keys[task_id] = s.assign("job1", task_id, command, **fields)
        keys["traversal"] = s.assign("..", "t", "/bin/true")
        await s.until(lambda: set(keys.values()) <= s.committed.keys())
        for task_id, key in keys.items():
            failure = s.committed[key]["failure"]
            assert failure is not None and failure["category"] in ("usererror", "servererror"), (task_id, failure)
            assert s.committed[key]["exitCode"] is None
            assert len(failure["message"]) <= 600
        assert s.committed[keys["unknown-user"]]["failure"]["code"] in ("UserAccountNotFound", "IsolationUnavailable")
        assert s.committed[keys["not-an-object"]]["failure"]["code"] == "InvalidUserIdentity"
        ok = s.assign("job1", "after", "/bin/echo fine")
        await s.until(lambda: ok in s.committed)
        assert s.committed[ok]["exitCode"] == 0
        s.leave = True
        s.poke()

    assert run_with_standin(tmp_path, script, standin) == EXIT_OK


def test_cli_reads_its_token_from_stdin_or_a_file_and_keeps_it_out_of_its_environment(tmp_path: Path) -> None:
    """How a provider hands over the token: never in argv nor in /proc/<pid>/environ."""
    standin = StandIn(poll_timeout_s=1)
    token_file = tmp_path / "token"

    async def main() -> None:
        url = await standin.start()
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        base = [sys.executable, "-m", "shoal.agent", "--join", url, "--pool", "pool1", "--node-id", NODE_ID]
        try:
            for how in ("stdin", "file"):
                token_file.write_text(NODE_TOKEN + "\n")
                token_file.chmod(0o600)
                extra = ["--token-stdin"] if how == "stdin" else ["--token-file", str(token_file)]
                before = len(standin.hellos)
                agent = subprocess.Popen([*base, "--root", str(tmp_path / how), *extra], env=env,
                                         stdin=subprocess.PIPE)
                try:
                    assert agent.stdin is not None
                    if how == "stdin":
                        agent.stdin.write(NODE_TOKEN.encode() + b"\n")
                    agent.stdin.close()
                    await standin.until(lambda n=before: len(standin.hellos) > n, timeout=10)
                    environ = Path(f"/proc/{agent.pid}/environ").read_bytes()
                    assert NODE_TOKEN.encode() not in environ
                    assert NODE_TOKEN not in " ".join(psutil.Process(agent.pid).cmdline())
                    if how == "file":
                        assert not token_file.exists(), "the token file is deleted once read"
                finally:
                    agent.send_signal(signal.SIGTERM)
                    try:
                        agent.wait(5)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait()
        finally:
            await standin.stop()

    asyncio.run(main())
