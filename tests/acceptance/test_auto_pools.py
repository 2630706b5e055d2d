"""Auto pools through the SDK: `poolInfo.autoPoolSpecification` on a job and on a job schedule.

Azure names an auto pool by a GUID after the prefix and shows it as the job's
executionInfo.poolId, while poolInfo keeps the specification with its defaults (recorded:
azure-sdk-for-python/test_batch.pyTestBatchtest_batch_jobs[sync].json). Job adds with auto pools
are recorded 201 in azure-batch-cli-extensions/test_batch_extensions_live.json.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.batch import models
from azure.batch.models._models import BatchJobTerminateOptions as TerminateOptions  # not re-exported
from azure.core.exceptions import ResourceNotFoundError

from shoal.testing.server import RunningShoal, running_shoal
from tests.acceptance import rest
from tests.helpers import error_of, image, wait_for, wait_task_state

POLL_S = 0.1
_GUID = "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("autopools"), extra_args=["--time-scale", "60"]) as running:
        yield running


def auto_pool(lifetime: str = "job", *, keep_alive: bool = False, prefix: str | None = "auto") -> Any:
    return models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
        auto_pool_id_prefix=prefix, pool_lifetime_option=lifetime, keep_alive=keep_alive,
        pool=models.BatchPoolSpecification(vm_size="standard_d2s_v3", virtual_machine_configuration=image(),
                                           target_dedicated_nodes=1)))


def pool_gone_or_going(client: Any, pool_id: str) -> bool:
    try:
        return client.get_pool(pool_id).state == "deleting"
    except ResourceNotFoundError:
        return True


def run_one_task(client: Any, job_id: str) -> None:
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'echo auto'"))
    task = wait_task_state(client, job_id, "t", "completed", timeout=40)
    assert task.execution_info.exit_code == 0, task.execution_info


def test_a_job_auto_pool_appears_runs_the_task_and_goes_with_the_job(client: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id="auto-job", pool_info=auto_pool()))
    job = client.get_job("auto-job")
    pool_id = job.execution_info.pool_id
    assert re.fullmatch(f"auto_{_GUID}", pool_id), pool_id
    assert job.pool_info.pool_id is None
    spec = job.pool_info.auto_pool_specification
    assert spec.pool_lifetime_option == "job" and spec.keep_alive is False
    assert spec.pool.task_slots_per_node == 1 and spec.pool.target_dedicated_nodes == 1
    assert client.get_pool(pool_id).target_dedicated_nodes == 1
    run_one_task(client, "auto-job")
    # Only now that the task is in: a job with no tasks counts as complete.
    client.update_job("auto-job", models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_for(lambda: client.get_job("auto-job").state == "completed", 20, interval=POLL_S, message="job done")
    wait_for(lambda: pool_gone_or_going(client, pool_id), 20, interval=POLL_S, message="auto pool deleted")


def test_keep_alive_keeps_the_pool_after_the_job(client: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id="kept-job", pool_info=auto_pool(keep_alive=True, prefix=None)))
    pool_id = client.get_job("kept-job").execution_info.pool_id
    assert re.fullmatch(_GUID, pool_id), pool_id
    client.begin_terminate_job("kept-job", TerminateOptions(termination_reason="Done"),
                               polling_interval=POLL_S).result()
    time.sleep(1)
    assert client.get_pool(pool_id).state == "active"
    client.begin_delete_job("kept-job", polling_interval=POLL_S).result()
    assert client.get_pool(pool_id).state == "active"
    client.begin_delete_pool(pool_id, polling_interval=POLL_S)


def test_deleting_the_job_deletes_its_auto_pool(client: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id="deleted-auto", pool_info=auto_pool()))
    pool_id = client.get_job("deleted-auto").execution_info.pool_id
    client.begin_delete_job("deleted-auto", polling_interval=POLL_S)
    wait_for(lambda: pool_gone_or_going(client, pool_id), 20, interval=POLL_S, message="auto pool deleted")


def test_a_schedule_pool_lives_as_long_as_the_schedule(client: Any) -> None:
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id="pooled", schedule=models.BatchJobScheduleConfiguration(recurrence_interval="PT1M"),
        job_specification=models.BatchJobSpecification(pool_info=auto_pool("jobschedule"),
                                                       all_tasks_complete_mode="terminatejob")))
    wait_for(lambda: len(list(client.list_jobs_from_schedule("pooled"))) >= 2, 20, interval=POLL_S,
             message="two jobs of pooled")
    pools = {client.get_job(job.id).execution_info.pool_id for job in client.list_jobs_from_schedule("pooled")}
    assert len(pools) == 1
    (pool_id,) = pools
    assert client.get_pool(pool_id).state == "active"  # its jobs completed; the schedule has not
    client.begin_terminate_job_schedule("pooled", polling_interval=POLL_S).result()
    wait_for(lambda: pool_gone_or_going(client, pool_id), 20, interval=POLL_S, message="schedule pool deleted")


def test_a_schedule_with_job_lifetime_gets_a_pool_per_job(client: Any) -> None:
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id="pool-per-job", schedule=models.BatchJobScheduleConfiguration(recurrence_interval="PT1M"),
        job_specification=models.BatchJobSpecification(pool_info=auto_pool("job"),
                                                       all_tasks_complete_mode="terminatejob")))
    wait_for(lambda: len(list(client.list_jobs_from_schedule("pool-per-job"))) >= 2, 20, interval=POLL_S,
             message="two jobs of pool-per-job")
    client.disable_job_schedule("pool-per-job")
    jobs = list(client.list_jobs_from_schedule("pool-per-job"))
    pools = [job.execution_info.pool_id for job in jobs]
    assert len(set(pools)) == len(pools)
    for job, pool_id in zip(jobs, pools, strict=True):
        wait_for(lambda j=job: client.get_job(j.id).state == "completed", 20, message=f"{job.id} completed")
        wait_for(lambda p=pool_id: pool_gone_or_going(client, p), 20, message=f"{pool_id} deleted")
    client.begin_delete_job_schedule("pool-per-job", polling_interval=POLL_S)


@pytest.mark.parametrize(("change", "status", "code", "name"), [
    # Windows is refused as a pool add refuses it, at job add, not when the pool would be made.
    ({"virtualMachineConfiguration": {"imageReference": {
        "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"},
        "nodeAgentSKUId": "batch.node.windows amd64"}},
     400, "InvalidPropertyValue",
     "poolInfo.autoPoolSpecification.pool.virtualMachineConfiguration.nodeAgentSKUId"),
    ({"vmSize": "standard_nonexistent"}, 400, "InvalidPropertyValue", "poolInfo.autoPoolSpecification.pool.vmSize"),
    ({"cloudServiceConfiguration": {"osFamily": "5"}}, 400, "FeatureNotSupported",
     "poolInfo.autoPoolSpecification.pool.cloudServiceConfiguration"),
])
def test_an_auto_pool_a_pool_add_would_refuse_is_refused_at_job_add(
        shoal: Any, client: Any, change: dict[str, Any], status: int, code: str, name: str) -> None:
    pool = {"vmSize": "standard_d2s_v3", "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                           "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}, **change}
    pool_info = {"autoPoolSpecification": {"poolLifetimeOption": "job", "pool": pool}}
    before = {p.id for p in client.list_pools()}
    answer = rest.call(shoal, "POST", "/jobs", body=json.dumps({"id": "refused-auto", "poolInfo": pool_info}).encode())
    assert rest.assert_batch_error(answer, status, code)["values"][0]["value"] == name
    schedule = {"id": "refused-auto-s", "schedule": {"recurrenceInterval": "PT1M"},
                "jobSpecification": {"poolInfo": pool_info}}
    answer = rest.call(shoal, "POST", "/jobschedules", body=json.dumps(schedule).encode())
    assert rest.assert_batch_error(answer, status, code)["values"][0]["value"] == f"jobSpecification.{name}"
    # No pool was made (earlier tests' auto pools may be going meanwhile).
    assert {p.id for p in client.list_pools()} <= before
    assert error_of(lambda: client.get_job("refused-auto")) == (404, "JobNotFound")


@pytest.mark.parametrize(("auto", "code"), [
    ({"poolLifetimeOption": "jobschedule", "pool": {}}, "InvalidPropertyValue"),  # not on a plain job
    ({"poolLifetimeOption": "forever", "pool": {}}, "InvalidPropertyValue"),
    ({"pool": {}}, "MissingRequiredProperty"),
    ({"poolLifetimeOption": "job"}, "MissingRequiredProperty"),
    ({"poolLifetimeOption": "job", "autoPoolIdPrefix": "x" * 21, "pool": {}}, "InvalidPropertyValue"),
    ({"poolLifetimeOption": "job", "autoPoolIdPrefix": "../etc", "pool": {}}, "InvalidPropertyValue"),
    ({"poolLifetimeOption": "job", "keepAlive": "maybe", "pool": {}}, "InvalidPropertyValue"),
])
def test_bad_auto_pool_specifications_are_refused(shoal: Any, auto: dict[str, Any], code: str) -> None:
    pool = {"vmSize": "standard_d2s_v3", "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04"}}
    if "pool" in auto:
        auto = {**auto, "pool": pool}
    body = {"id": "bad-auto", "poolInfo": {"autoPoolSpecification": auto}}
    rest.assert_batch_error(rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode()), 400, code)


def test_both_pool_id_and_auto_pool_is_refused(shoal: Any) -> None:
    body = {"id": "both", "poolInfo": {"poolId": "p", "autoPoolSpecification": {"poolLifetimeOption": "job"}}}
    rest.assert_batch_error(rest.call(shoal, "POST", "/jobs", body=json.dumps(body).encode()), 400,
                            "InvalidPropertyValue")


def test_an_auto_pool_job_can_be_put_back_as_got_but_not_moved(client: Any) -> None:
    """Azure answers a PUT of an auto-pool job that repeats its specification 200 (recorded:
    test_batch.pyTestBatchtest_batch_jobs[sync].json, Job_Update); Shoal never moves a job to
    another pool, so a changed specification is refused."""
    client.create_job(models.BatchJobCreateOptions(id="put-auto", pool_info=auto_pool()))
    got = client.get_job("put-auto")
    client.replace_job("put-auto", models.BatchJob(pool_info=got.pool_info, priority=9))
    job = client.get_job("put-auto")
    assert job.priority == 9 and job.execution_info.pool_id == got.execution_info.pool_id
    changed = got.pool_info
    changed.auto_pool_specification.pool.target_dedicated_nodes = 3
    assert error_of(lambda: client.update_job("put-auto", models.BatchJobUpdateOptions(pool_info=changed))) == (
        409, "JobNotDisabled")
    plain = models.BatchPoolInfo(auto_pool_specification=None, pool_id="elsewhere")
    client.create_job(models.BatchJobCreateOptions(id="plain-job", pool_info=plain))
    assert error_of(lambda: client.update_job("plain-job", models.BatchJobUpdateOptions(
        pool_info=auto_pool()))) == (400, "FeatureNotSupported")
    client.begin_delete_job("put-auto", polling_interval=POLL_S)
    client.begin_delete_job("plain-job", polling_interval=POLL_S)
