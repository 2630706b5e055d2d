"""The basic flow with an msrest-based azure-batch (11.0.0 to 14.2.0: api-versions
2021-06-01.14.0 to 2024-02-01.19.0), whose `BatchServiceClient` and models did not change shape
across those releases.

Runs in the SDK's own virtual environment (none of them can share one with 15.x): the test
starts it as `python msrest_sdk_flow.py ENDPOINT ACCOUNT KEY PREFIX` and checks its exit code and
output. PREFIX names the pool and job, so several SDKs can run against one server.
"""

import sys
import time

import azure.batch
import azure.batch.models as m
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

endpoint, account, key, prefix = sys.argv[1:5]
client = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=endpoint)
pool_id, job_id = prefix, f"{prefix}-job"
image = m.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts",
                         version="latest")
client.pool.add(m.PoolAddParameter(
    id=pool_id, vm_size="STANDARD_D2S_V3", target_dedicated_nodes=1, task_slots_per_node=4,
    virtual_machine_configuration=m.VirtualMachineConfiguration(image_reference=image,
                                                                node_agent_sku_id="batch.node.ubuntu 22.04")))
assert client.pool.get(pool_id).task_slots_per_node == 4
deadline = time.time() + 60
while not [n for n in client.compute_node.list(pool_id) if n.state == m.ComputeNodeState.idle]:
    assert time.time() < deadline, "node did not become idle"
    time.sleep(0.2)
client.job.add(m.JobAddParameter(id=job_id, pool_info=m.PoolInformation(pool_id=pool_id)))
result = client.task.add_collection(job_id, [m.TaskAddParameter(id=f"t{i}", command_line=f"/bin/echo hello-{i}")
                                             for i in range(120)])
assert all(r.status == m.TaskAddStatus.success for r in result.value), result.value
while True:
    counts_result = client.job.get_task_counts(job_id)
    counts = counts_result.task_counts
    if counts.completed == 120:
        break
    assert time.time() < deadline + 60, counts
    time.sleep(0.2)
assert counts.succeeded == 120, counts
assert counts_result.task_slot_counts.succeeded == 120, counts_result
assert {t.id for t in client.task.list(job_id)} == {f"t{i}" for i in range(120)}
stdout = b"".join(client.file.get_from_task(job_id, "t3", "stdout.txt"))
assert stdout == b"hello-3\n", stdout
print("azure-batch", azure.batch.VERSION, client.pool.api_version, "flow ok", counts.succeeded)
