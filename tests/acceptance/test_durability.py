"""Crashes and restarts of `shoal up` lose nothing that was acknowledged."""

from __future__ import annotations

import signal
import time

from azure.batch import models

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done


def _port(shoal) -> int:
    return int(shoal.endpoint.rsplit(":", 1)[1])


def test_kill_9_while_500_tasks_run_loses_nothing(tmp_path):
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        client.create_pool(pool_options("crash", target_dedicated_nodes=2, task_slots_per_node=8))
        wait_pool_idle(client, "crash", 2)
        client.create_job(models.BatchJobCreateOptions(id="crash-job",
                                                       pool_info=models.BatchPoolInfo(pool_id="crash")))
        tasks = [models.BatchTaskCreateOptions(
            id=f"t{i:03d}", command_line="/bin/sh -c 'sleep 0.1; echo $AZ_BATCH_TASK_ID'") for i in range(500)]
        client.create_tasks("crash-job", tasks)
        wait_for(lambda: client.get_job_task_counts("crash-job").task_counts.completed >= 100, 60,
                 message="some tasks to complete")
        before = {t.id: t.execution_info for t in client.list_tasks("crash-job") if t.state == "completed"}
        shoal.process.send_signal(signal.SIGKILL)
        shoal.process.wait()
        time.sleep(1.0)  # the agents keep running their tasks while the control plane is down

        shoal = start_shoal(tmp_path, port=_port(shoal))
        client = shoal.client()
        counts = wait_tasks_done(client, "crash-job", timeout=120)
        assert counts.succeeded == 500 and counts.failed == 0
        final = list(client.list_tasks("crash-job"))
        assert sorted(t.id for t in final) == [f"t{i:03d}" for i in range(500)]
        assert all(t.state == "completed" and t.execution_info.result == "success" for t in final)
        # What was acknowledged before the crash is unchanged after it.
        for task in final:
            if task.id in before:
                assert task.execution_info.end_time == before[task.id].end_time
        # A report applied twice would count a success twice on its node.
        nodes = list(client.list_nodes("crash"))
        assert sum(n.total_tasks_succeeded for n in nodes) == 500
        out = b"".join(client.download_task_file("crash-job", "t042", "stdout.txt"))
        assert out == b"t042\n"
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_sigterm_restart_keeps_state_and_requeues_running_tasks(tmp_path):
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        client.create_pool(pool_options("calm", target_dedicated_nodes=1, task_slots_per_node=2))
        nodes = wait_pool_idle(client, "calm", 1)
        client.create_job(models.BatchJobCreateOptions(id="calm-job", pool_info=models.BatchPoolInfo(pool_id="calm")))
        client.create_task("calm-job", models.BatchTaskCreateOptions(id="done", command_line="/bin/echo kept"))
        wait_for(lambda: client.get_task("calm-job", "done").state == "completed", 30, message="first task")
        client.create_task("calm-job", models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 3"))
        wait_for(lambda: client.get_task("calm-job", "long").state == "running", 30, message="long task running")

        stop_shoal(shoal, sig=signal.SIGTERM)
        shoal = start_shoal(tmp_path, port=_port(shoal))
        client = shoal.client()
        assert client.get_pool("calm").target_dedicated_nodes == 1
        assert [n.id for n in client.list_nodes("calm")] == [n.id for n in nodes]
        done = client.get_task("calm-job", "done")
        assert done.execution_info.result == "success"
        # A graceful stop takes the local agents down; the node comes back with its files.
        wait_pool_idle(client, "calm", 1)
        assert b"".join(client.download_task_file("calm-job", "done", "stdout.txt")) == b"kept\n"
        wait_tasks_done(client, "calm-job", timeout=60)
        long = client.get_task("calm-job", "long")
        assert long.execution_info.result == "success"
        # Lost with its node's agent: requeued as a recovery, not a retry.
        assert long.execution_info.retry_count == 0
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_a_task_file_asked_for_at_once_after_a_restart_is_served(tmp_path):
    # Found by the README test in CI: right after a restart the node's agent was still starting
    # (nothing listening at its old address) and the download was 409 NodeNotReady. The file
    # routes now read the node's address again and retry while nobody listens (RECONNECT_S).
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        client.create_pool(pool_options("again", target_dedicated_nodes=1))
        wait_pool_idle(client, "again", 1)
        client.create_job(models.BatchJobCreateOptions(id="again-job", pool_info=models.BatchPoolInfo(pool_id="again")))
        client.create_task("again-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/echo again"))
        wait_for(lambda: client.get_task("again-job", "t").state == "completed", 30, message="the task")
        stop_shoal(shoal, sig=signal.SIGTERM)
        shoal = start_shoal(tmp_path, port=_port(shoal))
        client = shoal.client()
        assert b"".join(client.download_task_file("again-job", "t", "stdout.txt")) == b"again\n"
        assert [f.name for f in client.list_task_files("again-job", "t") if f.name == "stdout.txt"] == ["stdout.txt"]
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
