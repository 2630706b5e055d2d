"""Resource files (semantics §5.2) through the official SDK against a real `shoal up` with local
nodes and a real Azurite: container SAS with blobPrefix, blob URLs, file:// (a Shoal extension),
autoStorageContainerName; owners and modes; download failures as pre-processing failures that
never run the command; the start task's resource files; and paths that try to leave the
working directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from azure.batch import models

from tests.acceptance.rest import call
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle
from tests.storage import fixtures
from tests.storage.fixtures import blob_sas, container_sas, upload

# A real Azurite and a `shoal up` linked to it, one each for this module.
azurite, blobs, shoal = fixtures.azurite, fixtures.blobs, fixtures.shoal

POOL = "rf-pool"
JOB = "rf-job"
INPUTS = "inputs"
# The command every failing download would have run: it leaves a marker behind.
MARKER = "/bin/sh -c 'touch ran'"


@pytest.fixture(scope="module")
def client(shoal: Any) -> Any:
    return shoal.client()


@pytest.fixture(scope="module")
def job(client: Any, blobs: Any) -> str:
    upload(blobs, INPUTS, {"data/a.txt": b"alpha", "data/sub/b.txt": b"beta", "other.txt": b"other",
                           "dataset.csv": b"not under data/"})
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=4))
    wait_pool_idle(client, POOL, 1)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return JOB


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user may walk (pytest's own tmp folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="shoal-rf-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def run_task(client: Any, task_id: str, command: str, files: list[Any], **kwargs: Any) -> Any:
    client.create_task(JOB, models.BatchTaskCreateOptions(id=task_id, command_line=command, resource_files=files,
                                                          **kwargs))
    return wait_for(lambda: (t := client.get_task(JOB, task_id)).state == "completed" and t, 60,
                    interval=0.1, message=task_id)


def task_file(client: Any, task_id: str, path: str) -> bytes:
    return b"".join(client.download_task_file(JOB, task_id, path))


def test_sources_download_as_the_task_user(client: Any, job: str, azurite: Any, public_dir: Path) -> None:
    local = public_dir / "local-input.txt"
    local.write_bytes(b"from the node's disk")
    local.chmod(0o644)
    files = [
        models.ResourceFile(storage_container_url=container_sas(azurite, INPUTS, "rl"), blob_prefix="data/",
                            file_path="in"),
        models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "other.txt"), file_path="single/o.txt",
                            file_mode="0640"),
        models.ResourceFile(http_url=local.as_uri(), file_path="local.txt"),
        models.ResourceFile(auto_storage_container_name=INPUTS, blob_prefix="other", file_path="auto"),
    ]
    listing = ("/bin/sh -c 'id -un; stat -c \"%U %a %n\" in/data/a.txt in/data/sub/b.txt single/o.txt local.txt "
               "auto/other.txt; cat in/data/a.txt in/data/sub/b.txt single/o.txt local.txt; echo; ls in'")
    task = run_task(client, "sources", listing, files)
    assert task.execution_info.result == "success", task.execution_info.failure_info
    lines = task_file(client, "sources", "stdout.txt").decode().splitlines()
    user = lines[0]
    assert user != "root"  # a non-admin task-scope user (the default identity)
    stats = [line.split() for line in lines[1:6]]
    assert {owner for owner, _mode, _name in stats} == {user}
    modes = {name: mode for _owner, mode, name in stats}
    assert modes == {"in/data/a.txt": "770", "in/data/sub/b.txt": "770", "single/o.txt": "640",
                     "local.txt": "770", "auto/other.txt": "770"}
    assert lines[6] == "alphabetaotherfrom the node's disk"
    assert lines[7:] == ["data"]  # blobPrefix kept dataset.csv out


def test_the_resource_files_are_shown_back(client: Any, job: str) -> None:
    task = client.get_task(JOB, "sources")
    shown = task.resource_files
    assert shown[0].blob_prefix == "data/" and shown[0].file_path == "in"
    assert shown[1].file_mode == "0640" and shown[3].auto_storage_container_name == INPUTS


def _failed(task: Any) -> Any:
    info = task.execution_info
    assert info.result == "failure" and info.exit_code is None
    assert info.failure_info.category == "usererror"
    return info.failure_info


def _never_ran(client: Any, task_id: str) -> None:
    assert error_of(lambda: client.get_task_file_properties(JOB, task_id, "wd/ran")) == (404, "")


@pytest.mark.parametrize(("task_id", "source", "code"), [
    ("bad-sas", "bad_sas", "BlobAccessDenied"),
    ("missing-blob", "missing_blob", "BlobNotFound"),
    ("unreachable", "unreachable", "BlobDownloadMiscError"),
    ("missing-container", "missing_container", "BlobNotFound"),
    ("unreadable-file", "unreadable_file", "BlobAccessDenied"),
])
def test_a_failed_download_fails_the_task_without_running_it(client: Any, job: str, azurite: Any, task_id: str,
                                                             source: str, code: str) -> None:
    good = container_sas(azurite, INPUTS, "rl")
    urls = {
        "bad_sas": models.ResourceFile(storage_container_url=good.replace("sig=", "sig=AAAA"), file_path="x"),
        "missing_blob": models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "nope.txt"), file_path="x"),
        "unreachable": models.ResourceFile(http_url="http://127.0.0.1:9/unreachable.txt", file_path="x"),
        "missing_container": models.ResourceFile(storage_container_url=container_sas(azurite, "absent", "rl")),
        # /etc/shadow: root's; the task's user cannot read it, so neither can its download.
        "unreadable_file": models.ResourceFile(http_url="file:///etc/shadow", file_path="shadow"),
    }
    task = run_task(client, task_id, MARKER, [urls[source]])
    failure = _failed(task)
    assert failure.code == code, failure.message
    assert "sig=" not in failure.message  # the SAS never shows
    _never_ran(client, task_id)


def test_a_link_planted_by_an_earlier_attempt_is_not_followed(client: Any, job: str, azurite: Any,
                                                              public_dir: Path) -> None:
    outside = public_dir / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # the task's user could write here itself: only the link is the attack
    files = [models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "other.txt"), file_path="in/o.txt")]
    # Attempt 1 downloads, then swaps `in` for a link out of the folder and fails; attempt 2's
    # download must not write through the link.
    command = f"/bin/sh -c 'rm -rf in && ln -s {outside} in && exit 1'"
    task = run_task(client, "planted-link", command, files,
                    constraints=models.BatchTaskConstraints(max_task_retry_count=1))
    assert task.execution_info.retry_count == 1
    failure = _failed(task)
    assert failure.code == "ResourceDirectoryCreateFailed", failure.message
    assert list(outside.iterdir()) == []


def test_percent_encoded_dots_are_plain_names(client: Any, job: str, azurite: Any) -> None:
    files = [models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "other.txt"), file_path="%2e%2e/o.txt")]
    task = run_task(client, "encoded-dots", "/bin/sh -c 'cat %2e%2e/o.txt'", files)
    assert task.execution_info.result == "success"
    assert task_file(client, "encoded-dots", "stdout.txt") == b"other"


@pytest.mark.parametrize("resource_file", [
    {"httpUrl": "http://x/y", "filePath": "../escape"},
    {"httpUrl": "http://x/y", "filePath": "a/../../escape"},
    {"httpUrl": "http://x/y", "filePath": "a/b/../../../escape"},
    {"httpUrl": "http://x/y", "filePath": "/etc/escape"},
    {"httpUrl": "http://x/y", "filePath": "a\u0000b"},
    {"httpUrl": "http://x/y"},                                   # httpUrl needs filePath
    {"httpUrl": "http://x/y", "filePath": "a", "fileMode": "999"},
    {"httpUrl": "ftp://x/y", "filePath": "a"},
    {"httpUrl": "file://host/etc/passwd", "filePath": "a"},
    {"httpUrl": "http://x/y", "blobPrefix": "p", "filePath": "a"},
    {"httpUrl": "http://x/y", "storageContainerUrl": "http://x/c", "filePath": "a"},
    {"filePath": "a"},
    {"storageContainerUrl": "http://x/c", "filePath": "../up"},
    {"autoStorageContainerName": "Bad_Name"},
    {"httpUrl": "http://x/y", "filePath": "a", "identityReference": {"resourceId": "/x"}},
])
def test_bad_resource_files_are_refused(shoal: Any, job: str, resource_file: dict[str, Any]) -> None:
    response = post(shoal, f"/jobs/{JOB}/tasks", {"id": "refused", "commandLine": "true",
                                                  "resourceFiles": [resource_file]})
    assert response.status_code == 400, response.text
    assert response.json()["code"] in ("InvalidPropertyValue", "MissingRequiredProperty", "FeatureNotSupported")


def test_too_many_resource_files_are_refused(shoal: Any, job: str) -> None:
    files = [{"httpUrl": f"http://127.0.0.1:9/{i}", "filePath": f"f{i}"} for i in range(8000)]
    response = post(shoal, f"/jobs/{JOB}/tasks", {"id": "huge", "commandLine": "true", "resourceFiles": files})
    assert response.status_code == 413 and response.json()["code"] == "RequestEntityTooLarge"


def test_start_task_resource_files(client: Any, job: str, azurite: Any) -> None:
    start = models.BatchStartTask(
        command_line="/bin/sh -c 'cat tool.sh && stat -c %a tool.sh'", wait_for_success=True,
        resource_files=[models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "other.txt"), file_path="tool.sh",
                                            file_mode="0755")])
    client.create_pool(pool_options("rf-start", target_dedicated_nodes=1, start_task=start))
    node = wait_pool_idle(client, "rf-start", 1)[0]
    info = client.get_node("rf-start", node.id).start_task_info
    assert info.result == "success"
    out = b"".join(client.download_node_file("rf-start", node.id, "startup/stdout.txt"))
    assert out == b"other755\n"
    assert client.get_pool("rf-start").start_task.resource_files[0].file_mode == "0755"


def test_a_failed_start_task_download(client: Any, job: str, azurite: Any) -> None:
    start = models.BatchStartTask(
        command_line="/bin/sh -c 'touch ran'", wait_for_success=True,
        resource_files=[models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "absent.sh"), file_path="x")])
    client.create_pool(pool_options("rf-start-bad", target_dedicated_nodes=1, start_task=start))
    node = wait_for(lambda: [n for n in client.list_nodes("rf-start-bad") if n.state == "starttaskfailed"], 30,
                    message="start task failure")[0]
    info = client.get_node("rf-start-bad", node.id).start_task_info
    assert info.result == "failure" and info.failure_info.code == "BlobNotFound"
    assert info.failure_info.category == "usererror"
    assert error_of(lambda: client.get_node_file_properties("rf-start-bad", node.id, "startup/wd/ran")) == (404, "")


def test_no_auto_storage_is_azure_s_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    from shoal.testing.server import running_shoal
    with running_shoal(tmp_path_factory.mktemp("no-auto")) as bare:
        bare.client().create_job(models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p")))
        response = post(bare, "/jobs/j/tasks", {"id": "t", "commandLine": "true",
                                                "resourceFiles": [{"autoStorageContainerName": "inputs"}]})
        assert response.status_code == 400 and response.json()["code"] == "StorageAccountNotFound"




def post(server: Any, path: str, body: Any) -> Any:
    return call(server, "POST", path, body=json.dumps(body).encode())


def test_a_blob_name_that_is_not_a_relative_path_fails(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    upload(blobs, "oddnames", {"/abs.txt": b"a leading slash"})  # Azurite keeps the slash in the name
    files = [models.ResourceFile(storage_container_url=container_sas(azurite, "oddnames", "rl"))]
    failure = _failed(run_task(client, "odd-name", MARKER, files))
    assert failure.code == "ResourceFileCreateFailed", failure.message
    _never_ran(client, "odd-name")


def test_no_sas_signature_reaches_a_log(client: Any, job: str, shoal: Any, azurite: Any) -> None:
    files = [models.ResourceFile(storage_container_url=container_sas(azurite, INPUTS, "rl"), blob_prefix="data/"),
             models.ResourceFile(http_url=blob_sas(azurite, INPUTS, "nope.txt"), file_path="x")]
    run_task(client, "secrets", MARKER, files)
    signatures = {url.split("sig=")[1].split("&")[0] for url in (files[0].storage_container_url, files[1].http_url)}
    logs = [shoal.log_path, *shoal.nodes_dir.glob("*/agent.log")]
    assert len(logs) > 1
    for path in logs:
        text = path.read_text(errors="replace")
        assert not any(sig in text or sig.replace("%2B", "+") in text for sig in signatures), path


def test_a_large_blob_downloads_in_chunks(client: Any, job: str, azurite: Any, blobs: Any) -> None:
    """Over the SDK's 32 MiB single-GET size, so the download is parallel and chunked (it once
    needed a module the task's user could not load)."""
    data = os.urandom(40 * 1024 * 1024)
    upload(blobs, "large", {"large.bin": data})
    files = [models.ResourceFile(http_url=blob_sas(azurite, "large", "large.bin"), file_path="large.bin"),
             models.ResourceFile(storage_container_url=container_sas(azurite, "large", "rl"), file_path="via")]
    task = run_task(client, "large", "/bin/sh -c 'sha256sum large.bin via/large.bin'", files)
    assert task.execution_info.result == "success", task.execution_info.failure_info
    digest = hashlib.sha256(data).hexdigest()
    assert task_file(client, "large", "stdout.txt").decode().split()[::2] == [digest, digest]


def test_terminating_a_task_stops_its_download(client: Any, job: str) -> None:
    """A source that accepts and never answers: the download hangs until the task is ended,
    and then its transfer process goes with it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        files = [models.ResourceFile(http_url=f"http://127.0.0.1:{port}/never", file_path="x")]
        client.create_task(JOB, models.BatchTaskCreateOptions(id="hanging", command_line=MARKER,
                                                              resource_files=files))

        def transfers() -> list[psutil.Process]:
            return [p for p in psutil.process_iter(["cmdline"])
                    if "shoal.agent.transfer" in " ".join(p.info["cmdline"] or [])
                    and any(c.raddr and c.raddr.port == port for c in _connections(p))]

        wait_for(transfers, 20, message="the transfer to connect")
        client.terminate_task(JOB, "hanging")
        wait_for(lambda: not transfers(), 20, message="the transfer to end")
        task = client.get_task(JOB, "hanging")
        assert task.state == "completed" and task.execution_info.failure_info.code == "TaskEnded"
        _never_ran(client, "hanging")
    finally:
        listener.close()


def _connections(process: psutil.Process) -> list[Any]:
    try:
        return list(process.net_connections(kind="tcp"))
    except (psutil.Error, AttributeError):
        return []
