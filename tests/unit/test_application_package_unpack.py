"""Unpacking an application package on the node (shoal/agent/packages.py): what a client's zip
may not do (leave its folder, plant links, inflate without bound) and the variable names Batch
gives packages on Linux."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from shoal.agent import packages
from shoal.agent.packages import Package, PackageError, env_name, unpack

PACKAGE = Package("blender", "2.7", False, "abc", "http://127.0.0.1/x.zip")


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def test_a_package_unpacks_with_its_folders_and_executable_bits(tmp_path: Path) -> None:
    script = zipfile.ZipInfo("bin/run.sh")
    script.external_attr = (stat.S_IFREG | 0o755) << 16
    archive = _zip(tmp_path / "p.zip", [(script, b"#!/bin/sh\necho hi\n"), ("data/a.txt", b"alpha"), ("top.txt", b"t")])
    unpack(archive, tmp_path / "out", PACKAGE)
    assert (tmp_path / "out/data/a.txt").read_bytes() == b"alpha"
    assert os.stat(tmp_path / "out/bin/run.sh").st_mode & 0o100


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_an_entry_leaving_the_folder_writes_nothing_outside(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(tmp_path / "slip.zip", [("ok.txt", b"fine"), (name, b"pwned")])
    with pytest.raises(PackageError, match="leaves the package folder|absolute path"):
        unpack(archive, work / "out", PACKAGE)
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()
    assert not Path("/etc/evil.txt").exists()


def test_a_symbolic_link_entry_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "link.zip", [_symlink("escape", "/etc"), ("escape/passwd2", b"x")])
    with pytest.raises(PackageError, match="symbolic link"):
        unpack(archive, tmp_path / "out", PACKAGE)
    assert not Path("/etc/passwd2").exists()


def test_a_zip_bomb_stops_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packages, "MAX_UNPACKED_BYTES", 10 * 1024 * 1024)
    archive = _zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * (50 * 1024 * 1024))])
    assert archive.stat().st_size < 200 * 1024
    with pytest.raises(PackageError, match="unpacks to more than"):
        unpack(archive, tmp_path / "out", PACKAGE)


def test_a_bomb_that_lies_about_its_size_is_counted_as_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The headers claim a small file; the bytes inflate past the limit: the count is of what is
    written (zipfile itself stops at the declared size or fails the CRC, either way an error)."""
    monkeypatch.setattr(packages, "MAX_UNPACKED_BYTES", 1024 * 1024)
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.bin", b"\0" * (8 * 1024 * 1024))
    data = bytearray(raw.getvalue())
    # Rewrite the central directory's uncompressed size to 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    with pytest.raises(PackageError):
        unpack(tmp_path / "liar.zip", tmp_path / "out", PACKAGE)


def test_too_many_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packages, "MAX_ENTRIES", 5)
    archive = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(6)])
    with pytest.raises(PackageError, match="more than 5 entries"):
        unpack(archive, tmp_path / "out", PACKAGE)


def test_a_corrupt_zip_is_a_package_error(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(PackageError, match="not a valid zip file"):
        unpack(tmp_path / "junk.zip", tmp_path / "out", PACKAGE)


def test_a_bad_crc_is_a_package_error(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "crc.zip", [("a.txt", b"hello world" * 100)])
    data = bytearray(archive.read_bytes())
    local = data.find(b"PK\x03\x04")
    data[local + 14] ^= 0xFF  # the local header's CRC-32
    central = data.rfind(b"PK\x01\x02")
    data[central + 16] ^= 0xFF  # and the central directory's
    archive.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="not a valid zip file"):
        unpack(archive, tmp_path / "out", PACKAGE)


@pytest.mark.parametrize(("app", "version", "expected"), [
    ("blender", "2.7", "AZ_BATCH_APP_PACKAGE_blender_2_7"),
    ("Agent-linux-x64", "1.1.46.0", "AZ_BATCH_APP_PACKAGE_Agent_linux_x64_1_1_46_0"),
    ("my_app", None, "AZ_BATCH_APP_PACKAGE_my_app"),
])
def test_variable_names_follow_batch_on_linux(app: str, version: str | None, expected: str) -> None:
    assert env_name(app, version) == expected


def test_an_entry_the_control_plane_could_not_resolve_is_its_reason() -> None:
    with pytest.raises(PackageError, match="no default version"):
        packages.parse([{"applicationId": "a", "version": None, "isDefault": True,
                         "problem": "application a has no default version and the reference names none"}])
    with pytest.raises(PackageError, match="not a package this node can install"):
        packages.parse([{"applicationId": "../x", "version": "1", "packageId": "p", "url": "http://h/x"}])
    with pytest.raises(PackageError, match="not a package this node can install"):
        packages.parse([{"applicationId": "a", "version": "1", "packageId": "p", "url": "file:///etc/passwd"}])


def test_a_refused_package_leaves_no_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "slip.zip", [("ok.txt", b"fine"), ("../evil.txt", b"pwned")])
    with pytest.raises(PackageError):
        unpack(archive, tmp_path / "out", PACKAGE)
    assert not (tmp_path / "out").exists()


def test_a_new_agent_sweeps_what_a_killed_install_left(tmp_path: Path) -> None:
    (tmp_path / ".work-abc" / "unpacked").mkdir(parents=True)
    (tmp_path / ".work-abc" / "unpacked").chmod(0o555)
    (tmp_path / "tools#1.0").mkdir()
    packages.sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tools#1.0"]
