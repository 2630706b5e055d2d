"""The `/bin/sh` sequence a multi-instance instance runs (shoal/agent/instance.py), run for
real: command lines keep Shoal's no-shell meaning, a failed coordination is the instance's exit
code, the primary waits for the all-coordinated marker and then becomes its command line, and a
subtask holds until it is killed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shoal.agent import instance


def _start(command_line: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(shlex.split(command_line), cwd=cwd, stdout=subprocess.PIPE, start_new_session=True)


def test_words_are_not_expanded_by_the_shell(tmp_path: Path) -> None:
    line = instance.command_line("/bin/echo '$HOME' \"a b\"", "/bin/echo done", str(tmp_path))
    (tmp_path / instance.ALL_COORDINATED).touch()
    out = subprocess.run(shlex.split(line), capture_output=True, check=True).stdout.decode()
    assert out == "$HOME a b\ndone\n"
    assert (tmp_path / instance.COORDINATED).exists()


def test_a_failed_coordination_is_the_exit_code_and_runs_nothing_more(tmp_path: Path) -> None:
    line = instance.command_line("/bin/sh -c 'exit 7'", "/bin/touch ran", str(tmp_path))
    assert subprocess.run(shlex.split(line), cwd=tmp_path).returncode == 7
    assert not (tmp_path / instance.COORDINATED).exists() and not (tmp_path / "ran").exists()
    missing = instance.command_line("/no/such/program", "/bin/true", str(tmp_path))
    assert subprocess.run(shlex.split(missing), cwd=tmp_path, stderr=subprocess.DEVNULL).returncode == 127


def test_the_primary_waits_for_every_instance_then_becomes_its_command(tmp_path: Path) -> None:
    proc = _start(instance.command_line("/bin/true", "/bin/sh -c 'echo $$'", str(tmp_path)), tmp_path)
    deadline = time.monotonic() + 5
    while not (tmp_path / instance.COORDINATED).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None  # still waiting for the others
    (tmp_path / instance.ALL_COORDINATED).touch()
    out, _ = proc.communicate(timeout=5)
    # exec: the command line is the very process the agent started (its pid, its exit code).
    assert (proc.returncode, int(out)) == (0, proc.pid)


def test_a_subtask_holds_its_node_until_killed(tmp_path: Path) -> None:
    proc = _start(instance.command_line("/bin/true", None, str(tmp_path)), tmp_path)
    time.sleep(0.5)
    assert proc.poll() is None and (tmp_path / instance.COORDINATED).exists()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.parametrize("line", ["", "   ", "'unclosed"])
def test_a_command_line_that_cannot_be_split_is_refused(tmp_path: Path, line: str) -> None:
    with pytest.raises(ValueError):
        instance.command_line(line, "/bin/true", str(tmp_path))
