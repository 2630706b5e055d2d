"""Process-tree containment against real processes: a task tree must not outlive its agent.

A small stand-in agent (a real process running the real runner inside the real containment)
starts task trees, including one that escapes its process group with setsid; the test kills it
with SIGKILL and checks what survives, and that :func:`kill_node_processes` or the next agent on
the same node root kills the rest.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shoal.agent import tree
from shoal.testing.server import interpreter_for_others

STAND_IN_AGENT = r"""
import asyncio, os, sys
from pathlib import Path
from shoal.agent import tree
from shoal.agent.process import ProcessSpec, TaskProcess

root = Path(sys.argv[1])
containment = tree.contain_node(root)

async def main():
    for i, command in enumerate(sys.argv[2:]):
        wd = root / f"t{i}"
        wd.mkdir(exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        TaskProcess(ProcessSpec(command, wd, env, wd / "out", wd / "err")).start()
    await asyncio.sleep(0.5)
    print(containment.mode, flush=True)
    if os.environ.get("STAND_IN_REBOOT"):
        sys.stdin.readline()  # the test's cue: "reboot" the node, as Agent._restart would
        print(sorted(await asyncio.to_thread(containment.kill_tasks)), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def marker() -> str:
    # Distinct sleep lengths mark the processes of one test in the process table.
    return f"{os.getpid() % 1000}{time.monotonic_ns() % 1000000:06d}"


def alive(tag: str) -> list[int]:
    """Live `sleep` processes of this tag (the stand-in agent has the tag in its own argv)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and cmdline[:1] == ["sleep"] and tag in cmdline[-1]:
            found.append(p.pid)
    return found


def wait_until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def task_trees(tag: str) -> list[str]:
    """A plain tree, a tree with a background child, and a descendant that leaves with setsid."""
    return [
        f"sleep 1{tag}",
        f"sh -c 'sleep 2{tag} & exec sleep 3{tag}'",
        f"sh -c 'setsid sleep 4{tag} & exec sleep 5{tag}'",
    ]


def start_stand_in(root: Path, commands: list[str], user: pwd.struct_passwd | None = None,
                   reboot: bool = False) -> tuple[subprocess.Popen[str], str]:
    """A stand-in agent running ``commands`` as tasks; with the containment mode it reports."""
    python, path = (sys.executable, None) if user is None else interpreter_for_others()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": path or os.pathsep.join(sys.path)}
    if reboot:
        env["STAND_IN_REBOOT"] = "1"
    identity = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    agent = subprocess.Popen([python, "-c", STAND_IN_AGENT, str(root), *commands], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, env=env, text=True, start_new_session=True,
                             **identity)  # type: ignore[call-overload]
    assert agent.stdout is not None
    mode = agent.stdout.readline().strip()
    assert mode, "the stand-in agent did not start"
    return agent, mode


def kill_agent(agent: subprocess.Popen[str]) -> None:
    agent.send_signal(signal.SIGKILL)
    agent.wait()


def kill_watchdog(node_root: Path) -> None:
    cgroup = tree.NodeContainment.for_root(node_root).cgroup
    assert cgroup is not None
    watchdogs = [pid for pid in cgroup.members() if "shoal.agent.tree" in psutil.Process(pid).cmdline()]
    assert len(watchdogs) == 1, watchdogs
    os.kill(watchdogs[0], signal.SIGKILL)


@pytest.fixture
def node_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are root's and closed to the unprivileged case below.
    base = Path(tempfile.mkdtemp(prefix="shoal-tree-"))
    base.chmod(0o755)
    try:
        yield base / "node"
    finally:
        tree.kill_node_processes(base / "node", remove=True)
        shutil.rmtree(base, ignore_errors=True)


needs_cgroups = pytest.mark.skipif(
    os.geteuid() != 0 or tree.containment_hierarchy() is None, reason="node cgroups need root and cgroupfs"
)


@needs_cgroups
def test_cgroup_keeps_every_process_of_the_node_and_kills_them_all(node_root: Path) -> None:
    node_root.mkdir()
    tag = marker()
    agent, mode = start_stand_in(node_root, task_trees(tag))
    containment = tree.NodeContainment.for_root(node_root)
    assert containment.cgroup is not None
    try:
        assert wait_until(lambda: len(alive(tag)) == 5), alive(tag)
        members = containment.cgroup.members()
        assert agent.pid in members
        assert set(alive(tag)) <= members  # the setsid escapee too
        assert "with a watchdog" in mode
        kill_agent(agent)
        # Nobody calls anything: the node's watchdog kills the rest, the setsid escapee too.
        assert wait_until(lambda: alive(tag) == [], timeout=3), alive(tag)
        assert wait_until(lambda: containment.cgroup.members() == set())  # type: ignore[union-attr]
    finally:
        kill_agent(agent)


@needs_cgroups
def test_without_its_watchdog_the_node_is_still_killed_by_kill_node_processes(node_root: Path) -> None:
    node_root.mkdir()
    tag = marker()
    agent, _ = start_stand_in(node_root, task_trees(tag))
    containment = tree.NodeContainment.for_root(node_root)
    assert containment.cgroup is not None
    try:
        assert wait_until(lambda: len(alive(tag)) == 5), alive(tag)
        kill_watchdog(node_root)
        kill_agent(agent)
        time.sleep(0.3)
        assert len(alive(tag)) == 5  # what the provider and the next agent are there for
        assert tree.kill_node_processes(node_root) == set()
        assert alive(tag) == []
        assert containment.cgroup.members() == set()
    finally:
        kill_agent(agent)


@needs_cgroups
def test_the_next_agent_on_the_node_root_kills_what_the_last_one_left(node_root: Path) -> None:
    node_root.mkdir()
    first_tag, second_tag = marker(), marker() + "9"
    first, _ = start_stand_in(node_root, task_trees(first_tag))
    assert wait_until(lambda: len(alive(first_tag)) == 5)
    kill_watchdog(node_root)  # so that the next agent is the one to clean up
    kill_agent(first)
    time.sleep(0.3)
    assert len(alive(first_tag)) == 5
    second, _ = start_stand_in(node_root, [f"sleep 6{second_tag}"])
    try:
        assert alive(first_tag) == []  # gone before the new agent started anything
        assert wait_until(lambda: len(alive(second_tag)) == 1)
    finally:
        kill_agent(second)
        tree.kill_node_processes(node_root)
    assert alive(second_tag) == []


@needs_cgroups
def test_a_reboot_kills_every_task_but_keeps_the_agent_and_its_watchdog(node_root: Path) -> None:
    node_root.mkdir()
    tag = marker()
    agent, _ = start_stand_in(node_root, task_trees(tag), reboot=True)
    try:
        assert wait_until(lambda: len(alive(tag)) == 5)
        assert agent.stdin is not None and agent.stdout is not None
        agent.stdin.write("reboot\n")
        agent.stdin.flush()
        assert agent.stdout.readline().strip() == "[]"  # nothing survived
        assert alive(tag) == []
        assert agent.poll() is None
        kill_watchdog(node_root)  # still there, and the only other member
        assert wait_until(lambda: tree.NodeContainment.for_root(node_root).cgroup.members() == {agent.pid})  # type: ignore[union-attr]
    finally:
        kill_agent(agent)


@needs_cgroups
def test_kill_node_processes_leaves_other_nodes_alone(node_root: Path) -> None:
    other = node_root.with_name("other")
    node_root.mkdir()
    other.mkdir()
    tag, other_tag = marker(), marker() + "8"
    agent, _ = start_stand_in(node_root, [f"sleep 1{tag}"])
    neighbour, _ = start_stand_in(other, [f"sleep 1{other_tag}"])
    try:
        assert wait_until(lambda: alive(tag) and alive(other_tag))
        tree.kill_node_processes(node_root, remove=True)
        assert alive(tag) == [] and agent.wait(5) == -signal.SIGKILL  # the agent is of the node too
        assert len(alive(other_tag)) == 1 and neighbour.poll() is None
        assert not tree.NodeContainment.for_root(node_root).cgroup.exists()  # type: ignore[union-attr]
    finally:
        kill_agent(neighbour)
        tree.kill_node_processes(other, remove=True)


def test_without_root_leaders_die_with_the_agent_and_groups_with_the_next(node_root: Path) -> None:
    """The fallback: an agent that is not root cannot use cgroups."""
    if os.geteuid() != 0:
        pytest.skip("the unprivileged agent is started as nobody by root")
    nobody = pwd.getpwnam("nobody")
    node_root.mkdir()
    os.chown(node_root, nobody.pw_uid, nobody.pw_gid)
    tag = marker()
    agent, mode = start_stand_in(node_root, [f"sh -c 'sleep 2{tag} & exec sleep 3{tag}'"], user=nobody)
    assert mode.startswith("process groups")
    try:
        assert wait_until(lambda: len(alive(tag)) == 2)
        groups = tree.ProcessGroupFiles.in_root(node_root).directory
        assert len(os.listdir(groups)) == 1
        kill_agent(agent)
        # PR_SET_PDEATHSIG: the leader goes with the agent; its background child stays...
        assert wait_until(lambda: len(alive(tag)) == 1)
        # ...until the next agent (here: its kill, as the same user) finds the group file.
        subprocess.run([interpreter_for_others()[0], "-c",
                        "import sys; from shoal.agent import tree; sys.exit(len(tree.kill_node_processes(sys.argv[1])))",
                        str(node_root)], check=True, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                       env={"PYTHONPATH": interpreter_for_others()[1] or os.pathsep.join(sys.path)})
        assert alive(tag) == []
        assert os.listdir(groups) == []
    finally:
        kill_agent(agent)


def test_group_files_never_kill_a_process_that_reused_the_number(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        groups = tree.ProcessGroupFiles.in_root(tmp_path)
        groups.directory.mkdir(parents=True)
        ticks = tree.process_start_ticks(bystander.pid)
        assert ticks is not None
        (groups.directory / f"{bystander.pid}-{ticks + 1}").touch()  # same number, another process
        (groups.directory / "1-0").touch()  # init: never
        (groups.directory / "not-a-group").touch()
        assert groups.kill(timeout_s=0.5) == set()
        assert bystander.poll() is None
        if os.geteuid() == 0:
            # A record some other user could have planted is not ours to act on.
            forged = groups.directory / f"{bystander.pid}-{ticks}"
            forged.touch()
            os.chown(forged, pwd.getpwnam("nobody").pw_uid, -1)
            groups.kill(timeout_s=0.5)
            assert bystander.poll() is None
            forged.unlink()
        (groups.directory / f"{bystander.pid}-{ticks}").touch()  # the real record
        assert groups.kill() == set()
        assert bystander.wait(5) == -signal.SIGKILL
    finally:
        bystander.kill()
        bystander.wait()


def test_cgroup_paths_are_read_relative_to_the_mount() -> None:
    # Inside a container /proc/self/cgroup shows host paths under the mount's own root.
    pids = tree.Hierarchy(1, Path("/sys/fs/cgroup/pids"), "/docker/abc", "pids")
    assert pids.directory("/docker/abc") == Path("/sys/fs/cgroup/pids")
    assert pids.directory("/docker/abc/agent") == Path("/sys/fs/cgroup/pids/agent")
    with pytest.raises(LookupError):
        pids.directory("/docker/other")
    assert tree.node_cgroup_name("/a/b") == tree.node_cgroup_name("/a/./b")
    assert tree.node_cgroup_name("/a/b") != tree.node_cgroup_name("/a/c")


def test_a_cgroup_v2_node_is_killed_through_cgroup_kill() -> None:
    """The v2 path, wherever a cgroup2 hierarchy is mounted (on a hybrid host: the `unified` one
    beside the v1 controllers; on a pure v2 host, the only one)."""
    v2 = [h for h in tree.mounted_hierarchies() if h.version == 2]
    if os.geteuid() != 0 or not v2:
        pytest.skip("needs root and a cgroup2 mount")
    cgroup = tree.NodeCgroup.beside_current(f"/nonexistent/v2-test-{marker()}", v2[0])
    cgroup.create()
    tag = marker()
    try:
        # A tree that joins the cgroup itself, then forks, one child escaping with setsid.
        member = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup.directory}/cgroup.procs; "
                                   f"sleep 1{tag} & setsid sleep 2{tag} & exec sleep 3{tag}"],
                                  start_new_session=True)
        assert wait_until(lambda: len(alive(tag)) == 3)
        assert set(alive(tag)) <= cgroup.members()
        assert cgroup.kill() == set()  # cgroup.kill where the kernel has it (5.14+), else SIGKILL rounds
        assert alive(tag) == []
        assert member.wait(5) == -signal.SIGKILL
    finally:
        cgroup.kill()
        cgroup.remove()
    assert not cgroup.exists()
