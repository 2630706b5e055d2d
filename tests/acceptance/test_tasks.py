"""Tasks through the official SDK: adding, listing, changing and ending tasks, and how they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.batch import models
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError

from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

POOL = "tasks-pool"
POLL_S = 0.1
# Tasks that keep state in the test's own folder (root's, closed to others) run as an admin
# auto-user, which is root on the node; by default a task runs as an unprivileged pool user.
AS_ROOT = models.UserIdentity(auto_user=models.AutoUserSpecification(elevation_level="admin"))


@pytest.fixture(scope="module")
def pool(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, POOL, 2)
    return POOL


@pytest.fixture
def job(client: Any, pool: str, request: pytest.FixtureRequest) -> Any:
    """A fresh job per test, named after it; terminated afterwards so its tasks free their slots."""
    from azure.batch.models._models import BatchJobTerminateOptions

    job_id = request.node.name.removeprefix("test_").replace("_", "-")[:64]
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool)))
    yield job_id
    try:
        client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="TestDone"),
                                   polling_interval=POLL_S).result()
    except HttpResponseError:
        pass


def add(client: Any, job_id: str, task_id: str, command: str, **kwargs: Any) -> None:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs))


def stdout_of(client: Any, job_id: str, task_id: str, name: str = "stdout.txt") -> bytes:
    return b"".join(client.download_task_file(job_id, task_id, name))


def wait_file(client: Any, job_id: str, task_id: str, name: str) -> bytes:
    def content() -> bytes | None:
        try:
            data = stdout_of(client, job_id, task_id, name)
        except HttpResponseError:
            return None
        return data if data.endswith(b"\n") else None

    return wait_for(content, 10, interval=POLL_S, message=f"{name} of {task_id}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# A task that records its own pid and a background child's, then waits: a process tree.
TREE = ("/bin/sh -c 'sleep 100 & echo $! > $AZ_BATCH_TASK_WORKING_DIR/child.pid; "
        "echo $$ > $AZ_BATCH_TASK_WORKING_DIR/main.pid; sleep 100'")


def tree_pids(client: Any, job_id: str, task_id: str) -> list[int]:
    return [int(wait_file(client, job_id, task_id, f"wd/{name}.pid")) for name in ("main", "child")]


def test_create_get_and_errors(client: Any, job: str, shoal: Any) -> None:
    status, headers = client.create_task(
        job, models.BatchTaskCreateOptions(id="one", command_line="true", display_name="One"),
        cls=lambda response, _body, _headers: (response.http_response.status_code, response.http_response.headers))
    assert status == 201
    assert headers["ETag"] and headers["Last-Modified"]
    assert headers["DataServiceId"] == headers["Location"] == f"{shoal.endpoint}/jobs/{job}/tasks/one"
    task = client.get_task(job, "one")
    assert (task.id, task.display_name, task.command_line) == ("one", "One", "true")
    assert task.state in ("active", "running", "completed")
    assert task.constraints.max_task_retry_count == 0
    assert task.constraints.retention_time.days == 7
    assert task.url == f"{shoal.endpoint}/jobs/{job}/tasks/one"
    assert error_of(lambda: add(client, job, "ONE", "true")) == (409, "TaskExists")
    assert error_of(lambda: client.get_task(job, "missing")) == (404, "TaskNotFound")
    assert error_of(lambda: client.get_task("no-such-job", "one")) == (404, "JobNotFound")
    assert error_of(lambda: add(client, "no-such-job", "x", "true")) == (404, "JobNotFound")
    assert error_of(lambda: client.terminate_task(job, "missing")) == (404, "TaskNotFound")
    assert error_of(lambda: client.delete_task(job, "missing")) == (404, "TaskNotFound")


def test_create_tasks_collection(client: Any, job: str) -> None:
    first = client.create_task_collection(job, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id=f"c{i}", command_line="true") for i in range(3)]))
    assert sorted((r.task_id, r.status) for r in first.result_values) == [
        ("c0", "success"), ("c1", "success"), ("c2", "success")]
    assert all(r.etag and r.location.endswith(f"/tasks/{r.task_id}") for r in first.result_values)
    # A later collection naming an existing task: that one is a client error, the rest are added.
    second = client.create_task_collection(job, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id=task_id, command_line="true") for task_id in ("c3", "C1", "c4")]))
    by_id = {r.task_id: r for r in second.result_values}
    assert by_id["C1"].status == "clienterror" and by_id["C1"].error.code == "TaskExists"
    assert by_id["c3"].status == by_id["c4"].status == "success"
    assert sorted(t.id for t in client.list_tasks(job)) == ["c0", "c1", "c2", "c3", "c4"]
    # The SDK's create_tasks treats TaskExists as already added (it retries with the same ids).
    result = client.create_tasks(job, [models.BatchTaskCreateOptions(id=i, command_line="true")
                                       for i in ("c0", "c5")])
    assert sorted(r.status for r in result.result_values) == ["clienterror", "success"]


def test_list_paging_filter_select(client: Any, job: str) -> None:
    client.create_tasks(job, [models.BatchTaskCreateOptions(id=f"l{i}", command_line="true") for i in range(6)]
                        + [models.BatchTaskCreateOptions(id="fails", command_line="false")])
    wait_for(lambda: all(t.state == "completed" for t in client.list_tasks(job)), 20, interval=POLL_S,
             message="all tasks completed")
    pages = [list(page) for page in client.list_tasks(job, max_results=3).by_page()]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(t.id for p in pages for t in p) == sorted([f"l{i}" for i in range(6)] + ["fails"])
    failed = [t.id for t in client.list_tasks(job, filter="executionInfo/result eq 'failure'")]
    assert failed == ["fails"]
    assert len(list(client.list_tasks(job, filter="state eq 'completed'"))) == 7
    assert list(client.list_tasks(job, filter="state eq 'active'")) == []
    selected = list(client.list_tasks(job, select=["id", "state"], max_results=4))
    assert len(selected) == 7
    assert all(t.state == "completed" and t.command_line is None and t.execution_info is None for t in selected)


def test_replace_task_constraints_and_etag(client: Any, job: str) -> None:
    client.begin_disable_job(job, models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=POLL_S).result()  # keep the task active while we change it
    add(client, job, "t", "true")
    task = client.get_task(job, "t")
    client.replace_task(job, "t", models.BatchTask(constraints=models.BatchTaskConstraints(
        max_wall_clock_time="PT10M", retention_time="PT1H", max_task_retry_count=4)),
        etag=task.etag, match_condition=MatchConditions.IfNotModified)
    changed = client.get_task(job, "t")
    assert changed.constraints.max_task_retry_count == 4
    assert changed.constraints.max_wall_clock_time.total_seconds() == 600
    assert changed.constraints.retention_time.total_seconds() == 3600
    assert changed.etag != task.etag
    assert error_of(lambda: client.replace_task(
        job, "t", models.BatchTask(constraints=models.BatchTaskConstraints(max_task_retry_count=1)),
        etag=task.etag, match_condition=MatchConditions.IfNotModified)) == (412, "ConditionNotMet")
    assert error_of(lambda: client.terminate_task(job, "t", etag=task.etag,
                                                  match_condition=MatchConditions.IfNotModified)) == (
        412, "ConditionNotMet")
    assert client.get_task(job, "t").constraints.max_task_retry_count == 4


def test_delete_running_task(client: Any, job: str, shoal: Any) -> None:
    add(client, job, "t", TREE)
    main, child = tree_pids(client, job, "t")
    node_id = client.get_task(job, "t").node_info.node_id
    folder = shoal.nodes_dir / node_id / "batch" / "tasks" / "workitems" / job / "job-1" / "t"
    assert folder.is_dir()
    client.delete_task(job, "t")
    assert error_of(lambda: client.get_task(job, "t")) == (404, "TaskNotFound")
    wait_for(lambda: gone(main) and gone(child), 10, interval=POLL_S, message="task processes killed")
    wait_for(lambda: not folder.exists(), 10, interval=POLL_S, message="task folder removed")


def test_terminate_kills_process_tree(client: Any, job: str) -> None:
    add(client, job, "t", TREE)
    main, child = tree_pids(client, job, "t")
    assert not gone(main) and not gone(child)
    status = client.terminate_task(job, "t", cls=lambda response, _b, _h: response.http_response.status_code)
    assert status == 204
    task = client.get_task(job, "t")
    assert task.state == "completed"
    assert task.execution_info.result == "failure" and task.execution_info.failure_info.code == "TaskEnded"
    wait_for(lambda: gone(main) and gone(child), 10, interval=POLL_S, message="task process tree killed")
    # Terminating a completed task changes nothing.
    client.terminate_task(job, "t")
    assert client.get_task(job, "t").etag == task.etag


def test_reactivate_failed_task(client: Any, job: str, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    add(client, job, "t", f"/bin/sh -c 'echo run >> {marker}; exit 2'",
        constraints=models.BatchTaskConstraints(max_task_retry_count=1), user_identity=AS_ROOT)
    failed = wait_task_state(client, job, "t", "completed")
    assert failed.execution_info.retry_count == 1 and failed.execution_info.exit_code == 2
    assert failed.execution_info.failure_info.code == "FailureExitCode"
    status = client.reactivate_task(job, "t", cls=lambda response, _b, _h: response.http_response.status_code)
    assert status == 204
    active = client.get_task(job, "t")
    assert active.state in ("active", "running")
    assert active.execution_info.retry_count == 0
    assert active.execution_info.failure_info is None and active.execution_info.exit_code is None
    wait_for(lambda: marker.read_text().count("run") == 4, 20, interval=POLL_S, message="two more runs")
    assert wait_task_state(client, job, "t", "completed").execution_info.retry_count == 1

    add(client, job, "ok", "true")
    wait_task_state(client, job, "ok", "completed")
    assert error_of(lambda: client.reactivate_task(job, "ok"))[0] == 409


def test_command_line_runs_without_shell(client: Any, job: str) -> None:
    add(client, job, "t", "echo $HOME 'two words' \"x  y\"")
    wait_task_state(client, job, "t", "completed")
    assert stdout_of(client, job, "t") == b"$HOME two words x  y\n"


def test_environment_settings(client: Any, job: str) -> None:
    add(client, job, "t", "printenv MY_VAR AZ_BATCH_TASK_ID AZ_BATCH_JOB_ID AZ_BATCH_POOL_ID",
        environment_settings=[models.EnvironmentSetting(name="MY_VAR", value="hello world")])
    wait_task_state(client, job, "t", "completed")
    assert stdout_of(client, job, "t") == f"hello world\nt\n{job}\n{POOL}\n".encode()


def test_max_task_retry_count(client: Any, job: str, tmp_path: Path) -> None:
    # The counter lives in a folder both local nodes see: retries may land on either node.
    counter = tmp_path / "count"
    script = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]"
    add(client, job, "t", f"/bin/sh -c '{script}'", constraints=models.BatchTaskConstraints(max_task_retry_count=3),
        user_identity=AS_ROOT)
    task = wait_task_state(client, job, "t", "completed")
    assert counter.read_text() == "3\n"
    info = task.execution_info
    assert (info.result, info.exit_code, info.retry_count) == ("success", 0, 2)
    assert info.last_retry_time is not None and info.failure_info is None

    # The job's maxTaskRetryCount applies to tasks without their own.
    client.update_job(job, models.BatchJobUpdateOptions(
        constraints=models.BatchJobConstraints(max_task_retry_count=2)))
    add(client, job, "inherits", "false")
    task = wait_task_state(client, job, "inherits", "completed")
    assert (task.execution_info.result, task.execution_info.retry_count) == ("failure", 2)
    assert task.constraints.max_task_retry_count == 2


def test_max_wall_clock_time_kills_tree(client: Any, job: str) -> None:
    add(client, job, "t", TREE, constraints=models.BatchTaskConstraints(
        max_wall_clock_time="PT2S", max_task_retry_count=3))
    main, child = tree_pids(client, job, "t")
    task = wait_task_state(client, job, "t", "completed", timeout=15)
    info = task.execution_info
    assert info.result == "failure" and info.failure_info.code == "TaskEnded"
    assert info.failure_info.category == "usererror"
    assert info.retry_count == 0  # a timeout is final
    assert (info.end_time - info.start_time).total_seconds() < 10
    wait_for(lambda: gone(main) and gone(child), 10, interval=POLL_S, message="no survivor of the tree")


def test_execution_and_node_info(client: Any, job: str) -> None:
    add(client, job, "t", "/bin/sh -c 'exit 3'")
    task = wait_task_state(client, job, "t", "completed")
    info = task.execution_info
    assert (info.exit_code, info.result, info.retry_count, info.requeue_count) == (3, "failure", 0, 0)
    assert info.failure_info.category == "usererror" and info.failure_info.code == "FailureExitCode"
    assert info.start_time <= info.end_time
    node = task.node_info
    assert node.pool_id == POOL and node.node_id.startswith("tvmps_")
    assert node.task_root_directory == f"workitems/{job}/job-1/t"
    assert node.node_url.endswith(f"/pools/{POOL}/nodes/{node.node_id}")
    assert node.node_id in {n.id for n in client.list_nodes(POOL)}
    assert task.previous_state == "running"


def test_missing_program_not_retried(client: Any, job: str) -> None:
    add(client, job, "t", "/no/such/program --flag", constraints=models.BatchTaskConstraints(max_task_retry_count=3))
    task = wait_task_state(client, job, "t", "completed")
    info = task.execution_info
    assert info.result == "failure" and info.failure_info.code == "CommandProgramNotFound"
    assert info.failure_info.category == "usererror"
    assert info.retry_count == 0 and info.exit_code is None


def test_stdout_and_stderr_in_task_folder(client: Any, job: str, shoal: Any) -> None:
    add(client, job, "t", "/bin/sh -c 'echo to-out; echo to-err >&2; pwd'")
    task = wait_task_state(client, job, "t", "completed")
    root = shoal.nodes_dir / task.node_info.node_id / "batch" / "tasks" / task.node_info.task_root_directory
    assert (root / "stdout.txt").read_bytes() == f"to-out\n{root / 'wd'}\n".encode()
    assert (root / "stderr.txt").read_bytes() == b"to-err\n"
    assert stdout_of(client, job, "t", "stderr.txt") == b"to-err\n"
