"""A complete Batch workflow with inputs and outputs in Blob Storage: count the words of some
text files in parallel, then add the counts up in a task that waits for all of them.

1. the inputs are uploaded to a container (`inputs`);
2. a pool of two nodes runs a start task;
3. one task per input downloads its file (a blob SAS URL) and uploads its count (`outputs/counts/`);
4. a merge task depends on all of them (`taskIdRanges`), downloads every count (the container with
   `blobPrefix`), and uploads the total;
5. the total is downloaded and checked against a count made here.

It drives any Batch endpoint with the official SDKs (`azure-batch`, `azure-storage-blob`):

    python examples/blob-pipeline/pipeline.py --storage "$AZURE_STORAGE_CONNECTION_STRING"

The Batch account comes from `AZURE_BATCH_ENDPOINT`, `AZURE_BATCH_ACCOUNT` and
`AZURE_BATCH_ACCESS_KEY`, or else from `shoal account show --json`. On Shoal, run it against a
`shoal up` and an Azurite (see README.md beside this file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "batch runs many tasks at once",
    "inputs come from blob storage and outputs go back there",
    "a merge task waits for every count",
    "one two three four five six seven eight nine ten",
]


def _account() -> tuple[str, str, str]:
    if os.environ.get("AZURE_BATCH_ENDPOINT"):
        return (os.environ["AZURE_BATCH_ENDPOINT"], os.environ["AZURE_BATCH_ACCOUNT"],
                os.environ["AZURE_BATCH_ACCESS_KEY"])
    shown = json.loads(subprocess.run(["shoal", "account", "show", "--json"], check=True, capture_output=True,
                                      text=True).stdout)
    return shown["endpoint"], shown["name"], shown["primaryKey"]


def _storage_key(connection_string: str) -> tuple[str, str]:
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    return parts["AccountName"], parts["AccountKey"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("AZURE_STORAGE_CONNECTION_STRING"),
                        help="connection string of the storage account (Azurite's, on Shoal)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job")
    args = parser.parse_args()
    if not args.storage:
        parser.error("--storage (or $AZURE_STORAGE_CONNECTION_STRING) is required")
    endpoint, account, key = _account()
    batch = BatchClient(endpoint, AzureNamedKeyCredential(account, key))
    blobs = BlobServiceClient.from_connection_string(args.storage)
    storage_account, storage_key = _storage_key(args.storage)
    run = uuid.uuid4().hex[:8]
    expiry = datetime.now(UTC) + timedelta(hours=2)

    # 1. Inputs.
    inputs = blobs.get_container_client(f"inputs-{run}")
    outputs = blobs.get_container_client(f"outputs-{run}")
    inputs.create_container()
    outputs.create_container()
    for index, text in enumerate(TEXTS):
        inputs.upload_blob(f"text-{index}.txt", text.encode())

    def read_url(name: str) -> str:
        sas = generate_blob_sas(storage_account, inputs.container_name, name, account_key=storage_key,
                                permission=BlobSasPermissions(read=True), expiry=expiry)
        return f"{inputs.url}/{name}?{sas}"

    def outputs_url(permission: str) -> str:
        sas = generate_container_sas(storage_account, outputs.container_name, account_key=storage_key,
                                     permission=ContainerSasPermissions.from_string(permission), expiry=expiry)
        return f"{outputs.url}?{sas}"

    # 2. A pool with a start task.
    pool_id, job_id = f"pipeline-{run}", f"wordcount-{run}"
    batch.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2, task_slots_per_node=2,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                         sku="22_04-lts", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 22.04"),
        start_task=models.BatchStartTask(command_line="/bin/sh -c 'echo ready > $AZ_BATCH_NODE_SHARED_DIR/ready'",
                                         wait_for_success=True)))
    try:
        batch.create_job(models.BatchJobCreateOptions(
            id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=True))

        # 3. The fan-out: task ids are numbers, so the merge can name them as one range.
        upload = models.OutputFileUploadConfiguration(upload_condition=models.OutputFileUploadCondition.TASK_SUCCESS)
        counts = [models.BatchTaskCreateOptions(
            id=str(index), command_line="/bin/sh -c 'wc -w < text.txt > count.txt'",
            resource_files=[models.ResourceFile(http_url=read_url(f"text-{index}.txt"), file_path="text.txt")],
            output_files=[models.OutputFile(
                file_pattern="count.txt", upload_options=upload,
                destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                    container_url=outputs_url("w"), path=f"counts/{index}.txt")))])
            for index in range(len(TEXTS))]
        # 4. The merge: every count, from the container, once all counting tasks succeeded.
        merge = models.BatchTaskCreateOptions(
            id="merge", command_line="/bin/sh -c 'cat counts/*.txt | awk \"{ s += \\$1 } END { print s }\" > total.txt'",
            depends_on=models.BatchTaskDependencies(task_id_ranges=[
                models.BatchTaskIdRange(start=0, end=len(TEXTS) - 1)]),
            resource_files=[models.ResourceFile(storage_container_url=outputs_url("rl"), blob_prefix="counts/")],
            output_files=[models.OutputFile(
                file_pattern="total.txt", upload_options=upload,
                destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                    container_url=outputs_url("w"), path="total.txt")))])
        batch.create_tasks(job_id, [merge, *counts])
        # A job with no tasks counts as all-complete, so it may end only once its tasks are in.
        batch.update_job(job_id, models.BatchJobUpdateOptions(
            all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB))

        deadline = time.monotonic() + args.timeout
        while batch.get_job(job_id).state != models.BatchJobState.COMPLETED:
            if time.monotonic() > deadline:
                print("the job did not complete in time", file=sys.stderr)
                return 1
            time.sleep(1)
        failed = [task.id for task in batch.list_tasks(job_id)
                  if task.execution_info is None or task.execution_info.result != models.BatchTaskExecutionResult.SUCCESS]
        if failed:
            print(f"tasks that did not succeed: {', '.join(sorted(failed))}", file=sys.stderr)
            return 1

        # 5. The result, checked.
        total = int(outputs.download_blob("total.txt").readall().decode().strip())
        expected = sum(len(text.split()) for text in TEXTS)
        print(f"total words: {total} (expected {expected})")
        return 0 if total == expected else 1
    finally:
        _clean_up(batch, job_id, pool_id)


def _clean_up(batch: BatchClient, job_id: str, pool_id: str) -> None:
    """Delete what the run made, whatever it got to (a job that was never created is no error)."""
    for delete, name in ((batch.begin_delete_job, job_id), (batch.begin_delete_pool, pool_id)):
        try:
            delete(name)  # deletion goes on in the service; nothing waits for it
        except Exception as error:  # noqa: BLE001 - cleaning up: report and go on
            print(f"could not delete {name}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
