"""Task file APIs through the official SDK: list, download (ranges), properties and delete."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from azure.batch import models

from shoal.sharedkey import sign_request
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle

POOL = "files-pool"
JOB = "files-job"
# Writes a small tree under the working directory, and some output.
WRITER = ("/bin/sh -c 'mkdir -p sub/deeper && printf hello-world > sub/a.txt && echo b > sub/deeper/b.txt "
          "&& chmod 750 sub/a.txt && echo out && echo err >&2'")


@pytest.fixture(scope="module")
def task(client: Any) -> str:
    """One pool, one job, one finished task whose folder the tests read."""
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, POOL, 1)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    client.create_task(JOB, models.BatchTaskCreateOptions(id="writer", command_line=WRITER))
    wait_for(lambda: client.get_task(JOB, "writer").state == "completed", 20, interval=0.1, message="writer")
    assert client.get_task(JOB, "writer").execution_info.exit_code == 0
    return "writer"


def raw(shoal: Any, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    url = f"{shoal.endpoint}{path}?api-version=2025-06-01"
    signed = sign_request(method, url, headers or {}, shoal.account, shoal.primary_key)
    return httpx.request(method, url, headers=signed)


def test_list_task_files(client: Any, task: str, shoal: Any) -> None:
    top = {f.name: f for f in client.list_task_files(JOB, task)}
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(top)
    assert not any("/" in name for name in top)
    assert top["wd"].is_directory and not top["stdout.txt"].is_directory
    assert top["stdout.txt"].properties.content_length == 4
    assert top["stdout.txt"].url == f"{shoal.endpoint}/jobs/{JOB}/tasks/{task}/files/stdout.txt"
    everything = {f.name: f for f in client.list_task_files(JOB, task, recursive=True)}
    assert {"wd/sub", "wd/sub/a.txt", "wd/sub/deeper", "wd/sub/deeper/b.txt", "stdout.txt"} <= set(everything)
    a = everything["wd/sub/a.txt"]
    assert a.properties.content_length == 11 and not a.is_directory
    assert a.properties.creation_time is not None and a.properties.last_modified is not None
    assert a.properties.file_mode.endswith("750")
    # Paging through the files the SDK way.
    pages = list(client.list_task_files(JOB, task, recursive=True, max_results=2).by_page())
    assert len(pages) >= 3 and sum(len(list(p)) for p in pages) == len(everything)


def test_download_task_file(client: Any, task: str) -> None:
    assert b"".join(client.download_task_file(JOB, task, "stdout.txt")) == b"out\n"
    assert b"".join(client.download_task_file(JOB, task, "stderr.txt")) == b"err\n"
    assert b"".join(client.download_task_file(JOB, task, "wd/sub/a.txt")) == b"hello-world"
    assert b"".join(client.download_task_file(JOB, task, "wd/sub/a.txt", ocp_range="bytes=6-10")) == b"world"
    assert b"".join(client.download_task_file(JOB, task, "wd/sub/a.txt", ocp_range="bytes=0-4")) == b"hello"
    assert error_of(lambda: b"".join(client.download_task_file(JOB, task, "wd/nope.txt"))) == (404, "FileNotFound")
    assert error_of(lambda: b"".join(client.download_task_file(JOB, "no-task", "stdout.txt"))) == (
        404, "TaskNotFound")


def test_task_file_properties(client: Any, task: str, shoal: Any) -> None:
    props = client.get_task_file_properties(JOB, task, "wd/sub/a.txt")
    assert int(props.content_length) == 11
    assert props.is_directory in (False, "false")
    assert props.url == f"{shoal.endpoint}/jobs/{JOB}/tasks/{task}/files/wd/sub/a.txt"
    assert props.file_mode.endswith("750")
    # The raw HEAD, as the SDK signs and sends it (slashes percent-encoded).
    response = raw(shoal, "HEAD", f"/jobs/{JOB}/tasks/{task}/files/wd%2Fsub%2Fa.txt")
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-length"] == "11"
    assert headers["ocp-batch-file-isdirectory"] == "false"
    assert headers["ocp-batch-file-url"].endswith("/files/wd/sub/a.txt")
    assert headers["ocp-batch-file-mode"] == "100750"
    assert headers["ocp-creation-time"] and headers["last-modified"].endswith("GMT")
    directory = raw(shoal, "HEAD", f"/jobs/{JOB}/tasks/{task}/files/wd%2Fsub")
    assert directory.status_code == 200 and directory.headers["ocp-batch-file-isdirectory"] == "true"
    assert raw(shoal, "HEAD", f"/jobs/{JOB}/tasks/{task}/files/missing.txt").status_code == 404


def test_delete_task_file(client: Any, task: str) -> None:
    client.create_task(JOB, models.BatchTaskCreateOptions(id="victim", command_line=WRITER))
    wait_for(lambda: client.get_task(JOB, "victim").state == "completed", 20, interval=0.1, message="victim")
    client.delete_task_file(JOB, "victim", "wd/sub/deeper/b.txt")
    assert error_of(lambda: client.get_task_file_properties(JOB, "victim", "wd/sub/deeper/b.txt"))[0] == 404
    names = {f.name for f in client.list_task_files(JOB, "victim", recursive=True)}
    assert "wd/sub/deeper/b.txt" not in names and "wd/sub/a.txt" in names
    # A non-empty directory goes only when asked recursively.
    assert error_of(lambda: client.delete_task_file(JOB, "victim", "wd/sub"))[0] == 409
    client.delete_task_file(JOB, "victim", "wd/sub", recursive=True)
    names = {f.name for f in client.list_task_files(JOB, "victim", recursive=True)}
    assert not any(name.startswith("wd/sub") for name in names)
    assert error_of(lambda: client.delete_task_file(JOB, "victim", "wd/sub/a.txt")) == (404, "FileNotFound")
    # The other task's files are untouched.
    assert b"".join(client.download_task_file(JOB, task, "wd/sub/deeper/b.txt")) == b"b\n"


def test_files_of_a_task_that_never_ran(client: Any, task: str) -> None:
    client.begin_disable_job(JOB, models.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0.1).result()
    try:
        client.create_task(JOB, models.BatchTaskCreateOptions(id="pending", command_line="true"))
        assert error_of(lambda: list(client.list_task_files(JOB, "pending")))[0] == 404
        assert error_of(lambda: b"".join(client.download_task_file(JOB, "pending", "stdout.txt")))[0] == 404
    finally:
        client.begin_enable_job(JOB, polling_interval=0.1).result()


def test_task_file_conditional_reads(client: Any, task: str, shoal: Any) -> None:
    """If-Modified-Since answers 304 on files as on every other resource; If-Unmodified-Since 412."""
    from datetime import timedelta
    from email.utils import format_datetime

    modified = client.get_task_file_properties(JOB, task, "wd/sub/a.txt").last_modified
    later, earlier = modified + timedelta(hours=1), modified - timedelta(hours=1)
    path = f"/jobs/{JOB}/tasks/{task}/files/wd%2Fsub%2Fa.txt"
    for method in ("GET", "HEAD"):
        unchanged = raw(shoal, method, path, {"If-Modified-Since": format_datetime(later, usegmt=True)})
        assert unchanged.status_code == 304 and unchanged.content == b"", method
        changed = raw(shoal, method, path, {"If-Modified-Since": format_datetime(earlier, usegmt=True)})
        assert changed.status_code == 200, method
        stale = raw(shoal, method, path, {"If-Unmodified-Since": format_datetime(earlier, usegmt=True)})
        assert stale.status_code == 412, method
    assert raw(shoal, "GET", path, {"If-Modified-Since": format_datetime(earlier, usegmt=True)}).content == \
        b"hello-world"
    # The SDK sees the 304 as an error (azure.batch's patch raises ResourceModifiedError for it).
    assert error_of(lambda: b"".join(client.download_task_file(JOB, task, "wd/sub/a.txt",
                                                               if_modified_since=later))) == (304, "")
    assert b"".join(client.download_task_file(JOB, task, "wd/sub/a.txt", if_modified_since=earlier)) == b"hello-world"
