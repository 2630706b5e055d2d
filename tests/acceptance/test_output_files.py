"""Output files (semantics §5.3) through the official SDK against a real `shoal up` with local
nodes and a real Azurite: patterns with `*`, `**`, `?` and classes, dot files, links that are
never followed, the task's stdout/stderr, `path` as a blob name or a virtual folder, each upload
condition, upload headers, and uploads that fail (read-only SAS, missing container, patterns
outside the task folder, files the task's user cannot read)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from azure.batch import models

from tests.helpers import pool_options, wait_for, wait_pool_idle
from tests.storage import fixtures
from tests.storage.fixtures import container_sas, upload

azurite, blobs, shoal = fixtures.azurite, fixtures.blobs, fixtures.shoal

POOL = "of-pool"
JOB = "of-job"
# A tree with plain files, a dot file, a file and a folder linked from outside the task folder.
WRITER = ("/bin/sh -c 'mkdir -p sub/deep && echo a > a.txt && echo b > b.txt && echo c > sub/deep/c.txt "
          "&& echo h > .hidden.txt && echo 1 > x1.dat && echo 22 > x22.dat && ln -s /etc/passwd link.txt "
          "&& ln -s /etc linkdir && echo out && exit {code}'")


@pytest.fixture(scope="module")
def client(shoal: Any) -> Any:
    return shoal.client()


@pytest.fixture(scope="module")
def job(client: Any, blobs: Any) -> str:
    for name in ("outputs", "failures", "readonly"):
        upload(blobs, name, {})
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=4))
    wait_pool_idle(client, POOL, 1)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return JOB


def output(pattern: str, url: str, path: str | None = None, condition: str = "taskcompletion",
           headers: list[Any] | None = None) -> Any:
    return models.OutputFile(
        file_pattern=pattern,
        destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
            container_url=url, path=path, upload_headers=headers)),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=condition))


def run_task(client: Any, task_id: str, command: str, outputs: list[Any]) -> Any:
    client.create_task(JOB, models.BatchTaskCreateOptions(id=task_id, command_line=command, output_files=outputs))
    return wait_for(lambda: (t := client.get_task(JOB, task_id)).state == "completed" and t, 60,
                    interval=0.1, message=task_id)


def names(blobs: Any, container: str, prefix: str) -> set[str]:
    return {b.name for b in blobs.get_container_client(container).list_blobs(name_starts_with=prefix)}


def test_patterns_paths_and_conditions(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    url = container_sas(azurite, "outputs", "rwl")
    header = models.OutputFileUploadHeader(name="x-ms-blob-content-type", value="text/x-shoal")
    outputs = [
        output("**/*.txt", url, "all"),
        output("x?.dat", url, "question"),
        output("[ab].txt", url, "class"),
        output("[!a].txt", url, "negated"),
        output("../std*.txt", url, "logs"),
        output("a.txt", url, "renamed/one.txt", headers=[header]),
        output("$AZ_BATCH_TASK_WORKING_DIR/b.txt", url, "absolute.txt"),
        output("a.txt", url, "success/a.txt", condition="tasksuccess"),
        output("a.txt", url, "failure/a.txt", condition="taskfailure"),
        output("nothing-matches-*", url, "none"),
    ]
    task = run_task(client, "ok", WRITER.format(code=0), outputs)
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert names(blobs, "outputs", "all/") == {"all/a.txt", "all/b.txt", "all/sub/deep/c.txt"}  # no dot, no link
    assert names(blobs, "outputs", "question/") == {"question/x1.dat"}
    assert names(blobs, "outputs", "class/") == {"class/a.txt", "class/b.txt"}
    assert names(blobs, "outputs", "negated/") == {"negated/b.txt"}
    assert names(blobs, "outputs", "logs/") == {"logs/stdout.txt", "logs/stderr.txt"}
    assert names(blobs, "outputs", "success/") == {"success/a.txt"}
    assert names(blobs, "outputs", "failure/") == set()
    assert names(blobs, "outputs", "none") == set()
    one = blobs.get_container_client("outputs").get_blob_client("renamed/one.txt")
    assert one.download_blob().readall() == b"a\n"
    assert one.get_blob_properties().content_settings.content_type == "text/x-shoal"
    assert blobs.get_container_client("outputs").get_blob_client("absolute.txt").download_blob().readall() == b"b\n"
    assert blobs.get_container_client("outputs").get_blob_client("logs/stdout.txt").download_blob().readall() == (
        b"out\n")
    shown = client.get_task(JOB, "ok").output_files
    assert shown[0].file_pattern == "**/*.txt" and shown[0].destination.container.path == "all"
    assert shown[5].destination.container.upload_headers[0].name == "x-ms-blob-content-type"
    assert shown[7].upload_options.upload_condition == "tasksuccess"


def test_a_failed_task_uploads_on_failure(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    url = container_sas(azurite, "failures", "rwl")
    outputs = [output("a.txt", url, "success.txt", condition="tasksuccess"),
               output("a.txt", url, "failure.txt", condition="taskfailure"),
               output("a.txt", url, "always.txt")]
    task = run_task(client, "exit-3", WRITER.format(code=3), outputs)
    assert task.execution_info.exit_code == 3 and task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "FailureExitCode"
    assert names(blobs, "failures", "") == {"failure.txt", "always.txt"}


def _upload_failure(task: Any, exit_code: int = 0) -> Any:
    info = task.execution_info
    assert info.result == "failure" and info.exit_code == exit_code
    assert info.failure_info.category == "usererror"
    assert "sig=" not in info.failure_info.message
    return info.failure_info


def test_a_read_only_sas_fails_the_upload(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    task = run_task(client, "read-only", WRITER.format(code=0),
                    [output("a.txt", container_sas(azurite, "readonly", "rl"), "a.txt")])
    assert _upload_failure(task).code == "FileUploadMiscError"
    assert names(blobs, "readonly", "") == set()
    errors = b"".join(client.download_task_file(JOB, "read-only", "fileuploaderr.txt"))
    assert b"FileUploadMiscError" in errors and b"sig=" not in errors


def test_a_missing_container_fails_the_upload(client: Any, job: str, azurite: Any) -> None:
    task = run_task(client, "no-container", WRITER.format(code=0),
                    [output("a.txt", container_sas(azurite, "absent", "rwl"), "a.txt")])
    assert _upload_failure(task).code == "FileUploadContainerNotFound"


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../../../*", "../../../../etc/*", "/**/*.txt"])
def test_a_pattern_outside_the_task_folder_fails(client: Any, job: str, azurite: Any, blobs: Any,
                                                 pattern: str) -> None:
    task_id = f"outside-{abs(hash(pattern)) % 10_000}"
    task = run_task(client, task_id, WRITER.format(code=0),
                    [output(pattern, container_sas(azurite, "outputs", "rwl"), f"escape-{task_id}")])
    assert _upload_failure(task).code == "FileUploadMiscError"
    assert names(blobs, "outputs", f"escape-{task_id}") == set()


def test_only_what_the_task_user_can_read_is_uploaded(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    command = "/bin/sh -c 'echo secret > secret.txt && chmod 000 secret.txt'"
    task = run_task(client, "unreadable", command,
                    [output("secret.txt", container_sas(azurite, "outputs", "rwl"), "secret.txt")])
    failure = _upload_failure(task)
    assert failure.code == "FileUploadMiscError" and "Permission denied" in failure.message
    assert names(blobs, "outputs", "secret") == set()


@pytest.mark.parametrize("output_file", [
    {"filePattern": "a", "destination": {"container": {"containerUrl": "http://x/c"}}},
    {"filePattern": "a", "destination": {"container": {"containerUrl": "http://x/c"}},
     "uploadOptions": {"uploadCondition": "sometimes"}},
    {"filePattern": "a", "destination": {}, "uploadOptions": {"uploadCondition": "taskcompletion"}},
    {"destination": {"container": {"containerUrl": "http://x/c"}}, "uploadOptions": {"uploadCondition": "taskcompletion"}},
    {"filePattern": "a", "destination": {"container": {"containerUrl": "file:///tmp"}},
     "uploadOptions": {"uploadCondition": "taskcompletion"}},
    {"filePattern": "a", "destination": {"container": {"containerUrl": "http://x/c",
                                                       "identityReference": {"resourceId": "/x"}}},
     "uploadOptions": {"uploadCondition": "taskcompletion"}},
])
def test_bad_output_files_are_refused(shoal: Any, job: str, output_file: dict[str, Any]) -> None:
    import json

    from tests.acceptance.rest import call

    body = {"id": "refused", "commandLine": "true", "outputFiles": [output_file]}
    response = call(shoal, "POST", f"/jobs/{JOB}/tasks", body=json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.json()["code"] in ("InvalidPropertyValue", "MissingRequiredProperty", "FeatureNotSupported")


def test_upload_headers_are_hidden_from_api_versions_before_2022_01(shoal: Any, job: str) -> None:
    from tests.acceptance.rest import call

    old = call(shoal, "GET", f"/jobs/{JOB}/tasks/ok", api_version="2021-06-01.14.0").json()
    new = call(shoal, "GET", f"/jobs/{JOB}/tasks/ok", api_version="2022-01-01.15.0").json()
    assert "uploadHeaders" not in old["outputFiles"][5]["destination"]["container"]
    assert new["outputFiles"][5]["destination"]["container"]["uploadHeaders"][0]["value"] == "text/x-shoal"


def test_a_large_file_uploads_in_blocks(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    """Over the SDK's 64 MiB single-PUT size, so the upload is staged in blocks."""
    command = "/bin/sh -c 'head -c 69206016 /dev/urandom > large.bin && sha256sum large.bin'"
    task = run_task(client, "large", command, [output("large.bin", container_sas(azurite, "outputs", "rwl"),
                                                       "large/large.bin")])
    assert task.execution_info.result == "success", task.execution_info.failure_info
    digest = b"".join(client.download_task_file(JOB, "large", "stdout.txt")).split()[0].decode()
    data = blobs.get_container_client("outputs").get_blob_client("large/large.bin").download_blob().readall()
    assert len(data) == 69206016 and hashlib.sha256(data).hexdigest() == digest
