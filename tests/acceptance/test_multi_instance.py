"""Multi-instance tasks (semantics §3.5) through the official SDK against a real `shoal up` with
local nodes: a real Open MPI program over loopback as a 2-instance task on a 2-node pool with
inter-node communication, its AZ_BATCH_* environment, subtasksinfo and final state; bad
multiInstanceSettings refused as Batch refuses them; a failing coordination command failing the
task; and a subtask's node lost mid-run requeueing the task rather than leaving it running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.acceptance.rest import call
from tests.helpers import agent_processes, error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "mpi-pool"
PLAIN_POOL = "plain-pool"
JOB = "mpi-job"
PLAIN_JOB = "plain-job"
# Open MPI over loopback only (INFRA.md), as any user (the agent may run tasks as root).
MPI_ENV = [models.EnvironmentSetting(name="OMPI_ALLOW_RUN_AS_ROOT", value="1"),
           models.EnvironmentSetting(name="OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", value="1")]
MPIRUN = ("mpirun --host $AZ_BATCH_HOST_LIST -np 2 "
          "--mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo")

# Rank 0 and rank 1 play ping-pong (41 comes back as 42), then every rank's rank + 1 is summed
# on rank 0: with 2 ranks, "sum 3". Neither line can be printed unless the two ranks talked.
RING_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, token = 0, sum = 0, mine;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (rank == 0) {
        token = 41;
        MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        printf("pong %d\n", token);
    } else if (rank == 1) {
        MPI_Recv(&token, 1, MPI_INT, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += 1;
        MPI_Send(&token, 1, MPI_INT, 0, 0, MPI_COMM_WORLD);
    }
    mine = rank + 1;
    MPI_Reduce(&mine, &sum, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("size %d sum %d\n", size, sum);
    MPI_Finalize();
    return 0;
}
"""


@pytest.fixture(scope="module")
def ring_binary() -> Iterator[Path]:
    """The MPI program, compiled with mpicc into a folder every task user may read."""
    if shutil.which("mpirun") is None or shutil.which("mpicc") is None:
        pytest.skip("Open MPI is not installed (apt-get install openmpi-bin libopenmpi-dev; scripts/test.sh does)")
    folder = Path(tempfile.mkdtemp(prefix="shoal-mpi-"))
    folder.chmod(0o755)
    (folder / "ring.c").write_text(RING_C)
    subprocess.run(["mpicc", "-o", str(folder / "ring"), str(folder / "ring.c")], check=True)
    (folder / "ring").chmod(0o755)
    try:
        yield folder / "ring"
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def pools(client: Any) -> Any:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=1,
                                    enable_inter_node_communication=True))
    client.create_pool(pool_options(PLAIN_POOL, target_dedicated_nodes=0, task_slots_per_node=1))
    wait_pool_idle(client, POOL, 2)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    client.create_job(models.BatchJobCreateOptions(id=PLAIN_JOB, pool_info=models.BatchPoolInfo(pool_id=PLAIN_POOL)))
    return client


def _file(client: Any, task_id: str, path: str) -> str:
    return b"".join(client.download_task_file(JOB, task_id, path)).decode()


def _add(client: Any, task_id: str, command: str, coordination: str, instances: int = 2, **kwargs: Any) -> None:
    client.create_task(JOB, models.BatchTaskCreateOptions(
        id=task_id, command_line=command, environment_settings=MPI_ENV,
        multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=instances, coordination_command_line=coordination,
            common_resource_files=kwargs.pop("common_resource_files", None)), **kwargs))


def _nodes_idle(client: Any) -> bool:
    return all(n.state == "idle" for n in client.list_nodes(POOL))


def test_an_mpi_program_runs_across_both_instances(pools: Any, ring_binary: Path) -> None:
    client = pools
    command = ("/bin/sh -c 'env | grep ^AZ_BATCH_ | sort > env.txt; "
               f"{MPIRUN} $AZ_BATCH_TASK_SHARED_DIR/ring'")
    coordination = "/bin/sh -c 'env | grep ^AZ_BATCH_ | sort > coordination-env.txt; test -x ../ring'"
    ring = models.ResourceFile(http_url=f"file://{ring_binary}", file_path="ring", file_mode="0755")
    _add(client, "mpi", command, coordination, common_resource_files=[ring])
    task = wait_task_state(client, JOB, "mpi", "completed", timeout=90)
    stdout, stderr = _file(client, "mpi", "stdout.txt"), _file(client, "mpi", "stderr.txt")
    assert task.execution_info.failure_info is None, (task.execution_info, stdout, stderr)
    assert task.execution_info.exit_code == 0, (stdout, stderr)
    assert task.execution_info.result == "success"
    assert "pong 42" in stdout and "size 2 sum 3" in stdout, (stdout, stderr)
    # multiInstanceSettings come back as sent.
    settings = task.multi_instance_settings
    assert (settings.number_of_instances, settings.coordination_command_line) == (2, coordination)
    assert settings.common_resource_files[0].file_path == "ring"

    env = dict(line.split("=", 1) for line in _file(client, "mpi", "wd/env.txt").splitlines())
    nodes = {n.id: n for n in client.list_nodes(POOL)}
    primary = task.node_info.node_id
    assert env["AZ_BATCH_HOST_LIST"] == "127.0.0.1,127.0.0.1"
    assert env["AZ_BATCH_NODE_LIST"] == "127.0.0.1;127.0.0.1"
    assert env["AZ_BATCH_MASTER_NODE"] == f"{nodes[primary].ip_address}:6000"
    assert env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "true"
    assert env["AZ_BATCH_TASK_SHARED_DIR"] == env["AZ_BATCH_TASK_DIR"]
    assert env["AZ_BATCH_NODE_ID"] == primary

    subtasks = list(client.list_subtasks(JOB, "mpi"))
    assert [s.id for s in subtasks] == [0, 1]
    assert {s.node_info.node_id for s in subtasks} == set(nodes)
    assert subtasks[0].node_info.node_id == primary
    assert all(s.state == "completed" and s.result == "success" for s in subtasks), subtasks
    assert subtasks[0].exit_code == 0
    assert all(s.start_time <= s.end_time for s in subtasks)

    # The subtask ran the coordination command on its own node, with its own view of the task.
    other = subtasks[1].node_info.node_id
    coordination_env = dict(line.split("=", 1) for line in b"".join(client.download_node_file(
        POOL, other, f"{subtasks[1].node_info.task_root_directory}/wd/coordination-env.txt")).decode().splitlines())
    assert coordination_env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "false"
    assert coordination_env["AZ_BATCH_NODE_ID"] == other
    assert coordination_env["AZ_BATCH_HOST_LIST"] == env["AZ_BATCH_HOST_LIST"]
    # Both nodes are free again: the subtask held its node until the primary ended, no longer.
    wait_for(lambda: _nodes_idle(client), 20, message="both nodes idle")
    # Deleting the task deletes its folder on every instance's node.
    client.delete_task(JOB, "mpi")
    folder = f"{subtasks[1].node_info.task_root_directory}/wd/coordination-env.txt"
    wait_for(lambda: not _node_file_exists(client, other, folder), 20, message="subtask folder deleted")


def _node_file_exists(client: Any, node_id: str, path: str) -> bool:
    try:
        b"".join(client.download_node_file(POOL, node_id, path))
    except HttpResponseError as exc:
        assert exc.status_code == 404
        return False
    return True


def _refusal(shoal: Any, job: str, settings: Any, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"id": "bad", "commandLine": "/bin/true", "multiInstanceSettings": settings, **extra}
    response = call(shoal, "POST", f"/jobs/{job}/tasks", body=json.dumps(body).encode())
    return response.status_code, response.json() if response.content else {}


@pytest.mark.parametrize(("settings", "extra", "status", "code"), [
    ({"numberOfInstances": 0, "coordinationCommandLine": "/bin/true"}, {}, 400, "InvalidPropertyValue"),
    ({"numberOfInstances": -1, "coordinationCommandLine": "/bin/true"}, {}, 400, "InvalidPropertyValue"),
    ({"numberOfInstances": "two", "coordinationCommandLine": "/bin/true"}, {}, 400, "InvalidPropertyValue"),
    ({"numberOfInstances": 10**9, "coordinationCommandLine": "/bin/true"}, {}, 400, "InvalidPropertyValue"),
    ({"numberOfInstances": 2}, {}, 400, "MissingRequiredProperty"),
    ({"numberOfInstances": 2, "coordinationCommandLine": 7}, {}, 400, "InvalidPropertyValue"),
    ({"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}, {"requiredSlots": 2}, 400,
     "InvalidPropertyValue"),
    ("instances", {}, 400, "InvalidPropertyValue"),
])
def test_bad_multi_instance_settings_are_refused_and_store_nothing(
        shoal: Any, pools: Any, settings: Any, extra: dict[str, Any], status: int, code: str) -> None:
    got, body = _refusal(shoal, JOB, settings, **extra)
    assert (got, body.get("code")) == (status, code), body
    assert body["message"]["lang"] == "en-US" and "odata.metadata" in body
    assert error_of(lambda: pools.get_task(JOB, "bad")) == (404, "TaskNotFound")


def test_more_than_one_instance_needs_inter_node_communication(shoal: Any, pools: Any) -> None:
    got, body = _refusal(shoal, PLAIN_JOB, {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"})
    assert (got, body["code"]) == (409, "InvalidPropertyValue"), body
    assert {v["key"]: v["value"] for v in body["values"]}["PropertyName"] == "multiInstanceSettings.numberOfInstances"
    assert error_of(lambda: pools.get_task(PLAIN_JOB, "bad")) == (404, "TaskNotFound")
    # The same refusal per task in a collection; one instance is fine anywhere.
    results = pools.create_task_collection(PLAIN_JOB, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id="two", command_line="/bin/true", multi_instance_settings=models.
                                      MultiInstanceSettings(number_of_instances=2, coordination_command_line="x")),
        models.BatchTaskCreateOptions(id="one", command_line="/bin/true", multi_instance_settings=models.
                                      MultiInstanceSettings(number_of_instances=1, coordination_command_line="x"))])).result_values
    by_id = {r.task_id: r for r in results}
    assert by_id["two"].status == "clienterror" and by_id["two"].error.code == "InvalidPropertyValue"
    assert by_id["one"].status == "success"
    # Integers written as strings are integers to Batch's JSON reader, here as everywhere.
    got, body = _refusal(shoal, JOB, {"numberOfInstances": "1", "coordinationCommandLine": "/bin/true"})
    assert got == 201, body
    assert pools.get_task(JOB, "bad").multi_instance_settings.number_of_instances == 1
    pools.delete_task(JOB, "bad")


def test_a_failed_coordination_command_fails_the_task(pools: Any) -> None:
    client = pools
    # Only the subtask's coordination command fails; the primary's would have run its command.
    coordination = "/bin/sh -c 'test \"$AZ_BATCH_IS_CURRENT_NODE_MASTER\" = true || exit 3'"
    _add(client, "bad-coordination", "/bin/sh -c 'sleep 300'", coordination,
         constraints=models.BatchTaskConstraints(max_task_retry_count=1))
    task = wait_task_state(client, JOB, "bad-coordination", "completed", timeout=60)
    info = task.execution_info
    assert (info.result, info.exit_code, info.retry_count) == ("failure", 3, 1)
    assert info.failure_info.code == "FailureExitCode"
    subtasks = {s.id: s for s in client.list_subtasks(JOB, "bad-coordination")}
    assert subtasks[1].state == "completed" and subtasks[1].exit_code == 3
    assert subtasks[1].result == "failure" and subtasks[1].failure_info.code == "SubtaskFailed"
    # The primary was killed with it: nothing keeps its node.
    assert subtasks[0].state == "completed"
    wait_for(lambda: _nodes_idle(client), 20, message="both nodes idle")


@pytest.mark.parametrize("instance", [1, 0], ids=["subtask", "primary"])
def test_losing_an_instances_node_mid_run_requeues_the_task(pools: Any, instance: int) -> None:
    client = pools
    wait_for(lambda: _nodes_idle(client), 60, message="both nodes idle")
    _add(client, "lost", "/bin/sh -c 'sleep 300'", "/bin/true")
    wait_task_state(client, JOB, "lost", "running", timeout=30)
    subtask = wait_for(lambda: [s for s in client.list_subtasks(JOB, "lost") if s.id == instance], 10,
                       message="instance")[0]
    agents = agent_processes(subtask.node_info.node_id)
    assert agents
    for agent in agents:
        os.kill(agent.pid, signal.SIGKILL)
    # The whole task goes back to active (a recovery requeue: no retry counted) and runs again
    # once both nodes can take it; it never stays running on a node that is gone.
    deadline = time.monotonic() + 30
    states = []
    while time.monotonic() < deadline and "active" not in states:
        states.append(client.get_task(JOB, "lost").state)
        time.sleep(0.05)
    assert "active" in states, states
    task = wait_task_state(client, JOB, "lost", "running", timeout=60)
    assert task.execution_info.retry_count == 0
    client.terminate_task(JOB, "lost")
    task = wait_task_state(client, JOB, "lost", "completed", timeout=20)
    assert task.execution_info.failure_info.code == "TaskEnded"
    assert all(s.state == "completed" for s in client.list_subtasks(JOB, "lost"))
    wait_for(lambda: _nodes_idle(client), 30, message="both nodes idle")
    client.delete_task(JOB, "lost")


def test_the_primary_runs_its_command_only_after_every_instance_coordinated(pools: Any) -> None:
    client = pools
    # The subtask's coordination takes 3 s; the primary's returns at once and must wait for it.
    coordination = "/bin/sh -c 'test \"$AZ_BATCH_IS_CURRENT_NODE_MASTER\" = true || sleep 3'"
    _add(client, "barrier", "/bin/sh -c 'date -u +%s.%N'", coordination)
    task = wait_task_state(client, JOB, "barrier", "completed", timeout=60)
    assert task.execution_info.exit_code == 0
    ran_at = float(_file(client, "barrier", "stdout.txt").strip())
    subtask = {s.id: s for s in client.list_subtasks(JOB, "barrier")}[1]
    assert ran_at - subtask.start_time.timestamp() >= 2.5, (ran_at, subtask.start_time)
    # A coordinated subtask shows its coordination command's exit code.
    assert (subtask.exit_code, subtask.result) == (0, "success")


def test_a_gang_wider_than_the_pool_waits_holding_nothing_and_says_why(shoal: Any, pools: Any) -> None:
    client = pools
    # Not refused at add (the pool may grow): it waits active, and ordinary tasks still run.
    _add(client, "wide", "/bin/true", "/bin/true", instances=3)
    client.create_task(JOB, models.BatchTaskCreateOptions(id="after-wide", command_line="/bin/true"))
    assert wait_task_state(client, JOB, "after-wide", "completed", timeout=30).execution_info.exit_code == 0
    assert client.get_task(JOB, "wide").state == "active"
    assert list(client.list_subtasks(JOB, "wide")) == []
    why = call(shoal, "GET", f"/shoal/v1/jobs/{JOB}/tasks/wide/why").json()
    assert [(r["code"], r["details"]["freeNodes"]) for r in why["reasons"]] == [("NotEnoughFreeNodes", 2)], why
    client.delete_task(JOB, "wide")
