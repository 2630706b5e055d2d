"""Pool and job lifetime statistics with azure-batch 13.0.0 (api-version 2022-10-01.16.0, the last
that has them). Runs in the SDK's own venv as `python msrest_lifetime_flow.py ENDPOINT ACCOUNT KEY`:
reads both statistics, runs two tasks that succeed and one that fails after two retries on a
one-node pool, reads them again, and prints one JSON line of what it saw."""

import json
import sys
import time

import azure.batch.models as m
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

endpoint, account, key = sys.argv[1:4]
client = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=endpoint)


def seen():
    pool, job = client.pool.get_all_lifetime_statistics(), client.job.get_all_lifetime_statistics()
    return {"pool_core_s": pool.usage_stats.dedicated_core_time.total_seconds(),
            "pool_start": pool.usage_stats.start_time.isoformat(), "pool_cpu": pool.resource_stats.avg_cpu_percentage,
            "succeeded": job.num_succeeded_tasks, "failed": job.num_failed_tasks, "retries": job.num_task_retries,
            "wall_s": job.wall_clock_time.total_seconds(), "wait_s": job.wait_time.total_seconds(),
            "user_cpu_s": job.user_cpu_time.total_seconds(), "url": job.url}


before = seen()
image = m.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts",
                         version="latest")
client.pool.add(m.PoolAddParameter(
    id="life", vm_size="STANDARD_D2S_V3", target_dedicated_nodes=1, task_slots_per_node=4,
    virtual_machine_configuration=m.VirtualMachineConfiguration(image_reference=image,
                                                                node_agent_sku_id="batch.node.ubuntu 22.04")))
deadline = time.time() + 60
while not [n for n in client.compute_node.list("life") if n.state == m.ComputeNodeState.idle]:
    assert time.time() < deadline, "node did not become idle"
    time.sleep(0.2)
idle_at = time.time()
client.job.add(m.JobAddParameter(id="life-job", pool_info=m.PoolInformation(pool_id="life")))
client.task.add_collection("life-job", [
    m.TaskAddParameter(id="ok-1", command_line="/bin/sh -c 'sleep 1'"),
    m.TaskAddParameter(id="ok-2", command_line="/bin/sh -c 'sleep 1'"),
    m.TaskAddParameter(id="bad", command_line="/bin/sh -c 'exit 3'",
                       constraints=m.TaskConstraints(max_task_retry_count=2))])
deadline = time.time() + 60
while client.job.get_task_counts("life-job").task_counts.completed != 3:
    assert time.time() < deadline, "tasks did not complete"
    time.sleep(0.2)
after = seen()
time.sleep(1.5)
later = seen()
print(json.dumps({"before": before, "after": after, "later": later, "idle_for_s": time.time() - idle_at}))
