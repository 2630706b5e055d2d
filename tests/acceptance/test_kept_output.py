"""A task's stdout and stderr outlive its node (issue 10 item 5, beyond Azure): the agent sends
their last bytes with the report that ends the attempt, and the task's file routes serve those
copies once the node is gone or cannot answer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.agent.outputs import KEPT_BYTES
from tests.acceptance.rest import call
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done

JOB = "kept"
TASKS = {
    "plain": "/bin/sh -c 'echo hello-kept; echo oops >&2'",
    # 200 KiB of numbered lines: more than a copy holds.
    "chatty": "/bin/sh -c 'seq 1 40000 | sed s/^/line-/'",
    # The task swaps its stdout for a link to a file only root may read: the copy must not follow it.
    "sly": "/bin/sh -c 'cd $AZ_BATCH_TASK_DIR && rm -f stdout.txt && ln -s /etc/shadow stdout.txt; echo done >&2'",
}


@pytest.fixture(scope="module")
def gone(shoal, client):
    """The tasks ran on a node that has since left the pool."""
    client.create_pool(pool_options("kept-pool", target_dedicated_nodes=1))
    wait_pool_idle(client, "kept-pool", 1)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id="kept-pool")))
    client.create_tasks(JOB, [models.BatchTaskCreateOptions(id=task_id, command_line=command)
                              for task_id, command in TASKS.items()])
    wait_tasks_done(client, JOB)
    client.begin_resize_pool("kept-pool", models.BatchPoolResizeOptions(target_dedicated_nodes=0)).result()
    wait_for(lambda: not list(client.list_nodes("kept-pool")), timeout=60, message="the node gone")
    return client


def _download(client, task_id: str, name: str) -> bytes:
    return b"".join(client.download_task_file(JOB, task_id, name))


def test_output_is_readable_after_the_node_left(gone):
    assert _download(gone, "plain", "stdout.txt") == b"hello-kept\n"
    assert _download(gone, "plain", "stderr.txt") == b"oops\n"
    listed = {f.name: f for f in gone.list_task_files(JOB, "plain")}
    assert sorted(listed) == ["stderr.txt", "stdout.txt"]
    assert listed["stdout.txt"].properties.content_length == 11 and not listed["stdout.txt"].is_directory


def test_a_copy_answers_ranges_and_head_like_a_node(shoal, gone):
    ranged = call(shoal, "GET", f"/jobs/{JOB}/tasks/plain/files/stdout.txt", headers={"ocp-range": "bytes=6-9"})
    assert ranged.status_code == 206 and ranged.content == b"kept"
    assert ranged.headers["content-range"] == "bytes 6-9/11"
    head = call(shoal, "HEAD", f"/jobs/{JOB}/tasks/plain/files/stdout.txt")
    assert head.status_code == 200 and head.headers["content-length"] == "11"
    assert head.headers["ocp-batch-file-isdirectory"] == "false"
    past = call(shoal, "GET", f"/jobs/{JOB}/tasks/plain/files/stdout.txt", headers={"ocp-range": "bytes=50-60"})
    assert past.status_code == 416
    bad = call(shoal, "GET", f"/jobs/{JOB}/tasks/plain/files/stdout.txt", headers={"ocp-range": "lines=1-2"})
    assert bad.status_code == 416 and bad.json()["code"] == "InvalidRange"


def test_only_stdout_and_stderr_are_kept_and_the_copy_cannot_be_deleted(shoal, gone):
    for path in ("wd/anything", "stdout.txt/x", "..%2F..%2Fshoal.db", "std%00out.txt"):
        answer = call(shoal, "GET", f"/jobs/{JOB}/tasks/plain/files/{path}")
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
    deleted = call(shoal, "DELETE", f"/jobs/{JOB}/tasks/plain/files/stdout.txt")
    assert deleted.status_code == 409
    assert _download(gone, "plain", "stdout.txt") == b"hello-kept\n"


def test_a_long_output_keeps_its_end_and_says_it_was_cut(shoal, gone):
    full = b"".join(f"line-{i}\n".encode() for i in range(1, 40001))
    kept = _download(gone, "chatty", "stdout.txt")
    assert len(kept) == KEPT_BYTES and full.endswith(kept)
    head = call(shoal, "HEAD", f"/jobs/{JOB}/tasks/chatty/files/stdout.txt")
    assert head.headers["ocp-shoal-truncated-from"] == str(len(full))


def test_a_task_cannot_make_the_copy_read_a_file_it_may_not(gone):
    assert _download(gone, "sly", "stdout.txt") == b""
    assert _download(gone, "sly", "stderr.txt") == b"done\n"


def test_a_deleted_task_takes_its_copy_with_it(shoal, gone):
    gone.delete_task(JOB, "plain")
    with pytest.raises(HttpResponseError) as error:
        _download(gone, "plain", "stdout.txt")
    assert error.value.status_code == 404


def test_output_of_a_preempted_spot_node_is_readable(shoal, client):
    client.create_pool(pool_options("kept-spot", target_low_priority_nodes=1))
    node = wait_pool_idle(client, "kept-spot", 1)[0]
    client.create_job(models.BatchJobCreateOptions(id="kept-spot-job",
                                                   pool_info=models.BatchPoolInfo(pool_id="kept-spot")))
    client.create_task("kept-spot-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/echo spot-out"))
    wait_tasks_done(client, "kept-spot-job")
    subprocess.run([sys.executable, "-m", "shoal.cli", "node", "preempt", "kept-spot", node.id, "--data-dir",
                    str(shoal.data_dir)], check=True, capture_output=True, timeout=60)
    assert client.get_node("kept-spot", node.id).state == "preempted"
    assert b"".join(client.download_task_file("kept-spot-job", "t", "stdout.txt")) == b"spot-out\n"
