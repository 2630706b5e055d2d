"""`shoal up --provider sim`: simulated nodes that the control plane treats as real ones.

Everything goes through a real `shoal up --provider sim` and the azure-batch SDK: a pool of 200
simulated nodes (more than the 64 a machine of local agents may hold), tasks whose command lines
say how long they run and how they exit, their stdout, wall-clock limits, start tasks, node
removal, resize down, task counts, and the loss of the simulated agents' process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psutil
import pytest
from azure.batch import models

from shoal.testing.server import RunningShoal, running_shoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_task_state, wait_tasks_done

POOL = "sim-pool"
NODES = 200
POLL_S = 0.1
# A 1-vCPU size: 200 nodes stay inside the default dedicated core quota (500).
VM_SIZE = "standard_a1_v2"


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("shoal-sim"), extra_args=["--provider", "sim"]) as running:
        yield running


@pytest.fixture(scope="module")
def client(shoal: RunningShoal) -> Any:
    return shoal.client()


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, vm_size=VM_SIZE, target_dedicated_nodes=NODES, task_slots_per_node=2))
    wait_pool_idle(client, POOL, NODES, timeout=20)
    wait_for(lambda: client.get_pool(POOL).allocation_state == "steady", 10, message="pool steady")
    return POOL


def _job(client: Any, job_id: str, pool_id: str) -> str:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    return job_id


def _sim_agents(shoal: RunningShoal) -> list[psutil.Process]:
    return [p for p in psutil.Process(shoal.process.pid).children()
            if "shoal.providers.sim_agent" in " ".join(p.cmdline())]


def test_pool_of_200_simulated_nodes_allocates_and_goes_idle(shoal: RunningShoal, client: Any, pool: str) -> None:
    nodes = list(client.list_nodes(pool))
    assert len(nodes) == NODES
    assert {n.state for n in nodes} == {"idle"}
    # Real agents' marks: a boot time from hello, loopback addresses, no isolation warning.
    assert all(n.last_boot_time is not None and n.ip_address == "127.0.0.1" and not n.errors for n in nodes)
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}[pool]
    assert counts.dedicated.idle == NODES and counts.dedicated.total == NODES
    # All of them are coroutines of one process beside the server, not a process each.
    assert len(_sim_agents(shoal)) == 1


def test_tasks_run_as_timers_with_the_exit_codes_their_command_lines_give(client: Any, pool: str) -> None:
    job = _job(client, "sim-timing", pool)
    lines = {"sim-form": ("sim:duration=1.5,exit=3", 1.5, 3),
             "shell": ("/bin/sh -c 'sleep 0.5; exit 7'", 0.5, 7),
             "true": ("/bin/true", 0.0, 0),
             "sleep": ("sleep 1", 1.0, 0)}
    client.create_tasks(job, [models.BatchTaskCreateOptions(id=task_id, command_line=line)
                              for task_id, (line, _, _) in lines.items()])
    wait_tasks_done(client, job, timeout=15)
    for task_id, (_, duration, code) in lines.items():
        info = client.get_task(job, task_id).execution_info
        ran = (info.end_time - info.start_time).total_seconds()
        assert info.exit_code == code, task_id
        assert duration <= ran < duration + 1.0, (task_id, ran)
        assert info.result == ("success" if code == 0 else "failure")
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.completed, counts.succeeded, counts.failed, counts.active, counts.running) == (4, 2, 2, 0, 0)


def test_stdout_is_downloadable_and_files_list(client: Any, pool: str) -> None:
    job = _job(client, "sim-files", pool)
    client.create_tasks(job, [
        models.BatchTaskCreateOptions(id="echo", command_line="/bin/bash -c 'echo hello from sim; exit 0'"),
        models.BatchTaskCreateOptions(id="big", command_line="sim:stdoutBytes=300000"),
        models.BatchTaskCreateOptions(id="said", command_line="sim:stdout=a%2Cb%20c,stderr=oops,exit=1")])
    wait_tasks_done(client, job, timeout=15)
    assert b"".join(client.download_task_file(job, "echo", "stdout.txt")) == b"hello from sim\n"
    assert b"".join(client.download_task_file(job, "said", "stdout.txt")) == b"a,b c"
    assert b"".join(client.download_task_file(job, "said", "stderr.txt")) == b"oops"
    big = b"".join(client.download_task_file(job, "big", "stdout.txt"))
    assert len(big) == 300000
    part = b"".join(client.download_task_file(job, "big", "stdout.txt", ocp_range="bytes=1000-1099"))
    assert part == big[1000:1100]
    names = sorted(f.name for f in client.list_task_files(job, "echo", recursive=True))
    assert names == ["stderr.txt", "stdout.txt", "wd"]
    # A file the node does not have is a Batch 404, not a 500.
    from azure.core.exceptions import ResourceNotFoundError

    with pytest.raises(ResourceNotFoundError):
        b"".join(client.download_task_file(job, "echo", "nothing.txt"))


def test_wall_clock_limit_ends_a_long_task(client: Any, pool: str) -> None:
    job = _job(client, "sim-wall", pool)
    client.create_task(job, models.BatchTaskCreateOptions(
        id="long", command_line="sleep 600",
        constraints=models.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=1))))
    wait_tasks_done(client, job, timeout=15)
    info = client.get_task(job, "long").execution_info
    assert info.result == "failure" and info.failure_info.code == "TaskEnded"
    assert 1.0 <= (info.end_time - info.start_time).total_seconds() < 3.0


def test_start_task_gates_the_nodes_and_its_failure_is_reported(client: Any) -> None:
    client.create_pool(pool_options("sim-start", vm_size=VM_SIZE, target_dedicated_nodes=3, start_task=models.BatchStartTask(
        command_line="sim:duration=1,exit=0,stdout=booted", wait_for_success=True)))
    client.create_pool(pool_options("sim-badstart", vm_size=VM_SIZE, target_dedicated_nodes=2, start_task=models.BatchStartTask(
        command_line="exit 4", wait_for_success=True, max_task_retry_count=1)))
    nodes = wait_pool_idle(client, "sim-start", 3, timeout=15)
    for node in nodes:
        info = client.get_node("sim-start", node.id).start_task_info
        assert info.exit_code == 0 and info.state == "completed"
        assert (info.end_time - info.start_time).total_seconds() >= 1.0
    node = nodes[0]
    assert b"".join(client.download_node_file("sim-start", node.id, "startup/stdout.txt")) == b"booted"

    def failed() -> list[Any] | None:
        found = list(client.list_nodes("sim-badstart"))
        return found if len(found) == 2 and all(n.state == "starttaskfailed" for n in found) else None

    for node in wait_for(failed, 15, interval=POLL_S, message="start task failure"):
        info = client.get_node("sim-badstart", node.id).start_task_info
        assert info.exit_code == 4 and info.retry_count == 1 and info.failure_info.code == "FailureExitCode"


def test_many_tasks_drain_and_counts_add_up(client: Any, pool: str) -> None:
    job = _job(client, "sim-bulk", pool)
    total = 600
    for start in range(0, total, 100):
        client.create_tasks(job, [models.BatchTaskCreateOptions(
            id=f"t{i:05d}", command_line="sim:duration=0.05" if i % 10 else "sim:exit=1")
            for i in range(start, start + 100)])
    counts = wait_tasks_done(client, job, timeout=60)
    assert (counts.completed, counts.succeeded, counts.failed) == (total, total - total // 10, total // 10)
    failed = list(client.list_tasks(job, filter="executionInfo/exitCode eq 1", select=["id"]))
    assert len(failed) == total // 10
    # The work spread over the pool: many nodes ran some of it.
    ran = [n.total_tasks_run for n in client.list_nodes(pool)]
    assert sum(ran) >= total and sum(1 for r in ran if r) > NODES // 4


def test_removing_nodes_and_resizing_down(client: Any, pool: str) -> None:
    victims = [n.id for n in list(client.list_nodes(pool))[:5]]
    client.begin_remove_nodes(pool, models.BatchNodeRemoveOptions(node_ids=victims), polling_interval=POLL_S).result()
    wait_for(lambda: len(list(client.list_nodes(pool))) == NODES - 5, 15, interval=0.2, message="removed nodes gone")
    assert not set(victims) & {n.id for n in client.list_nodes(pool)}
    client.begin_resize_pool(pool, models.BatchPoolResizeOptions(target_dedicated_nodes=50),
                             polling_interval=POLL_S).result()
    nodes = wait_pool_idle(client, pool, 50, timeout=15)
    assert len(nodes) == 50 and client.get_pool(pool).current_dedicated_nodes == 50


def test_a_lost_simulator_process_requeues_and_its_nodes_come_back(shoal: RunningShoal, client: Any, pool: str) -> None:
    job = _job(client, "sim-lost", pool)
    client.create_task(job, models.BatchTaskCreateOptions(id="survivor", command_line="sleep 2"))
    first = wait_for(lambda: (t := client.get_task(job, "survivor")).state == "running" and t, 10,
                     interval=POLL_S, message="running")
    (agents,) = _sim_agents(shoal)
    os.kill(agents.pid, signal.SIGKILL)
    # Its nodes were lost with it: the running task is requeued (a recovery: neither a retry nor
    # a counted requeue), and a new process brings the nodes back and runs it again.
    task = wait_for(lambda: (t := client.get_task(job, "survivor")).state == "completed" and t, 20,
                    interval=0.2, message="requeued task completed")
    info = task.execution_info
    assert info.exit_code == 0 and info.retry_count == 0
    assert info.start_time > first.execution_info.start_time
    wait_pool_idle(client, pool, len(list(client.list_nodes(pool))), timeout=15)
    (replacement,) = _sim_agents(shoal)
    assert replacement.pid != agents.pid


def test_a_scheduled_jobs_task_files_are_served_by_a_simulated_node(client: Any, pool: str) -> None:
    """A job schedule's job `<id>:job-1` keeps its tasks under workitems/<id>/job-1 on simulated
    nodes as on local ones, where the control plane asks for them."""
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id="sim-schedule", schedule=models.BatchJobScheduleConfiguration(),
        job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=pool))))
    wait_for(lambda: list(client.list_jobs_from_schedule("sim-schedule")), 10, message="the schedule's job")
    client.create_task("sim-schedule:job-1", models.BatchTaskCreateOptions(id="echo", command_line="echo scheduled"))
    wait_task_state(client, "sim-schedule:job-1", "echo", "completed")
    assert b"".join(client.download_task_file("sim-schedule:job-1", "echo", "stdout.txt")) == b"scheduled\n"
    client.begin_terminate_job_schedule("sim-schedule", polling_interval=0.1).result()


def test_a_simulated_pool_runs_the_manager_alone_and_ends_the_job_with_it(client: Any) -> None:
    """The job manager (a task like any other to the nodes): alone on its node, JMComplete ends the job."""
    client.create_pool(pool_options("sim-jm", vm_size="standard_a1_v2", target_dedicated_nodes=3, task_slots_per_node=2))
    wait_pool_idle(client, "sim-jm", 3, timeout=20)
    client.create_job(models.BatchJobCreateOptions(
        id="sim-jm-job", pool_info=models.BatchPoolInfo(pool_id="sim-jm"),
        job_manager_task=models.BatchJobManagerTask(id="manager", command_line="sleep 2")))
    client.create_tasks("sim-jm-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 60")
                                       for i in range(6)])
    manager = wait_task_state(client, "sim-jm-job", "manager", "running")
    node = manager.node_info.node_id
    running = wait_for(lambda: (tasks := [t for t in client.list_tasks("sim-jm-job") if t.id != "manager"
                                          and t.state == "running"]) and len(tasks) == 4 and tasks, 20,
                       message="the other nodes' four slots busy")
    assert node not in {t.node_info.node_id for t in running}
    job = wait_for(lambda: (j := client.get_job("sim-jm-job")).state == "completed" and j, 30, message="job done")
    assert job.execution_info.termination_reason == "JMComplete"
    others = [t for t in client.list_tasks("sim-jm-job") if t.id != "manager"]
    assert all(t.state in ("completed", "active") for t in others)
    assert sum(t.state == "completed" and t.execution_info.result == "failure" for t in others) == 4


def test_a_simulated_pool_runs_job_preparation_and_release_at_once(client: Any, pool: str) -> None:
    """Simulated nodes end a job's preparation and release at once, successfully: the job's
    tasks run, and a terminated job completes (it would stay terminating if the releases hung)."""
    client.create_job(models.BatchJobCreateOptions(
        id="sim-prep", pool_info=models.BatchPoolInfo(pool_id=pool),
        job_preparation_task=models.BatchJobPreparationTask(command_line="sleep 1"),
        job_release_task=models.BatchJobReleaseTask(command_line="sleep 1")))
    client.create_tasks("sim-prep", [models.BatchTaskCreateOptions(id=f"p{i}", command_line="exit 0")
                                     for i in range(4)])
    wait_for(lambda: client.get_job_task_counts("sim-prep").task_counts.succeeded == 4, 20, message="tasks done")
    statuses = list(client.list_job_preparation_and_release_task_status("sim-prep"))
    assert statuses and all(s.job_preparation_task_execution_info.result == "success" for s in statuses)
    from azure.batch.models._models import BatchJobTerminateOptions

    client.begin_terminate_job("sim-prep", BatchJobTerminateOptions(termination_reason="Done"), polling_interval=0.1)
    wait_for(lambda: client.get_job("sim-prep").state == "completed", 20, message="job completed")
    statuses = list(client.list_job_preparation_and_release_task_status("sim-prep"))
    assert all(s.job_release_task_execution_info.result == "success" for s in statuses)
