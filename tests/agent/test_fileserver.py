"""The node file server, served by a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from shoal.agent.fileserver import FileServer

TOKEN = "node-secret"
AUTH = {"Authorization": f"ShoalNode {TOKEN}"}


def make_tree(root: Path) -> None:
    (root / "startup/wd").mkdir(parents=True)
    (root / "startup/stdout.txt").write_bytes(b"0123456789")
    (root / "workitems/j/job-1/t/wd/sub").mkdir(parents=True)
    (root / "workitems/j/job-1/t/stdout.txt").write_text("hello\n")
    (root / "workitems/j/job-1/t/wd/sub/deep.txt").write_text("deep")
    (root.parent / "secret.txt").write_text("TOP-SECRET")


def serve(root: Path, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        server = FileServer(root, TOKEN)
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                await scenario(client)
        finally:
            await server.stop()

    asyncio.run(main())


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

    serve(root, scenario)


def test_directory_listing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.get("/files/workitems/j/job-1/t", headers=AUTH)
        names = {e["name"]: e for e in r.json()}
        assert set(names) == {"stdout.txt", "wd"}
        assert names["wd"]["isDirectory"] and not names["stdout.txt"]["isDirectory"]
        assert names["stdout.txt"]["contentLength"] == 6
        assert {"creationTime", "lastModified", "fileMode"} <= names["stdout.txt"].keys()
        r = await c.get("/files/workitems/j/job-1/t", params={"recursive": "true"}, headers=AUTH)
        assert [e["name"] for e in r.json()] == ["stdout.txt", "wd", "wd/sub", "wd/sub/deep.txt"]
        r = await c.get("/files", headers=AUTH)
        assert {e["name"] for e in r.json()} == {"startup", "workitems"}

    serve(root, scenario)


def test_delete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.delete("/files/startup/stdout.txt", headers=AUTH)
        assert r.status_code == 200 and not (root / "startup/stdout.txt").exists()
        r = await c.delete("/files/workitems/j/job-1/t/wd", headers=AUTH)
        assert r.status_code == 409 and (root / "workitems/j/job-1/t/wd").exists()
        r = await c.delete("/files/workitems/j/job-1/t/wd", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 200 and not (root / "workitems/j/job-1/t/wd").exists()
        r = await c.delete("/files", params={"recursive": "true"}, headers=AUTH)
        assert r.status_code == 403 and root.exists()

    serve(root, scenario)


def test_path_traversal_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    os.symlink(tmp_path / "secret.txt", root / "shared_link")

    async def scenario(c: httpx.AsyncClient) -> None:
        for path in (
            "/files/../secret.txt",
            "/files/startup/../../secret.txt",
            "/files/%2E%2E/secret.txt",
            "/files/startup/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/files/shared_link",
        ):
            r = await c.get(path, headers=AUTH)
            assert r.status_code in (403, 404), path
            assert b"TOP-SECRET" not in r.content
        r = await c.delete("/files/startup/..%2F..%2Fsecret.txt", headers=AUTH)
        assert r.status_code in (403, 404)
        assert (tmp_path / "secret.txt").exists()

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
