"""`shoal up --database postgresql://…`: the quickstart flow on a real PostgreSQL."""

from __future__ import annotations

import signal

from azure.batch import models

from shoal.testing.server import kill_agents, start_shoal, stop_shoal
from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done


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
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
