"""The per-user spawners (shoal.agent.launcher / shoal.agent.spawner), driven as the agent drives
them, with real users and real processes. Root only: becoming another user needs it."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shoal.agent import launcher
from shoal.agent.process import ProcessSpec, TaskProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="spawners switch users, which needs root")

USER = "shl_launcher_test"


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], capture_output=True)
    entry = pwd.getpwnam(USER)
    yield entry
    launcher.close_users([entry])
    subprocess.run(["userdel", "-f", USER], capture_output=True)


@pytest.fixture()
def workdir(user: pwd.struct_passwd) -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are root's and closed to other users.
    base = Path(tempfile.mkdtemp(prefix="shoal-launcher-"))
    base.chmod(0o755)
    wd = base / "wd"
    wd.mkdir()
    os.chown(wd, user.pw_uid, user.pw_gid)
    yield wd
    shutil.rmtree(base, ignore_errors=True)


def _spec(workdir: Path, user: pwd.struct_passwd, command_line: str, **extra: object) -> ProcessSpec:
    return ProcessSpec(command_line=command_line, cwd=workdir, env={"PATH": "/usr/bin:/bin"},
                       stdout_path=workdir / "stdout.txt", stderr_path=workdir / "stderr.txt",
                       user=user, lasting_user=True, **extra)  # type: ignore[arg-type]


def _run(spec: ProcessSpec) -> tuple[object, str]:
    async def main() -> object:
        return await TaskProcess(spec).start()

    result = asyncio.run(main())
    return result, spec.stdout_path.read_text()


def test_a_lasting_user_task_is_the_child_of_its_users_spawner(workdir: Path, user: pwd.struct_passwd) -> None:
    result, out = _run(_spec(workdir, user, "sh -c 'id -u; echo $PPID; grep SigIgn /proc/self/status'"))
    assert result.exit_code == 0 and result.failure is None  # type: ignore[attr-defined]
    uid, parent, ignored = out.split("\n")[:3]
    assert int(uid) == user.pw_uid
    spawner = launcher.launcher_for(user)
    assert int(parent) == spawner.pid  # not the agent: the spawner vforked it
    # No signal left ignored by the spawner's Python (SIGPIPE, SIGXFSZ) reaches the task.
    ignored_mask = int(ignored.split()[1], 16)
    assert not ignored_mask & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))


def test_the_spawner_is_the_user_yet_not_dumpable(user: pwd.struct_passwd) -> None:
    spawner = launcher.launcher_for(user)
    status = Path(f"/proc/{spawner.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert {int(u) for u in uids} == {user.pw_uid}
    # Not dumpable: its /proc entries stay root's, so a task of the same user can neither
    # ptrace it nor reach its socket through /proc/PID/fd.
    assert os.stat(f"/proc/{spawner.pid}/fd").st_uid == 0
    probe = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                            "ls", f"/proc/{spawner.pid}/fd"], capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


def test_spawn_errors_read_as_popen_ones(workdir: Path, user: pwd.struct_passwd) -> None:
    result, _ = _run(_spec(workdir, user, "no-such-program-anywhere"))
    assert result.failure.code == "CommandProgramNotFound"  # type: ignore[attr-defined]
    gone = _spec(workdir, user, "true")
    gone = ProcessSpec(**{**gone.__dict__, "cwd": workdir / "missing"})
    result, _ = _run(gone)
    assert "Working directory missing" in result.failure.message  # type: ignore[attr-defined]
    script = workdir / "private.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o700)  # root's, and the task's user may not run it
    result, _ = _run(_spec(workdir, user, str(script)))
    assert result.failure.code == "CommandLaunchFailed"  # type: ignore[attr-defined]
    assert "Permission denied" in result.failure.message  # type: ignore[attr-defined]


def test_a_task_that_kills_its_spawner_fails_only_its_users_running_tasks(
        workdir: Path, user: pwd.struct_passwd) -> None:
    async def main() -> tuple[object, object, object]:
        sibling = TaskProcess(_spec(workdir, user, "sleep 30"))
        sibling_done = sibling.start()
        for _ in range(100):
            if sibling.pid is not None:
                break
            await asyncio.sleep(0.02)
        killer = _spec(workdir, user, "sh -c 'kill -9 $PPID'")
        killer = ProcessSpec(**{**killer.__dict__, "stdout_path": workdir / "k.out", "stderr_path": workdir / "k.err"})
        await TaskProcess(killer).start()
        sibling_result = await asyncio.wait_for(sibling_done, 10)
        after = _spec(workdir, user, "echo still here")
        after = ProcessSpec(**{**after.__dict__, "stdout_path": workdir / "a.out", "stderr_path": workdir / "a.err"})
        return sibling_result, await TaskProcess(after).start(), sibling.pid

    began = time.monotonic()
    sibling_result, after_result, sibling_pid = asyncio.run(main())
    assert time.monotonic() - began < 10  # the sleeper did not run its 30 s
    assert sibling_result.exit_code == 128 + signal.SIGKILL  # type: ignore[attr-defined]
    try:  # gone, or a zombie left to init now that its parent is dead
        assert psutil.Process(sibling_pid).status() == psutil.STATUS_ZOMBIE  # type: ignore[arg-type]
    except psutil.NoSuchProcess:
        pass
    assert after_result.exit_code == 0  # type: ignore[attr-defined]
    assert (workdir / "a.out").read_text() == "still here\n"  # a fresh spawner took over


def test_many_concurrent_spawns_all_report(workdir: Path, user: pwd.struct_passwd) -> None:
    spawner = launcher.launcher_for(user)
    devnull = os.open(os.devnull, os.O_RDWR)
    codes: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    count = 200

    def exited(code: int) -> None:
        with lock:
            codes.append(code)
            if len(codes) == count:
                done.set()

    def spawn(index: int) -> None:
        pid = spawner.spawn(["sh", "-c", f"exit {index % 7}"], workdir, {"PATH": "/bin:/usr/bin"},
                            (devnull, devnull, devnull))
        spawner.on_exit(pid, exited)

    try:
        threads = [threading.Thread(target=lambda k=k: [spawn(k * 50 + i) for i in range(50)]) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert done.wait(20)
    finally:
        os.close(devnull)
    assert sorted(codes) == sorted(i % 7 for i in range(count))


def test_a_garbage_request_fails_that_spawn_not_the_spawner(user: pwd.struct_passwd) -> None:
    spawner = launcher.launcher_for(user)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with pytest.raises(ValueError):
            spawner.spawn(["true"], "/", {"BAD\udcff\ud800": "x"}, (devnull, devnull, devnull))
        assert spawner.spawn(["true"], "/", {}, (devnull, devnull, devnull)) > 0
    finally:
        os.close(devnull)
    assert not spawner.closed
