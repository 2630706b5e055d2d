"""kill -9 of an agent mid-task must never leave a task running twice (issue 6, item 5).

Against a real `shoal up`: long tasks on several nodes write a heartbeat line with their pid and
a timestamp every 0.2 s, each attempt to a file of its own in a shared folder. Agents are killed
with SIGKILL while their tasks run; the tasks are requeued and run again. From the files: every
task ends up succeeding once, an attempt that was cut short stops beating before the next
attempt of the same task starts, and no two attempts of one task ever overlap. A descendant that
left its process group with setsid (and beats too) must die with its node as well, where node
cgroups are available (the unprivileged fallback cannot catch it; docs/security.md says so).
Agents are killed alone (their node's watchdog kills the tasks at once), and together with
their watchdog (then the local provider must kill the node's processes before it requeues).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.batch import models

from shoal.agent import tree
from shoal.testing.server import RunningShoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done
from tests.security.agents import agent_process

BEAT_S = 0.2
BEATS = 25  # 5 s per attempt

CGROUPS = os.geteuid() == 0 and tree.containment_hierarchy() is not None


BEAT_SCRIPT = f"""#!/bin/sh
# beat.sh escape|plain  (a task attempt)   beat.sh child FILE  (its escaped descendant)
# An attempt's file is named by its pid and start time: pids wrap (pid_max may be 32768), and a
# later attempt reusing an earlier one's pid must not look like that attempt running on.
if [ "$1" = child ]; then f=$2; else f="$(dirname "$0")/$AZ_BATCH_TASK_ID.$$.$(date +%s%N)"; fi
echo "start $$ $(date +%s%N)" >> "$f"
if [ "$1" = escape ]; then setsid sh "$0" child "$f.escaped" & fi
i=0
while [ $i -lt {BEATS} ]; do echo "beat $$ $(date +%s%N)" >> "$f"; sleep {BEAT_S}; i=$((i+1)); done
if [ "$1" != child ]; then echo "end $$ $(date +%s%N)" >> "$f"; fi
"""


def beating_command(folder: Path, escape: bool) -> str:
    """An attempt beats into ``<folder>/<task>.<pid>.<start>``; with ``escape`` it also starts a
    descendant that escapes its process group (setsid) and beats into ``<that>.escaped``."""
    script = folder / "beat.sh"
    script.write_text(BEAT_SCRIPT)
    script.chmod(0o755)
    return f"sh {script} {'escape' if escape else 'plain'}"


@pytest.fixture(scope="module")
def beats() -> Iterator[Path]:
    # World-writable and sticky: tasks may run as pool or task users, each attempt its own file.
    folder = Path(tempfile.mkdtemp(prefix="shoal-dup-"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def attempts(folder: Path, task_id: str) -> list[tuple[float, float, bool]]:
    """(first line, last line, finished) of every attempt of one task, in seconds, by start."""
    found = []
    for path in folder.glob(f"{task_id}.*"):
        if path.name.endswith(".escaped"):
            continue
        times = [int(line.split()[2]) / 1e9 for line in path.read_text().splitlines() if line.count(" ") == 2]
        finished = path.read_text().rstrip().splitlines()[-1].startswith("end")
        # The escaped descendant belongs to this attempt: its beats count as the attempt's life.
        escaped = path.with_name(path.name + ".escaped")
        if escaped.exists():
            times += [int(line.split()[2]) / 1e9 for line in escaped.read_text().splitlines() if line.count(" ") == 2]
        found.append((min(times), max(times), finished))
    return sorted(found)


def beating_now(folder: Path, task_ids: list[str], within_s: float = 2.0) -> set[str]:
    now = time.time()
    return {t for t in task_ids if any(now - last < within_s for _, last, _ in attempts(folder, t))}


def running_on(client: Any, job_id: str, node_id: str) -> list[str]:
    return [t.id for t in client.list_tasks(job_id) if t.state == "running" and t.node_info
            and t.node_info.node_id == node_id]


def kill_watchdog_of(agent: psutil.Process) -> None:
    watchdogs = [p for p in psutil.process_iter(["cmdline"])
                 if (p.info["cmdline"] or [])[1:4] == ["-m", "shoal.agent.tree", str(agent.pid)]]
    assert len(watchdogs) == 1, watchdogs
    watchdogs[0].send_signal(signal.SIGKILL)


def kill_agents_mid_task_and_check(shoal: RunningShoal, client: Any, beats: Path, pool_id: str, *, nodes: int,
                                   slots: int, tasks: int, victims: int, with_watchdog: bool,
                                   escape: bool = CGROUPS) -> None:
    """Run ``tasks`` beating tasks on ``nodes`` x ``slots``, kill the agents of ``victims``
    nodes one after another mid-task (and first their watchdogs, ``with_watchdog``), then check
    from the beats that no task ever ran twice at once."""
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=nodes, task_slots_per_node=slots))
    node_ids = [n.id for n in wait_pool_idle(client, pool_id, nodes, timeout=60)]
    job_id = f"{pool_id}-job"
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    task_ids = [f"{pool_id}-{i}" for i in range(tasks)]
    command = beating_command(beats, escape)
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=t, command_line=command) for t in task_ids])
    wait_for(lambda: len(beating_now(beats, task_ids)) == min(tasks, nodes * slots), timeout=60,
             message="every slot beating")

    killed_attempts = 0
    busy = [n for n in node_ids if running_on(client, job_id, n)]
    for victim in busy[:victims]:
        on_victim = running_on(client, job_id, victim)
        agent = agent_process(shoal, victim)
        assert agent is not None, f"no agent process for {victim}"
        time.sleep(BEAT_S * 3)  # mid-task: a few beats in
        if with_watchdog:
            kill_watchdog_of(agent)
        agent.send_signal(signal.SIGKILL)
        time.sleep(1)
        cut_short = [t for t in on_victim if not attempts(beats, t)[-1][2]]
        assert cut_short, f"the tasks on {victim} all ended before its agent was killed"
        killed_attempts += len(cut_short)
        # The next victim is killed while this one's tasks are being requeued and rerun.
        wait_for(lambda cut_short=cut_short: all(len(attempts(beats, t)) >= 2 for t in cut_short), timeout=60,
                 message="the killed tasks to start again")

    wait_tasks_done(client, job_id, timeout=120)
    for task in client.list_tasks(job_id):
        assert task.execution_info.result == "success", (task.id, task.execution_info)
    reruns = 0
    for task_id in task_ids:
        runs = attempts(beats, task_id)
        assert [finished for _, _, finished in runs][-1], (task_id, runs)
        assert sum(finished for _, _, finished in runs) == 1, (task_id, runs)  # it succeeded once
        for (_, earlier_last, _), (later_first, _, _) in zip(runs, runs[1:], strict=False):
            assert earlier_last < later_first, f"{task_id}: two attempts ran at once: {runs}"
        reruns += len(runs) - 1
    assert reruns >= killed_attempts > 0  # the kills did hit running attempts
    # Nothing of any attempt is left beating, the escaped descendants included.
    time.sleep(BEAT_S * 3)
    assert beating_now(beats, task_ids, within_s=BEAT_S * 2) == set()
    assert all(n.state in ("idle", "running") for n in client.list_nodes(pool_id))


def test_kill_9_of_agents_under_load_never_runs_a_task_twice_at_once(
    shoal: RunningShoal, client: Any, beats: Path, shoal_mode: str
) -> None:
    # More tasks than slots: some wait, so requeued ones compete with fresh ones for the nodes.
    # Without root there are no node cgroups: process groups contain a task, and a descendant
    # that leaves its group with setsid escapes them, as docs/security.md says; so none does here.
    # The pool (and so the task ids) is named after the mode: both modes' attempts beat into
    # one folder, and the same task id run by the other server must not look like a rerun.
    kill_agents_mid_task_and_check(shoal, client, beats, f"dup-load-{shoal_mode}", nodes=3, slots=3, tasks=12,
                                   victims=2, with_watchdog=False, escape=CGROUPS and shoal_mode == "root")


@pytest.mark.skipif(not CGROUPS, reason="only node cgroups have a watchdog")
def test_without_the_nodes_watchdog_the_provider_kills_before_it_requeues(
    shoal: RunningShoal, client: Any, beats: Path, shoal_mode: str
) -> None:
    if shoal_mode == "nonroot":
        pytest.skip("node cgroups, and so their watchdogs, need root")
    # Free slots on the other node: a requeued task is placed there at once, long before the
    # killed node's new agent is up, so only the provider's kill stands between two attempts.
    kill_agents_mid_task_and_check(shoal, client, beats, f"dup-provider-{shoal_mode}", nodes=2, slots=4, tasks=3,
                                   victims=1, with_watchdog=True)
