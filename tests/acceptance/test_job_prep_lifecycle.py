"""Job preparation and release tasks across crashes, reboots, users and schedules: each test
has its own `shoal up` pool (semantics §3.4, §5.5)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from azure.batch import models

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import agent_processes, pool_options, wait_for, wait_pool_idle, wait_tasks_done


def _sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


def _job(client: Any, job_id: str, pool_id: str, prep: Any, release: Any = None, **kwargs: Any) -> str:
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), job_preparation_task=prep,
        job_release_task=release, **kwargs))
    return job_id


def _terminate(client: Any, job_id: str) -> None:
    from azure.batch.models._models import BatchJobTerminateOptions

    client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="UserTerminate"),
                               polling_interval=0.1)


def _release_info(client: Any, job_id: str) -> Any:
    statuses = list(client.list_job_preparation_and_release_task_status(job_id))
    return statuses[0].job_release_task_execution_info if statuses else None


def _job_state(client: Any, job_id: str, state: str, timeout: float = 60.0) -> Any:
    return wait_for(lambda: (job := client.get_job(job_id)).state == state and job, timeout,
                    message=f"job {job_id} {state}")


def _node_file(client: Any, pool_id: str, node_id: str, path: str) -> bytes:
    return b"".join(client.download_node_file(pool_id, node_id, path))


def _one_node_pool(client: Any, pool_id: str, **kwargs: Any) -> str:
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=1, **kwargs))
    [node] = wait_pool_idle(client, pool_id, 1)
    return node.id


def _release_started(client: Any, job_id: str) -> Any:
    return wait_for(lambda: (info := _release_info(client, job_id)) is not None and info.state == "running"
                    and info, 30, message="the release to start")


RELEASE_LOG = "echo start >> $AZ_BATCH_NODE_SHARED_DIR/release.log; sleep 2; " \
              "echo done >> $AZ_BATCH_NODE_SHARED_DIR/release.log"


def test_agent_kill_9_during_release_still_gets_it_done(tmp_path: Path) -> None:
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        node_id = _one_node_pool(client, "k9")
        job_id = _job(client, "k9-job", "k9", models.BatchJobPreparationTask(command_line="/bin/true"),
                      models.BatchJobReleaseTask(command_line=_sh(RELEASE_LOG)))
        client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        wait_tasks_done(client, job_id)
        _terminate(client, job_id)
        _release_started(client, job_id)
        for process in agent_processes(node_id):
            os.kill(process.pid, signal.SIGKILL)
        # The provider starts a new agent; the release still owed runs on it, and the job completes.
        _job_state(client, job_id, "completed")
        info = _release_info(client, job_id)
        assert (info.state, info.exit_code, info.result) == ("completed", 0, "success")
        log = _node_file(client, "k9", node_id, "shared/release.log").decode().split()
        assert log[-1] == "done" and log.count("done") == 1, log
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_server_kill_9_during_release_loses_nothing(tmp_path: Path) -> None:
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        node_id = _one_node_pool(client, "srv")
        job_id = _job(client, "srv-job", "srv", models.BatchJobPreparationTask(command_line="/bin/true"),
                      models.BatchJobReleaseTask(command_line=_sh(RELEASE_LOG)))
        client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        wait_tasks_done(client, job_id)
        _terminate(client, job_id)
        _release_started(client, job_id)
        port = int(shoal.endpoint.rsplit(":", 1)[1])
        shoal.process.send_signal(signal.SIGKILL)
        shoal.process.wait()
        shoal = start_shoal(tmp_path, port=port)
        client = shoal.client()
        assert client.get_job(job_id).state in ("terminating", "completed")
        _job_state(client, job_id, "completed")
        assert _release_info(client, job_id).result == "success"
        assert _node_file(client, "srv", node_id, "shared/release.log").decode().split()[-1] == "done"
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_prep_runs_as_the_named_user_who_cannot_write_elsewhere(tmp_path: Path) -> None:
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        node_id = _one_node_pool(client, "users", user_accounts=[
            models.UserAccount(name="prepper", password="Pa55word!x", elevation_level="nonadmin")])
        prep = models.BatchJobPreparationTask(
            command_line=_sh("id -un > whoami; touch $AZ_BATCH_NODE_ROOT_DIR/forbidden 2>/dev/null && exit 9; "
                             "touch $AZ_BATCH_NODE_STARTUP_DIR/forbidden 2>/dev/null && exit 8; exit 0"),
            user_identity=models.UserIdentity(username="prepper"))
        job_id = _job(client, "users-job", "users", prep)
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="t", command_line=_sh("cat $AZ_BATCH_JOB_PREP_WORKING_DIR/whoami; "
                                     "touch $AZ_BATCH_JOB_PREP_WORKING_DIR/mine 2>/dev/null && echo wrote")))
        wait_tasks_done(client, job_id)
        [status] = list(client.list_job_preparation_and_release_task_status(job_id))
        assert status.job_preparation_task_execution_info.exit_code == 0
        out = b"".join(client.download_task_file(job_id, "t", "stdout.txt")).decode()
        # The task (another user) reads what the prep left but cannot write into its folder.
        # (Shoal names the pool's user accounts apart per node: prepper_<suffix>.)
        assert out.startswith("prepper") and "wrote" not in out, out
        assert status.node_id == node_id
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_prep_reruns_after_reboot_and_jm_completion_runs_release(tmp_path: Path) -> None:
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        node_id = _one_node_pool(client, "rb")
        prep = models.BatchJobPreparationTask(command_line=_sh("echo prep >> $AZ_BATCH_NODE_SHARED_DIR/prep.log"))
        keep = models.BatchJobPreparationTask(command_line=_sh("echo keep >> $AZ_BATCH_NODE_SHARED_DIR/keep.log"),
                                              rerun_on_node_reboot_after_success=False)
        job_id = _job(client, "rb-job", "rb", prep)
        kept = _job(client, "rb-keep", "rb", keep)
        for job in (job_id, kept):
            client.create_task(job, models.BatchTaskCreateOptions(id="a", command_line="/bin/true"))
            wait_tasks_done(client, job)
        from azure.batch.models._models import BatchNodeRebootOptions

        client.begin_reboot_node("rb", node_id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                                 polling_interval=0.2).result()
        wait_pool_idle(client, "rb", 1)
        for job in (job_id, kept):
            client.create_task(job, models.BatchTaskCreateOptions(id="b", command_line="/bin/true"))
            wait_tasks_done(client, job)
        assert _node_file(client, "rb", node_id, "shared/prep.log") == b"prep\nprep\n"
        assert _node_file(client, "rb", node_id, "shared/keep.log") == b"keep\n"
        # A reimage wipes the node: every preparation runs again before the next task, even one
        # that does not rerun after a reboot (the task finds the preparation's files).
        from azure.batch.models._models import BatchNodeReimageOptions

        client.begin_reimage_node("rb", node_id, BatchNodeReimageOptions(node_reimage_option="requeue"),
                                  polling_interval=0.2).result()
        wait_pool_idle(client, "rb", 1)
        for job in (job_id, kept):
            client.create_task(job, models.BatchTaskCreateOptions(
                id="c", command_line=_sh("test -e $AZ_BATCH_JOB_PREP_DIR/stdout.txt")))
            wait_tasks_done(client, job)
            assert client.get_task(job, "c").execution_info.exit_code == 0
        assert _node_file(client, "rb", node_id, "shared/keep.log") == b"keep\n"
        # A job manager whose completion ends the job: the release runs before it completes.
        manager = _job(client, "rb-jm", "rb", models.BatchJobPreparationTask(command_line="/bin/true"),
                       models.BatchJobReleaseTask(command_line=_sh("echo jm >> $AZ_BATCH_NODE_SHARED_DIR/jm.log")),
                       job_manager_task=models.BatchJobManagerTask(id="m", command_line="/bin/true"))
        job = _job_state(client, manager, "completed")
        assert job.execution_info.termination_reason == "JMComplete"
        assert _node_file(client, "rb", node_id, "shared/jm.log") == b"jm\n"
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_a_schedule_s_jobs_carry_prep_and_release(tmp_path: Path) -> None:
    shoal = start_shoal(tmp_path)
    try:
        client = shoal.client()
        node_id = _one_node_pool(client, "sch")
        spec = models.BatchJobSpecification(
            pool_info=models.BatchPoolInfo(pool_id="sch"), all_tasks_complete_mode="terminatejob",
            job_preparation_task=models.BatchJobPreparationTask(command_line="/bin/true", wait_for_success=False),
            job_release_task=models.BatchJobReleaseTask(
                command_line=_sh("echo $AZ_BATCH_JOB_ID >> $AZ_BATCH_NODE_SHARED_DIR/sched.log")))
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id="sched", schedule=models.BatchJobScheduleConfiguration(recurrence_interval="PT1H"),
            job_specification=spec))
        job_id = wait_for(lambda: (s := client.get_job_schedule("sched")).execution_info.recent_job
                          and s.execution_info.recent_job.id, 30, message="the schedule's job")
        shown = client.get_job(job_id)
        assert shown.job_preparation_task.wait_for_success is False
        assert shown.job_release_task.max_wall_clock_time is not None
        client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        _job_state(client, job_id, "completed")
        assert _node_file(client, "sch", node_id, "shared/sched.log") == f"{job_id}\n".encode()
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
