"""The basic flow with azure-batch 14.2.0 (api-version 2024-02-01.19.0).

Runs in its own virtual environment (that SDK cannot share one with 15.x): the test starts it
as `python sdk14_flow.py ENDPOINT ACCOUNT KEY` and checks its exit code and output.
"""

import sys
import time

import azure.batch.models as m
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

endpoint, account, key = sys.argv[1:4]
client = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=endpoint)
image = m.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts",
                         version="latest")
client.pool.add(m.PoolAddParameter(
    id="sdk14", vm_size="STANDARD_D2S_V3", target_dedicated_nodes=1, task_slots_per_node=4,
    virtual_machine_configuration=m.VirtualMachineConfiguration(image_reference=image,
                                                                node_agent_sku_id="batch.node.ubuntu 22.04")))
deadline = time.time() + 60
while not [n for n in client.compute_node.list("sdk14") if n.state == m.ComputeNodeState.idle]:
    assert time.time() < deadline, "node did not become idle"
    time.sleep(0.2)
client.job.add(m.JobAddParameter(id="sdk14-job", pool_info=m.PoolInformation(pool_id="sdk14")))
result = client.task.add_collection("sdk14-job", [m.TaskAddParameter(id=f"t{i}", command_line=f"/bin/echo hello-{i}")
                                                  for i in range(120)])
assert all(r.status == m.TaskAddStatus.success for r in result.value), result.value
while True:
    counts = client.job.get_task_counts("sdk14-job").task_counts
    if counts.completed == 120:
        break
    assert time.time() < deadline + 60, counts
    time.sleep(0.2)
assert counts.succeeded == 120, counts
stdout = b"".join(client.file.get_from_task("sdk14-job", "t3", "stdout.txt"))
assert stdout == b"hello-3\n", stdout
print("sdk14 flow ok", counts.succeeded)
