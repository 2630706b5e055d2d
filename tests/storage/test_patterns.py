"""Output-file patterns and confined paths from plain data: a conformance table of pattern →
files matched (with the blob names Batch gives them), on a real folder with links in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal import storage
from shoal.agent import confined, patterns

FILES = ["wd/a.txt", "wd/b.txt", "wd/ab.txt", "wd/.hidden.txt", "wd/x1.dat", "wd/x22.dat", "wd/sub/c.txt",
         "wd/sub/deep/d.txt", "wd/.dot/e.txt", "wd/star*.txt", "stdout.txt", "stderr.txt"]


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.txt", tmp_path / "wd" / "link.txt")
    os.symlink(outside, tmp_path / "wd" / "linkdir")
    return tmp_path


# pattern → {blob name beneath `out` for each file matched}
TABLE = [
    ("*.txt", {"out/a.txt", "out/b.txt", "out/ab.txt", "out/star*.txt"}),
    ("?.txt", {"out/a.txt", "out/b.txt"}),
    ("[ab].txt", {"out/a.txt", "out/b.txt"}),
    ("[!a].txt", {"out/b.txt"}),
    ("[a-b]?.txt", {"out/ab.txt"}),
    ("x?.dat", {"out/x1.dat"}),
    ("x*.dat", {"out/x1.dat", "out/x22.dat"}),
    ("**/*.txt", {"out/a.txt", "out/b.txt", "out/ab.txt", "out/star*.txt", "out/sub/c.txt", "out/sub/deep/d.txt"}),
    ("sub/**/*.txt", {"out/c.txt", "out/deep/d.txt"}),
    ("sub/**", {"out/c.txt", "out/deep/d.txt"}),
    (".*.txt", {"out/.hidden.txt"}),
    (".dot/*", {"out/e.txt"}),
    ("star[*].txt", {"out/star*.txt"}),
    ("../std*.txt", {"out/stdout.txt", "out/stderr.txt"}),
    ("sub/deep/d.txt", {"out"}),           # no wildcard: `path` is the blob's name
    ("link*", set()),                      # a link is not a file to upload
    ("linkdir/*", set()),                  # nor a folder to enter
    ("nothing*", set()),
]


@pytest.mark.parametrize(("pattern", "expected"), TABLE, ids=[p for p, _ in TABLE])
def test_pattern_table(task_dir: Path, pattern: str, expected: set[str]) -> None:
    parsed = patterns.parse(pattern, str(task_dir), {})
    fd = confined.open_dir(str(task_dir))
    try:
        found = {patterns.blob_name(parsed, beneath, "out") for _task, beneath in patterns.matches(fd, parsed)}
    finally:
        os.close(fd)
    assert found == expected


def test_names_without_a_path(task_dir: Path) -> None:
    parsed = patterns.parse("sub/**/*.txt", str(task_dir), {})
    fd = confined.open_dir(str(task_dir))
    try:
        assert {patterns.blob_name(parsed, b, None) for _t, b in patterns.matches(fd, parsed)} == {
            "c.txt", "deep/d.txt"}
    finally:
        os.close(fd)


def test_variables_and_absolute_patterns(task_dir: Path) -> None:
    env = {"AZ_BATCH_TASK_DIR": str(task_dir)}
    assert patterns.parse("$AZ_BATCH_TASK_DIR/wd/*.txt", str(task_dir), env).base == ("wd",)
    assert patterns.parse("${AZ_BATCH_TASK_DIR}/stdout.txt", str(task_dir), env).rest == ("stdout.txt",)


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../../x", "../../../*", "/", "a/../../../*", "",
                                     "a\x00b", "$NOT_SET_ANYWHERE/../../.."])
def test_patterns_outside_the_task_folder_are_refused(task_dir: Path, pattern: str) -> None:
    with pytest.raises(patterns.PatternRefused):
        patterns.parse(pattern, str(task_dir), {})


def test_a_sibling_folder_with_the_same_prefix_is_outside(task_dir: Path) -> None:
    with pytest.raises(patterns.PatternRefused):
        patterns.parse(f"{task_dir}-outside/*", str(task_dir), {})


@pytest.mark.parametrize(("path", "parts"), [("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), ("", []),
                                             ("%2e%2e/x", ["%2e%2e", "x"]), ("a\\..\\b", ["a\\..\\b"])])
def test_components(path: str, parts: list[str]) -> None:
    assert confined.components(path) == parts


@pytest.mark.parametrize("path", ["..", "../x", "a/../b", "a/b/..", "/etc/x", "a\x00b"])
def test_components_refused(path: str) -> None:
    with pytest.raises(confined.PathRefused):
        confined.components(path)


def test_a_file_is_never_created_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "wd").mkdir()
    os.symlink(target, tmp_path / "wd" / "f")
    os.symlink(tmp_path, tmp_path / "wd" / "dir")
    fd = confined.open_dir(str(tmp_path / "wd"))
    try:
        os.close(confined.create_file(fd, "f", 0o600))  # the link is replaced
        with pytest.raises(OSError):
            confined.walk_dirs(fd, ["dir"], create=True)
    finally:
        os.close(fd)
    assert target.read_text() == "keep" and not (tmp_path / "wd" / "f").is_symlink()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://acct.blob.core.windows.net/c/b?sv=1&sig=SECRET", "https://acct.blob.core.windows.net/c/b?…"),
    ("http://user:pw@127.0.0.1:10000/a/c", "http://127.0.0.1:10000/a/c"),
    ("file:///tmp/x", "file:///tmp/x"),
])
def test_redact_keeps_secrets_out(url: str, shown: str) -> None:
    assert storage.redact(url) == shown


@pytest.mark.parametrize("url", ["file://host/etc/passwd", "file:relative", "file:///a?b", "file:///a%00b"])
def test_bad_file_urls(url: str) -> None:
    with pytest.raises(ValueError):
        storage.file_url_path(url)


@pytest.mark.parametrize("pattern", ["**/**/**/**/**/**/**/f", "**/a/**/a/**/a/**/a/**/f"])
def test_many_double_stars_read_each_folder_a_bounded_number_of_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pattern: str) -> None:
    # Found in review: each `**` multiplied the walk by the depth of the tree (7 of them over 16
    # nested folders took 5.5 s), so a 40-character pattern could hold a node core for hours.
    deepest = tmp_path.joinpath("wd", *["a"] * 16)
    deepest.mkdir(parents=True)
    (deepest / "f").write_text("found")
    reads = []
    listing = patterns._entries
    monkeypatch.setattr(patterns, "_entries", lambda fd: reads.append(fd) or listing(fd))
    parsed = patterns.parse(pattern, str(tmp_path), {})
    fd = confined.open_dir(str(tmp_path))
    try:
        found = [task_path for task_path, _beneath in patterns.matches(fd, parsed)]
    finally:
        os.close(fd)
    assert found == [("wd", *["a"] * 16, "f")]
    assert len(reads) <= 17 * len(parsed.rest), len(reads)


@pytest.mark.parametrize("url", ["ftp://h:abc/x", "file://h:99999/x", "http://h:x/"])
def test_redact_survives_a_port_that_is_no_number(url: str) -> None:
    # Found in review: reading the port raised ValueError, a 500 at the API.
    assert storage.redact(url) == "<malformed URL>"


def test_an_http_source_is_written_as_served_never_inflated(tmp_path: Path) -> None:
    # Found in review: httpx decoded `Content-Encoding: gzip, gzip` one network read at a time
    # without a cap, so 334 bytes on the wire became 100 MB in memory at once.
    import gzip
    import http.server
    import io
    import threading

    bomb = gzip.compress(gzip.compress(b"\0" * 10_000_000))

    class Bomb(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip, gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = io.BytesIO()
        storage.download_url(f"http://127.0.0.1:{server.server_address[1]}/x", out)
    finally:
        server.shutdown()
        server.server_close()
    assert out.getvalue() == bomb
