"""File routes stay inside their folder (issue 6, item 6), against a real `shoal up`.

Two jobs run on the same node. From the attacker job's task file route (and from the node file
route) every encoding of a traversal is sent raw and signed — byte for byte, since an HTTP client
would tidy the dot segments away before they reach the server — on GET, HEAD and DELETE. Each must
answer 4xx, never carry the victim's bytes, and never delete them. Tasks that plant symbolic links
(or swap their working directory for a link to /) cannot read through them. A large file downloads
intact while the server's memory stays flat. All of it runs against Shoal as root and as an
ordinary user.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psutil
import pytest
from azure.batch import models

from shoal.sharedkey import sign_request
from shoal.testing.server import RunningShoal
from tests.acceptance.rest import API_VERSION
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle

# Root only: its `server` fixture already runs every route test against both.
SHOAL_MODES = ("root",)

POOL = "file-routes"
ATTACKER_JOB, ATTACKER = "attacker-job", "attacker"
VICTIM_JOB, VICTIM = "victim-job", "victim"
VICTIM_BYTES = b"VICTIM-SECRET-BYTES"
# From the attacker task's folder (workitems/attacker-job/job-1/attacker) to the victim's file.
CLIMB = "../../../victim-job/job-1/victim/wd/secret.txt"


def encodings(relative: str) -> list[str]:
    """``relative`` (a path with ``../`` in it) in every spelling a traversal has been tried in."""
    parts = relative.split("/")
    return [
        relative,
        relative.replace("..", "%2e%2e"),
        relative.replace("..", "%2E%2E").replace("/", "%2F"),
        relative.replace("../", "..%2f"),
        relative.replace("../", "..%5c"),
        relative.replace("/", "\\"),
        relative.replace(".", "%252e").replace("/", "%252f"),
        relative.replace(".", "%25252e").replace("/", "%25252f"),
        relative.replace("../", "....//"),
        relative.replace("../", ".%2e/"),
        relative.replace("..", "%2e%2e").replace("/", "%00/", 1),
        "./" + "/".join(parts),
        "wd/../" + relative,
    ]


def absolute(server: RunningShoal, victim_file: Path) -> list[str]:
    return ["/" + str(victim_file).lstrip("/"), "%2F" + str(victim_file).lstrip("/").replace("/", "%2F"),
            "/etc/passwd", "%2Fetc%2Fpasswd", "//etc/passwd"]


def raw(server: RunningShoal, method: str, raw_path: str, params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A Shared Key request sent with ``raw_path`` exactly as written (http.client does not touch it)."""
    query = urlencode({**(params or {}), "api-version": API_VERSION})
    url = f"{server.endpoint}{raw_path}?{query}"
    signed = sign_request(method, url, {**(headers or {}), "Content-Length": "0"} if method == "DELETE"
                          else dict(headers or {}), server.account, server.primary_key)
    endpoint = urlsplit(server.endpoint)
    connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    try:
        connection.putrequest(method, f"{raw_path}?{query}", skip_accept_encoding=True)
        for name, value in signed.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def run_task(client: Any, job_id: str, task_id: str, command: str) -> None:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command))
    wait_for(lambda: client.get_task(job_id, task_id).state == "completed", 60, interval=0.1, message=task_id)
    info = client.get_task(job_id, task_id).execution_info
    assert info.exit_code == 0, (task_id, info)


@pytest.fixture(scope="module", params=["root", "nonroot"])
def server(request: pytest.FixtureRequest) -> RunningShoal:
    """The suite runs against Shoal as root (as CI runs it) and as an ordinary user: file routes
    must stay inside their folder whether or not tasks could be given users of their own."""
    return request.getfixturevalue("shoal" if request.param == "root" else "nonroot_shoal")


@pytest.fixture(scope="module")
def client(server: RunningShoal) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def node(client: Any) -> str:
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=4))
    (only,) = wait_pool_idle(client, POOL, 1)
    for job in (ATTACKER_JOB, VICTIM_JOB):
        client.create_job(models.BatchJobCreateOptions(id=job, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    run_task(client, VICTIM_JOB, VICTIM,
             f"/bin/sh -c 'printf {VICTIM_BYTES.decode()} > secret.txt && mkdir keep && echo k > keep/k.txt'")
    run_task(client, ATTACKER_JOB, ATTACKER, "/bin/sh -c 'echo mine > mine.txt'")
    return str(only.id)


def victim_file(server: RunningShoal) -> Path:
    (found,) = list(server.nodes_dir.rglob(f"{VICTIM_JOB}/job-1/{VICTIM}/wd/secret.txt"))
    return found


def assert_victim_intact(client: Any, server: RunningShoal) -> None:
    assert victim_file(server).read_bytes() == VICTIM_BYTES
    assert b"".join(client.download_task_file(VICTIM_JOB, VICTIM, "wd/secret.txt")) == VICTIM_BYTES
    assert b"".join(client.download_task_file(VICTIM_JOB, VICTIM, "wd/keep/k.txt")) == b"k\n"


def test_the_attack_paths_reach_the_victim_when_written_out_plainly(client: Any, node: str) -> None:
    """The control: the folders are where the traversals aim, and the victim is readable its own way."""
    assert b"".join(client.download_task_file(VICTIM_JOB, VICTIM, "wd/secret.txt")) == VICTIM_BYTES
    assert b"".join(client.download_task_file(ATTACKER_JOB, ATTACKER, "wd/mine.txt")) == b"mine\n"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_traversal_from_a_task_route_never_reaches_another_job(client: Any, server: RunningShoal, node: str,
                                                               method: str) -> None:
    route = f"/jobs/{ATTACKER_JOB}/tasks/{ATTACKER}/files/"
    attempts = encodings(CLIMB) + encodings("../../../victim-job/job-1/victim/wd") + absolute(server, victim_file(server))
    for attempt in attempts:
        status, body = raw(server, method, route + attempt, params={"recursive": "true"})
        assert 400 <= status < 500, (method, attempt, status, body[:300])
        assert VICTIM_BYTES not in body and b"root:" not in body, (method, attempt)
        if method != "HEAD":
            assert b'"code"' in body, (method, attempt, body[:300])
    assert_victim_intact(client, server)
    # The attacker's own folder is untouched too: nothing was resolved to it by accident.
    assert b"".join(client.download_task_file(ATTACKER_JOB, ATTACKER, "wd/mine.txt")) == b"mine\n"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_traversal_from_a_node_route_never_leaves_the_node_root(client: Any, server: RunningShoal, node: str,
                                                                method: str) -> None:
    route = f"/pools/{POOL}/nodes/{node}/files/"
    climb_out = "../" * 12 + "etc/passwd"
    for attempt in encodings(climb_out) + encodings("workitems/attacker-job/../" + CLIMB.replace("../", "", 1)) \
            + absolute(server, victim_file(server)):
        status, body = raw(server, method, route + attempt, params={"recursive": "true"})
        assert 400 <= status < 500, (method, attempt, status, body[:300])
        assert b"root:" not in body and VICTIM_BYTES not in body, (method, attempt)
    assert_victim_intact(client, server)
    assert Path("/etc/passwd").exists()


def test_a_bad_path_gets_batchs_error(server: RunningShoal, node: str) -> None:
    route = f"/jobs/{ATTACKER_JOB}/tasks/{ATTACKER}/files/"
    for attempt in ("..%2F..%2Fx", "%252e%252e%252fx", "a%00b", "a\\b", "x" * 5000):
        status, body = raw(server, "GET", route + attempt)
        assert status == 400 and b'"code":"InvalidUri"' in body, (attempt, status, body[:300])


def test_links_planted_by_a_task_are_never_followed(client: Any, server: RunningShoal, node: str) -> None:
    run_task(client, ATTACKER_JOB, "linker",
             "/bin/sh -c 'ln -s /etc etc && ln -s /etc/passwd passwd && mkdir d && ln -s / d/root "
             "&& ln -s ../../../../victim-job/job-1/victim/wd victim'")
    # The link into the other job's folder stays inside the node root: only not following it protects.
    for path in ("wd/victim/secret.txt", "wd/etc/passwd", "wd/passwd", "wd/d/root/etc/passwd", "wd/etc"):
        assert error_of(lambda p=path: b"".join(client.download_task_file(ATTACKER_JOB, "linker", p)))[0] == 404
        assert error_of(lambda p=path: client.get_task_file_properties(ATTACKER_JOB, "linker", p))[0] == 404
    entries = {f.name: f for f in client.list_task_files(ATTACKER_JOB, "linker", recursive=True)}
    assert {"wd/etc", "wd/passwd", "wd/d", "wd/d/root", "wd/victim"} <= set(entries)
    assert not any(name.startswith(("wd/etc/", "wd/d/root/", "wd/victim/")) for name in entries)
    assert not entries["wd/etc"].is_directory
    # Deleting through a link deletes nothing behind it; deleting the link removes just the link.
    assert error_of(lambda: client.delete_task_file(ATTACKER_JOB, "linker", "wd/victim/secret.txt"))[0] == 404
    client.delete_task_file(ATTACKER_JOB, "linker", "wd/victim", recursive=True)
    client.delete_task_file(ATTACKER_JOB, "linker", "wd/d", recursive=True)
    assert_victim_intact(client, server)
    assert Path("/etc/passwd").exists()


def test_a_task_that_swaps_its_working_directory_for_a_link_to_root(client: Any, server: RunningShoal,
                                                                    node: str) -> None:
    run_task(client, ATTACKER_JOB, "swapper", "/bin/sh -c 'cd .. && rm -rf wd && ln -s / wd'")
    for path in ("wd/etc/passwd", "wd/etc", "wd"):
        assert error_of(lambda p=path: b"".join(client.download_task_file(ATTACKER_JOB, "swapper", p)))[0] == 404
    entries = {f.name: f for f in client.list_task_files(ATTACKER_JOB, "swapper", recursive=True)}
    assert "wd" in entries and not entries["wd"].is_directory
    assert not any(name.startswith("wd/") for name in entries)
    node_entries = [f.name for f in client.list_node_files(POOL, node, recursive=True)]
    assert not any(name.endswith("/etc/passwd") or name.endswith("swapper/wd/etc") for name in node_entries)
    # The task's own folder is still removable, and only its link goes with it.
    client.delete_task_file(ATTACKER_JOB, "swapper", "wd", recursive=True)
    assert Path("/etc/passwd").exists()


def _peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.01)


def test_a_large_file_downloads_intact_with_flat_server_memory(client: Any, server: RunningShoal, node: str) -> None:
    size = 256 * 1024 * 1024
    run_task(client, ATTACKER_JOB, "big",
             f"/bin/sh -c 'head -c {size} /dev/urandom > big.bin && sha256sum big.bin > big.sha'")
    expected = b"".join(client.download_task_file(ATTACKER_JOB, "big", "wd/big.sha")).split()[0].decode()
    pid = server.process.pid
    baseline = psutil.Process(pid).memory_info().rss
    stop, peak = threading.Event(), [baseline]
    watcher = threading.Thread(target=_peak_rss, args=(pid, stop, peak), daemon=True)
    watcher.start()
    try:
        digest, received = hashlib.sha256(), 0
        for chunk in client.download_task_file(ATTACKER_JOB, "big", "wd/big.bin"):
            digest.update(chunk)
            received += len(chunk)
    finally:
        stop.set()
        watcher.join()
    assert received == size and digest.hexdigest() == expected
    growth = peak[0] - baseline
    assert growth < 64 * 1024 * 1024, f"server grew {growth / 2**20:.0f} MiB relaying a {size // 2**20} MiB file"
    # A range from the middle, through the raw API, comes back exact with its header.
    status, body = raw(server, "GET", f"/jobs/{ATTACKER_JOB}/tasks/big/files/wd%2Fbig.bin",
                       headers={"ocp-range": "bytes=1000-1999"})
    assert status == 200 and len(body) == 1000
    assert body == file_slice(server, 1000, 1000)


def file_slice(server: RunningShoal, start: int, length: int) -> bytes:
    (path,) = list(server.nodes_dir.rglob(f"{ATTACKER_JOB}/job-1/big/wd/big.bin"))
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


@pytest.mark.parametrize("path", [
    "..", "../x", "a/..", "a/../b", ".", "./a", "a/./b", "a//b", "/etc/passwd", "", "/",
    "%2e%2e/x", "%2E%2E%2Fx", "..%2fx", "a%2f..%2fb", "%252e%252e%252fx", "%25252e%25252e%25252fx",
    "a\\..\\b", "..%5cx", "a\x00b", "a%00b", "a%2500b", "....//x", ".%2e/x", "%2e/x",
    "x" * 4097, "a/" + "y" * 256,
])
def test_client_paths_that_could_leave_the_folder_are_refused(path: str) -> None:
    from shoal.errors import BatchError
    from shoal.nodeclient.files import client_path

    with pytest.raises(BatchError) as refused:
        client_path(path)
    assert (refused.value.status, refused.value.code) == (400, "InvalidUri")


@pytest.mark.parametrize(("path", "parts"), [
    ("stdout.txt", ["stdout.txt"]), ("wd/sub/a.txt", ["wd", "sub", "a.txt"]), ("wd/sub/", ["wd", "sub"]),
    ("....", ["...."]), ("a..b/.c", ["a..b", ".c"]), ("100%.txt", ["100%.txt"]), ("%41", ["%41"]),
    ("x" * 255, ["x" * 255]),
])
def test_client_paths_inside_the_folder_are_kept_as_given(path: str, parts: list[str]) -> None:
    from shoal.nodeclient.files import client_path

    assert client_path(path) == parts
