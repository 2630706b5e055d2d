"""The agent writes a task's certificates beneath its folder without following what the task's
user may have left there (agent/certificates.py)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from shoal.agent.certificates import START_TASK, TASK, from_hello, install


def _hello(thumbprint: str = "ab" * 20) -> list:
    return from_hello([
        {"thumbprint": thumbprint, "thumbprintAlgorithm": "sha1", "format": "pfx", "publicData": base64.b64encode(b"der").decode(),
         "pfxData": base64.b64encode(b"pfx-bytes").decode(), "password": "pw", "visibility": ["task"]},
        {"thumbprint": "cd" * 20, "thumbprintAlgorithm": "sha1", "format": "cer",
         "publicData": base64.b64encode(b"cer-der").decode(), "visibility": ["starttask"]},
        # Not a file name Batch could make: skipped.
        {"thumbprint": "../../etc/passwd", "thumbprintAlgorithm": "sha1", "format": "cer", "publicData": "AA=="},
        "not an object",
    ])


def test_visibility_picks_the_files_and_they_are_private(tmp_path: Path) -> None:
    certificates = _hello()
    assert len(certificates) == 2
    assert "pw" not in repr(certificates) and "pfx-bytes" not in repr(certificates)
    task = tmp_path / "task"
    task.mkdir()
    install(task, certificates, TASK, None)
    certs = task / "certs"
    assert sorted(p.name for p in certs.iterdir()) == [f"sha1-{'ab' * 20}.pfx", f"sha1-{'ab' * 20}.pfx.pw"]
    assert (certs / f"sha1-{'ab' * 20}.pfx").read_bytes() == b"pfx-bytes"
    assert (certs / f"sha1-{'ab' * 20}.pfx.pw").read_bytes() == b"pw"
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in certs.iterdir())
    start = tmp_path / "startup"
    start.mkdir()
    install(start, certificates, START_TASK, None)
    assert [p.name for p in (start / "certs").iterdir()] == [f"sha1-{'cd' * 20}.cer"]
    assert (start / "certs" / f"sha1-{'cd' * 20}.cer").read_bytes() == b"cer-der"


def test_links_a_task_left_are_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep")
    task = tmp_path / "task"
    task.mkdir()
    (task / "certs").symlink_to(elsewhere)
    install(task, _hello(), TASK, None)
    assert (task / "certs").is_dir() and not (task / "certs").is_symlink()
    assert list(elsewhere.iterdir()) == []
    # A link in place of a certificate file is removed, not written through.
    (task / "certs" / f"sha1-{'ab' * 20}.pfx").unlink()
    (task / "certs" / f"sha1-{'ab' * 20}.pfx").symlink_to(target)
    install(task, _hello(), TASK, None)
    assert target.read_text() == "keep"
    assert (task / "certs" / f"sha1-{'ab' * 20}.pfx").read_bytes() == b"pfx-bytes"
