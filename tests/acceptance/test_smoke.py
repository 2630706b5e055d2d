"""The quickstart flow with the official SDK: pool, start task, job, task collection, output."""

from __future__ import annotations

from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done


def test_pool_job_tasks_and_output(client):
    client.create_pool(pool_options(
        "smoke", target_dedicated_nodes=2, task_slots_per_node=4,
        start_task=models.BatchStartTask(
            command_line="/bin/sh -c 'echo ready > $AZ_BATCH_NODE_SHARED_DIR/ready.txt'", wait_for_success=True)))
    nodes = wait_pool_idle(client, "smoke", 2)
    assert all(n.start_task_info.result == "success" for n in nodes)
    client.create_job(models.BatchJobCreateOptions(id="smoke-job", pool_info=models.BatchPoolInfo(pool_id="smoke")))
    tasks = [models.BatchTaskCreateOptions(id=f"t{i}", command_line=f"/bin/sh -c 'echo out-{i}'")
             for i in range(300)]
    result = client.create_tasks("smoke-job", tasks)
    assert all(r.status == "success" for r in result.result_values)
    counts = wait_tasks_done(client, "smoke-job")
    assert counts.succeeded == 300
    assert b"".join(client.download_task_file("smoke-job", "t7", "stdout.txt")) == b"out-7\n"
