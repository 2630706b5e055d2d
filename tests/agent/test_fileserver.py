"""The node file server, served by a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from shoal.agent import fileserver
from shoal.agent.fileserver import FileServer

TOKEN = "node-secret"
AUTH = {"Authorization": f"ShoalNode {TOKEN}"}
TASK = "workitems/j/job-1/t"
OTHER = "workitems/other/job-1/victim"


@pytest.fixture(params=["o_path", "by_name"], autouse=True)
def leaf_opening(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: leaves pinned with O_PATH (Linux), and opened by name (elsewhere)."""
    if request.param == "by_name":
        monkeypatch.setattr(fileserver, "_O_PATH", 0)
    elif not fileserver._O_PATH:
        pytest.skip("no O_PATH on this platform")
    return str(request.param)


def make_tree(root: Path) -> None:
    (root / "startup/wd").mkdir(parents=True)
    (root / "startup/stdout.txt").write_bytes(b"0123456789")
    (root / f"{TASK}/wd/sub").mkdir(parents=True)
    (root / f"{TASK}/stdout.txt").write_text("hello\n")
    (root / f"{TASK}/wd/sub/deep.txt").write_text("deep")
    (root / f"{OTHER}/wd").mkdir(parents=True)
    (root / f"{OTHER}/wd/other.txt").write_text("OTHER-JOB")
    (root.parent / "secret.txt").write_text("TOP-SECRET")
    (root.parent / "outside").mkdir()
    (root.parent / "outside/inner.txt").write_text("OUTSIDE-BYTES")


def serve(root: Path, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        server = FileServer(root, TOKEN)
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                await scenario(client)
        finally:
            await server.stop()

    asyncio.run(main())


@dataclass
class RawResponse:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


async def raw_request(client: httpx.AsyncClient, method: str, raw_path: str,
                      params: dict[str, str] | None = None) -> RawResponse:
    """Send ``raw_path`` byte for byte: httpx would remove its dot segments before sending."""
    url = client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    target = raw_path + (f"?{urlencode(params)}" if params else "")
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return RawResponse(int(head.split(b" ", 2)[1]), body)


async def listing(client: httpx.AsyncClient, path: str, **params: str) -> list[dict[str, Any]]:
    """Every entry of a listing, following the agent's page cursor."""
    entries: list[dict[str, Any]] = []
    after = ""
    while True:
        r = await client.get(f"/files/{path}", params={**params, "after": after}, headers=AUTH)
        assert r.status_code == 200, r.text
        page = r.json()
        entries.extend(page["entries"])
        if page["next"] is None:
            return entries
        after = page["next"]


def test_get_file_and_headers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.get("/files/startup/stdout.txt", headers=AUTH)
        assert r.status_code == 200 and r.content == b"0123456789"
        assert r.headers["content-length"] == "10"
        assert r.headers["last-modified"].endswith("GMT")
        assert "x-shoal-creation-time" in r.headers
        assert r.headers["x-shoal-file-mode"].startswith("0o100")
        h = await c.head("/files/startup/stdout.txt", headers=AUTH)
        assert h.status_code == 200 and h.content == b"" and h.headers["content-length"] == "10"
        missing = await c.get("/files/startup/nope.txt", headers=AUTH)
        assert missing.status_code == 404
        # The same file through its task folder as base.
        r = await c.get("/files/stdout.txt", params={"base": TASK}, headers=AUTH)
        assert r.status_code == 200 and r.content == b"hello\n"

    serve(root, scenario)


def test_range_requests(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.get("/files/startup/stdout.txt", headers={**AUTH, "Range": "bytes=2-5"})
        assert r.status_code == 206 and r.content == b"2345"
        assert r.headers["content-range"] == "bytes 2-5/10"
        r = await c.get("/files/startup/stdout.txt", headers={**AUTH, "Range": "bytes=7-"})
        assert r.status_code == 206 and r.content == b"789"
        r = await c.get("/files/startup/stdout.txt", headers={**AUTH, "Range": "bytes=-3"})
        assert r.content == b"789"
        r = await c.get("/files/startup/stdout.txt", headers={**AUTH, "Range": "bytes=50-60"})
        assert r.status_code == 416
        r = await c.get("/files/startup/stdout.txt", headers={**AUTH, "Range": "bytes=0-1,3-4"})
        assert r.status_code == 416

    serve(root, scenario)


def test_directory_listing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.get(f"/files/{TASK}", headers=AUTH)
        assert r.headers["x-shoal-is-directory"] == "true"
        names = {e["name"]: e for e in r.json()["entries"]}
        assert set(names) == {"stdout.txt", "wd"}
        assert names["wd"]["isDirectory"] and not names["stdout.txt"]["isDirectory"]
        assert names["stdout.txt"]["contentLength"] == 6
        assert {"creationTime", "lastModified", "fileMode"} <= names["stdout.txt"].keys()
        recursive = await listing(c, TASK, recursive="true")
        assert [e["name"] for e in recursive] == ["stdout.txt", "wd", "wd/sub", "wd/sub/deep.txt"]
        assert {e["name"] for e in await listing(c, "")} == {"startup", "workitems"}
        assert [e["name"] for e in await listing(c, "", base=TASK)] == ["stdout.txt", "wd"]

    serve(root, scenario)


def test_listing_pages_resume_where_they_stopped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree = root / "tree"
    for top in ("a", "a-b", "b", "c"):
        for sub in ("x", "y"):
            (tree / top / sub).mkdir(parents=True)
            for n in range(3):
                (tree / top / sub / f"f{n}").write_text(top + sub)
    (tree / "z.txt").write_text("z")

    async def scenario(c: httpx.AsyncClient) -> None:
        expected = [str(p.relative_to(tree)) for p in tree.rglob("*")]
        for limit in ("1", "2", "7", "1000"):
            names = [e["name"] for e in await listing(c, "tree", recursive="true", limit=limit)]
            assert sorted(names) == sorted(expected) and len(names) == len(set(names)), limit
        # A directory always comes before what it holds.
        names = [e["name"] for e in await listing(c, "tree", recursive="true", limit="3")]
        assert all(names.index(n.rsplit("/", 1)[0]) < names.index(n) for n in names if "/" in n)
        flat = [e["name"] for e in await listing(c, "tree", limit="2")]
        assert flat == ["a", "a-b", "b", "c", "z.txt"]

    serve(root, scenario)


def test_huge_directory_is_listed_a_page_at_a_time(tmp_path: Path, leaf_opening: str) -> None:
    if leaf_opening != "o_path":
        pytest.skip("listing does not open leaves: one run is enough")
    root = tmp_path / "root"
    big = root / "big"
    big.mkdir(parents=True)
    for n in range(100_000):
        fd = os.open(big / f"file-{n:06d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)

    async def scenario(c: httpx.AsyncClient) -> None:
        started = time.monotonic()
        r = await c.get("/files/big", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 200
        page = r.json()
        # One page, not the whole directory: the answer stays small whatever the folder holds.
        assert len(page["entries"]) == 1000 and page["next"] == "file-000999"
        assert len(r.content) < 400_000
        r = await c.get("/files/big", params={"after": "file-099990"}, headers=AUTH)
        assert [e["name"] for e in r.json()["entries"]] == [f"file-{n:06d}" for n in range(99_991, 100_000)]
        assert r.json()["next"] is None
        assert time.monotonic() - started < 20

    serve(root, scenario)


def test_delete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.delete("/files/startup/stdout.txt", headers=AUTH)
        assert r.status_code == 200 and not (root / "startup/stdout.txt").exists()
        r = await c.delete(f"/files/{TASK}/wd", headers=AUTH)
        assert r.status_code == 409 and (root / f"{TASK}/wd").exists()
        r = await c.delete(f"/files/{TASK}/wd", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 200 and not (root / f"{TASK}/wd").exists()
        r = await c.delete("/files", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 403 and root.exists()
        # The folder a request is confined to cannot be deleted through it either.
        r = await c.delete("/files", params={"recursive": "true", "base": TASK}, headers=AUTH)
        assert r.status_code == 403 and (root / TASK).exists()
        r = await c.delete("/files/stdout.txt", params={"base": TASK}, headers=AUTH)
        assert r.status_code == 200 and not (root / f"{TASK}/stdout.txt").exists()

    serve(root, scenario)


def test_path_traversal_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        for path in (
            "/files/../secret.txt",
            "/files/startup/../../secret.txt",
            "/files/%2E%2E/secret.txt",
            "/files/startup/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/files/startup/..%5c..%5csecret.txt",
            "/files/startup/%00/x",
            "/files/./startup/stdout.txt",
        ):
            r = await raw_request(c, "GET", path)
            assert r.status_code in (403, 404), path
            assert b"TOP-SECRET" not in r.content and b"0123456789" not in r.content
        r = await raw_request(c, "DELETE", "/files/startup/..%2F..%2Fsecret.txt", params={"recursive": "true"})
        assert r.status_code in (403, 404)
        assert (tmp_path / "secret.txt").exists()
        # Confined to a task's folder, the path cannot climb into another job's.
        for method in ("GET", "HEAD", "DELETE"):
            for path in ("/files/../../../other/job-1/victim/wd/other.txt",
                         "/files/..%2F..%2F..%2Fother%2Fjob-1%2Fvictim%2Fwd%2Fother.txt"):
                r = await raw_request(c, method, path, params={"base": TASK, "recursive": "true"})
                assert r.status_code == 403, (method, path)
                assert method == "HEAD" or r.json()["code"] == "PathRefused"
                assert b"OTHER-JOB" not in r.content
        r = await c.get("/files/wd/other.txt", params={"base": "workitems/j/../other/job-1/victim"}, headers=AUTH)
        assert r.status_code == 403 and b"OTHER-JOB" not in r.content
        assert (root / f"{OTHER}/wd/other.txt").read_text() == "OTHER-JOB"

    serve(root, scenario)


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    wd = root / f"{TASK}/wd"
    os.symlink(tmp_path / "secret.txt", wd / "file_link")  # a link as the last component
    os.symlink(tmp_path / "outside", wd / "dir_link")  # a link as a middle component
    os.symlink("/etc", wd / "etc")
    os.symlink(root / OTHER, root / "workitems/j/job-1/swapped")  # a link as a task folder (the base)

    async def scenario(c: httpx.AsyncClient) -> None:
        for path, params in (
            (f"{TASK}/wd/file_link", {}),
            (f"{TASK}/wd/dir_link/inner.txt", {}),
            (f"{TASK}/wd/etc/passwd", {}),
            ("wd/etc/passwd", {"base": TASK}),
            ("wd/other.txt", {"base": "workitems/j/job-1/swapped"}),
            ("workitems/j/job-1/swapped/wd/other.txt", {}),
        ):
            for method in ("GET", "HEAD"):
                r = await c.request(method, f"/files/{path}", params=params, headers=AUTH)
                assert r.status_code in (403, 404), (method, path)
                assert b"root:" not in r.content and b"SECRET" not in r.content and b"OUTSIDE" not in r.content
                assert b"OTHER-JOB" not in r.content
        # Listings show a link as a plain entry and never walk into it.
        entries = {e["name"]: e for e in await listing(c, f"{TASK}/wd", recursive="true")}
        assert {"file_link", "dir_link", "etc", "sub", "sub/deep.txt"} == set(entries)
        assert not entries["dir_link"]["isDirectory"] and entries["dir_link"]["fileMode"].startswith("0o120")
        r = await c.get(f"/files/{TASK}/wd/dir_link", headers=AUTH)
        assert r.status_code == 403 and b"inner.txt" not in r.content
        # Deleting through a link removes nothing behind it; deleting the link removes only the link.
        r = await c.delete(f"/files/{TASK}/wd/dir_link/inner.txt", headers=AUTH)
        assert r.status_code in (403, 404)
        r = await c.delete(f"/files/{TASK}/wd/dir_link", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 200 and not os.path.lexists(wd / "dir_link")
        r = await c.delete("/files/wd", params={"recursive": "true", "base": TASK}, headers=AUTH)
        assert r.status_code == 200 and not wd.exists()
        r = await c.delete("/files/wd", params={"recursive": "true", "base": "workitems/j/job-1/swapped"},
                           headers=AUTH)
        assert r.status_code in (403, 404)
        assert (tmp_path / "outside/inner.txt").read_text() == "OUTSIDE-BYTES"
        assert (tmp_path / "secret.txt").read_text() == "TOP-SECRET"
        assert (root / f"{OTHER}/wd/other.txt").read_text() == "OTHER-JOB"

    serve(root, scenario)


def test_special_files_and_odd_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    odd = root / "odd"
    odd.mkdir()
    os.mkfifo(odd / "pipe")
    (odd / os.fsdecode(b"bad-\xff-name")).write_text("x")
    (odd / "100%.txt").write_text("percent")

    async def scenario(c: httpx.AsyncClient) -> None:
        # A FIFO is neither opened for reading (it would block) nor served.
        r = await asyncio.wait_for(c.get("/files/odd/pipe", headers=AUTH), 5)
        assert r.status_code == 403
        names = {e["name"] for e in await listing(c, "odd")}
        assert names == {"pipe", "bad-\ufffd-name", "100%.txt"}
        r = await c.get("/files/odd/100%25.txt", headers=AUTH)
        assert r.content == b"percent"

    serve(root, scenario)


@pytest.mark.parametrize("path", ["/files/a\\..\\b", "/files/" + "x" * 256, "/files/" + "a/" * 2100])
def test_malformed_paths_refused(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.get(path, headers=AUTH)
        assert r.status_code == 403 and r.json()["code"] == "PathRefused"

    serve(root, scenario)


def test_authentication_required(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        assert (await c.get("/files/startup/stdout.txt")).status_code == 401
        bad = {"Authorization": "ShoalNode wrong"}
        assert (await c.get("/files/startup/stdout.txt", headers=bad)).status_code == 401
        assert (await c.delete("/files/startup/stdout.txt", headers=bad)).status_code == 401
        assert (root / "startup/stdout.txt").exists()

    serve(root, scenario)
