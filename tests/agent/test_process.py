"""The process runner against real processes and real files."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from shoal.agent.layout import NodeIdentity, NodeLayout, start_task_environment, task_environment
from shoal.agent.process import MAX_COMMAND_LINE_CHARS, ProcessResult, ProcessSpec, TaskProcess, run_process

NODE = NodeIdentity("acct", "https://acct.example", "pool1", "tvmps_abc_d", True)


def make_spec(root: Path, command: str, job: str = "job1", task: str = "t1", **kw) -> ProcessSpec:
    layout = NodeLayout.at(root)
    layout.create()
    paths = layout.task(job, task)
    paths.create()
    env = task_environment(layout, NODE, job, task, kw.pop("settings", None))
    return ProcessSpec(command, paths.working_dir, env, paths.stdout, paths.stderr, **kw)


def run(spec: ProcessSpec) -> ProcessResult:
    return asyncio.run(run_process(spec))


def test_exit_codes_and_output_files(tmp_path: Path) -> None:
    ok = make_spec(tmp_path, "sh -c 'echo out; echo err >&2; exit 0'")
    result = run(ok)
    assert result.exit_code == 0 and result.failure is None
    assert ok.stdout_path.read_text() == "out\n"
    assert ok.stderr_path.read_text() == "err\n"
    assert result.end_time >= result.start_time

    bad = make_spec(tmp_path, "sh -c 'exit 7'", task="t2")
    result = run(bad)
    assert result.exit_code == 7 and result.failure is None


def test_no_shell_expansion(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "echo $HOME '*' \"a b\"")
    assert run(spec).exit_code == 0
    assert spec.stdout_path.read_text() == "$HOME * a b\n"


def test_environment_and_cwd(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh -c 'env; pwd'", settings={"MY_SETTING": "42", "AZ_BATCH_POOL_ID": "spoof"})
    assert run(spec).exit_code == 0
    lines = spec.stdout_path.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    root = tmp_path.absolute()
    task_dir = root / "workitems/job1/job-1/t1"
    assert env["MY_SETTING"] == "42"
    assert env["AZ_BATCH_POOL_ID"] == "pool1"  # AZ_BATCH_* win over user settings
    assert env["AZ_BATCH_JOB_ID"] == "job1" and env["AZ_BATCH_TASK_ID"] == "t1"
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(root)
    assert env["AZ_BATCH_TASK_DIR"] == str(task_dir)
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(task_dir / "wd")
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(root / "shared")
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == str(root / "startup")
    assert env["AZ_BATCH_NODE_MOUNTS_DIR"] == str(root / "fsmounts")
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "true"
    assert env["AZ_BATCH_ACCOUNT_NAME"] == "acct"
    assert env["AZ_BATCH_CERTIFICATES_DIR"] == str(task_dir / "certs")
    assert "AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES" in env
    assert {"PATH", "HOME", "LANG"} <= env.keys()
    assert lines[-1] == str(task_dir / "wd")


def test_start_task_environment_has_no_job_or_task(tmp_path: Path) -> None:
    layout = NodeLayout.at(tmp_path)
    env = start_task_environment(layout, NODE, {"X": "1"})
    assert "AZ_BATCH_JOB_ID" not in env and "AZ_BATCH_TASK_ID" not in env
    assert env["AZ_BATCH_TASK_DIR"] == str(layout.startup)
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(layout.startup / "wd")
    assert env["X"] == "1"


def test_missing_program_is_a_preprocessing_failure(tmp_path: Path) -> None:
    result = run(make_spec(tmp_path, "/no/such/program --flag"))
    assert result.exit_code is None
    assert result.failure is not None
    assert (result.failure.category, result.failure.code) == ("usererror", "CommandProgramNotFound")
    result = run(make_spec(tmp_path, "no-such-program-on-path-xyz", task="t2"))
    assert result.failure is not None and result.failure.code == "CommandProgramNotFound"


def test_unparsable_command_line(tmp_path: Path) -> None:
    result = run(make_spec(tmp_path, "echo 'unbalanced"))
    assert result.failure is not None and result.failure.code == "CommandLaunchFailed"


def _survivors(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def test_wall_clock_timeout_kills_whole_tree(tmp_path: Path) -> None:
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    # Distinct sleep durations act as a marker we can look for in the process table.
    cmd = f"sh -c 'sleep 1{marker} & sleep 2{marker} & exec sleep 3{marker}'"
    spec = make_spec(tmp_path, cmd, max_wall_clock_s=0.3)
    began = time.monotonic()
    result = run(spec)
    assert time.monotonic() - began < 3
    assert result.failure is not None
    assert (result.failure.category, result.failure.code) == ("usererror", "TaskEnded")
    deadline = time.monotonic() + 3
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _survivors(marker) == []


def test_timeout_kills_process_that_left_the_group(tmp_path: Path) -> None:
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    script = f"import os,time; os.setsid(); time.sleep(1{marker})"
    cmd = f"sh -c '{sys.executable} -c \"{script}\" & sleep 5{marker}'"

    async def scenario() -> ProcessResult:
        proc = TaskProcess(make_spec(tmp_path, cmd, max_wall_clock_s=0.5))
        fut = proc.start()
        result = await fut
        await proc.kill()  # waits for the kill of the tree to finish
        return result

    result = asyncio.run(scenario())
    assert result.failure is not None and result.failure.code == "TaskEnded"
    deadline = time.monotonic() + 3
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _survivors(marker) == []


def test_leftover_background_processes_die_with_the_task(tmp_path: Path) -> None:
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    spec = make_spec(tmp_path, f"sh -c 'sleep 4{marker} & exit 0'")
    assert run(spec).exit_code == 0
    deadline = time.monotonic() + 2
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _survivors(marker) == []


def test_kill_running_task(tmp_path: Path) -> None:
    async def scenario() -> ProcessResult:
        proc = TaskProcess(make_spec(tmp_path, "sleep 30"))
        proc.start()
        await asyncio.sleep(0.05)
        return await proc.kill()

    began = time.monotonic()
    result = asyncio.run(scenario())
    assert result.killed and result.exit_code == 128 + 15
    assert time.monotonic() - began < 2


def test_concurrent_tasks(tmp_path: Path) -> None:
    specs = [make_spec(tmp_path, f"sh -c 'sleep 0.3; echo {i}'", task=f"t{i}") for i in range(20)]

    async def scenario() -> list[ProcessResult]:
        return await asyncio.gather(*(run_process(s) for s in specs))

    began = time.monotonic()
    results = asyncio.run(scenario())
    assert time.monotonic() - began < 2.5  # they ran side by side, not 20 x 0.3 s
    assert all(r.exit_code == 0 for r in results)
    assert [s.stdout_path.read_text() for s in specs] == [f"{i}\n" for i in range(20)]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_runs_as_named_user_when_root(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    spec = make_spec(tmp_path, "id -u", user=nobody)
    os.chown(spec.cwd, nobody.pw_uid, nobody.pw_gid)
    assert run(spec).exit_code == 0
    assert spec.stdout_path.read_text().strip() == str(nobody.pw_uid)


# ---- inputs that must fail one attempt, never the agent --------------------------------------


def launch_failure(result: ProcessResult) -> str:
    """The message of a launch failure (and that it is one: usererror, no exit code)."""
    assert result.exit_code is None, result
    assert result.failure is not None, result
    assert (result.failure.category, result.failure.code) == ("usererror", "CommandLaunchFailed"), result.failure
    return result.failure.message


def run_bounded(spec: ProcessSpec, timeout: float = 10.0) -> ProcessResult:
    """Run in a thread so that a runner that hangs (a parse stuck on its event loop) fails the
    test after ``timeout`` instead of hanging it."""
    results: list[ProcessResult | BaseException] = []

    def target() -> None:
        try:
            results.append(run(spec))
        except BaseException as exc:  # the runner must not raise: record it for the assertion
            results.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert results, f"the runner did not finish within {timeout} s"
    assert isinstance(results[0], ProcessResult), results[0]
    return results[0]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo a\0b", "NUL"),
        ("echo " + "x" * MAX_COMMAND_LINE_CHARS, "limit is 8191"),
        ("echo \udc80\ud800", "Cannot start"),  # lone surrogates: JSON can carry them, execve cannot
    ],
    ids=["nul", "over-the-cap", "lone-surrogate"],
)
def test_command_lines_that_cannot_start_fail_the_attempt(tmp_path: Path, command: str, expected: str) -> None:
    assert expected in launch_failure(run_bounded(make_spec(tmp_path, command)))


def test_the_cap_is_batchs_8191_characters(tmp_path: Path) -> None:
    at_cap = make_spec(tmp_path, "echo " + "x" * (MAX_COMMAND_LINE_CHARS - len("echo ")))
    assert run_bounded(at_cap).exit_code == 0
    assert len(at_cap.stdout_path.read_text()) == MAX_COMMAND_LINE_CHARS - len("echo ") + 1
    over = make_spec(tmp_path, "echo " + "x" * (MAX_COMMAND_LINE_CHARS - len("echo ") + 1), task="t2")
    assert "8192 characters long; the limit is 8191" in launch_failure(run_bounded(over))


def test_huge_command_line_is_refused_at_once_and_the_loop_keeps_turning(tmp_path: Path) -> None:
    # One 3.9 MB word: shlex grows a token one character at a time (quadratic); on the event
    # loop it froze the original runner for minutes.
    spec = make_spec(tmp_path, "echo " + "a" * 3_900_000)

    async def scenario() -> tuple[ProcessResult, float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        result = await TaskProcess(spec).start()
        stop.set()
        await tick
        return result, max(gaps, default=0.0)

    began = time.monotonic()
    results: list[tuple[ProcessResult, float]] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(scenario())), daemon=True)
    thread.start()
    thread.join(10)
    assert results, "a 3.9 MB command line froze the runner"
    result, worst_gap = results[0]
    assert "limit is 8191" in launch_failure(result)
    assert time.monotonic() - began < 5
    assert worst_gap < 0.5


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"A=B": "1"}, "contains '='"),
        ({"A\0B": "1"}, "NUL"),
        ({"GOOD": "a\0b"}, "NUL"),
        ({"": "1"}, "empty name"),
        ({"GOOD": "\ud800"}, "Cannot start"),
    ],
    ids=["equals-in-name", "nul-in-name", "nul-in-value", "empty-name", "lone-surrogate-value"],
)
def test_environments_that_cannot_start_fail_the_attempt(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    assert expected in launch_failure(run_bounded(make_spec(tmp_path, "true", settings=settings)))


def test_a_huge_environment_name_is_quoted_briefly(tmp_path: Path) -> None:
    message = launch_failure(run_bounded(make_spec(tmp_path, "true", settings={"=" * 1_000_000: "x"})))
    assert len(message) < 300


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize(
    ("uid", "gid", "name", "expected"),
    [
        (2**32 - 1, 1000, "minus-one", "not a valid id"),  # setreuid(-1) would leave the task root
        (1000, 2**32 - 1, "minus-one-gid", "not a valid id"),
        (2**40, 1000, "too-big", "not a valid id"),
        (-5, 1000, "negative", "not a valid id"),
        (12345, 12345, "nul\0user", "Cannot start"),  # getgrouplist refuses the name
    ],
    ids=["uid-minus-one", "gid-minus-one", "uid-overflow", "uid-negative", "nul-in-name"],
)
def test_users_that_cannot_be_switched_to_fail_the_attempt(
    tmp_path: Path, uid: int, gid: int, name: str, expected: str
) -> None:
    import pwd

    user = pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/sh"))
    spec = make_spec(tmp_path, "id -u", user=user)
    assert expected in launch_failure(run_bounded(spec))
    assert not spec.stdout_path.exists() or spec.stdout_path.read_text() == ""  # nothing ran as root


def test_many_bad_and_good_attempts_side_by_side(tmp_path: Path) -> None:
    """One runner, a mix of attempts: the bad ones fail alone, the good ones still run, and one
    killed while its spawn is still under way (in the spawner thread) is killed all the same."""
    bad = [make_spec(tmp_path, "echo \0", task=f"bad{i}") for i in range(10)]
    good = [make_spec(tmp_path, f"sh -c 'echo {i}'", task=f"good{i}") for i in range(10)]

    async def killed_at_once() -> ProcessResult:
        proc = TaskProcess(make_spec(tmp_path, "sleep 30", task="victim"))
        proc.start()
        return await proc.kill()

    async def scenario() -> tuple[list[ProcessResult], ProcessResult]:
        victim = asyncio.ensure_future(killed_at_once())
        results = await asyncio.gather(*(run_process(s) for pair in zip(bad, good, strict=True) for s in pair))
        return results, await victim

    began = time.monotonic()
    results, victim = asyncio.run(scenario())
    assert all(r.failure is not None and r.failure.code == "CommandLaunchFailed" for r in results[0::2])
    assert all(r.exit_code == 0 and r.failure is None for r in results[1::2])
    assert [s.stdout_path.read_text() for s in good] == [f"{i}\n" for i in range(10)]
    assert victim.killed and victim.exit_code in (128 + 9, 128 + 15)
    assert time.monotonic() - began < 5


def test_links_planted_as_output_files_are_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spec = make_spec(tmp_path, "sh -c 'echo out; echo err >&2'")
    spec.stdout_path.symlink_to(victim)
    os.link(victim, spec.stderr_path)  # a hard link too: truncating it would truncate the victim
    result = run(spec)
    assert result.exit_code == 0 and result.failure is None
    assert victim.read_text() == "precious\n"
    assert not spec.stdout_path.is_symlink()
    assert spec.stdout_path.read_text() == "out\n" and spec.stderr_path.read_text() == "err\n"
