"""`shoal up --database postgresql://…`: the quickstart flow on a real PostgreSQL."""

from __future__ import annotations

import signal

from azure.batch import models

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.acceptance.rest import call
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done


def test_quickstart_flow_and_restart_on_postgresql(tmp_path, postgres):
    url = postgres.create_database("acceptance")
    shoal = start_shoal(tmp_path, extra_args=["--database", url])
    try:
        client = shoal.client()
        client.create_pool(pool_options("pg", target_dedicated_nodes=1, task_slots_per_node=4))
        wait_pool_idle(client, "pg", 1)
        client.create_job(models.BatchJobCreateOptions(id="pg-job", pool_info=models.BatchPoolInfo(pool_id="pg")))
        client.create_tasks("pg-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line=f"/bin/echo {i}")
                                       for i in range(50)])
        counts = wait_tasks_done(client, "pg-job")
        assert counts.succeeded == 50
        port = int(shoal.endpoint.rsplit(":", 1)[1])
        stop_shoal(shoal, sig=signal.SIGTERM)

        shoal = start_shoal(tmp_path, port=port, extra_args=["--database", url])
        client = shoal.client()
        assert client.get_job_task_counts("pg-job").task_counts.succeeded == 50
        wait_pool_idle(client, "pg", 1)
        assert b"".join(client.download_task_file("pg-job", "t9", "stdout.txt")) == b"9\n"
        # The lifetime counters and the node's log copies live in PostgreSQL too.
        stats = call(shoal, "GET", "/lifetimejobstats", api_version="2022-10-01.16.0").json()
        assert stats["numSucceededTasks"] == "50" and stats["numFailedTasks"] == "0"
        node = next(iter(client.list_nodes("pg")))
        client.begin_resize_pool("pg", models.BatchPoolResizeOptions(target_dedicated_nodes=0)).result()
        wait_for(lambda: not list(client.list_nodes("pg")), 60, message="the node gone")
        kept = call(shoal, "GET", f"/shoal/v1/pools/pg/removednodes/{node.id}/files")
        assert [f["name"] for f in kept.json()["value"]] == ["agent.log"], kept.text
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)


def test_job_preparation_and_release_on_postgresql(tmp_path, postgres):
    """Prep bars a failing node, a release holds the job in terminating, the status list filters in
    SQL: the same statements on PostgreSQL."""
    from azure.batch.models._models import BatchJobTerminateOptions

    from tests.helpers import wait_for

    url = postgres.create_database("prep")
    shoal = start_shoal(tmp_path, extra_args=["--database", url])
    try:
        client = shoal.client()
        client.create_pool(pool_options("pgp", target_dedicated_nodes=2, task_slots_per_node=2))
        doomed = sorted(n.id for n in wait_pool_idle(client, "pgp", 2))[0]
        client.create_job(models.BatchJobCreateOptions(
            id="pgp-job", pool_info=models.BatchPoolInfo(pool_id="pgp"),
            job_preparation_task=models.BatchJobPreparationTask(
                command_line=f"/bin/sh -c 'test $AZ_BATCH_NODE_ID != {doomed}'"),
            job_release_task=models.BatchJobReleaseTask(command_line="/bin/sleep 1")))
        client.create_tasks("pgp-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                        for i in range(6)])
        assert wait_tasks_done(client, "pgp-job").succeeded == 6
        assert doomed not in {t.node_info.node_id for t in client.list_tasks("pgp-job")}
        failed = list(client.list_job_preparation_and_release_task_status(
            "pgp-job", filter="jobPreparationTaskExecutionInfo/state eq 'completed' and nodeId eq '" + doomed + "'"))
        assert [s.job_preparation_task_execution_info.result for s in failed] == ["failure"]
        client.begin_terminate_job("pgp-job", BatchJobTerminateOptions(termination_reason="Done"), polling_interval=0.1)
        wait_for(lambda: client.get_job("pgp-job").state == "completed", 30, message="job completed")
        statuses = list(client.list_job_preparation_and_release_task_status("pgp-job", max_results=1))
        assert len(statuses) == 2
        assert {s.job_release_task_execution_info.result for s in statuses} == {"success"}
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
