"""Application packages on the node (semantics §5.4): download a package's zip from the
read-only SAS URL the control plane sends, unpack it into
`$AZ_BATCH_NODE_ROOT_DIR/applications/<id>#<version>` once per version, read-only to tasks, and
name it in the environment as Batch does on Linux.

The zip is the client's and so untrusted: an entry may not leave its folder (no absolute path,
no `..`, no symlink, nothing but files and folders), the unpacked bytes and the entries are
counted as they are written (never trusted from the headers), and any failure leaves nothing
behind but what was there before. Everything here blocks; the agent calls it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from shoal import storage

ENV_PREFIX = "AZ_BATCH_APP_PACKAGE_"
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
"""The largest zip a node downloads (the control plane stores none larger)."""
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
"""What one package may unpack to: a few hundred bytes of zip can claim (or inflate to) terabytes."""
MAX_ENTRIES = 100_000
_COPY_CHUNK = 1024 * 1024
# The control plane checks ids and versions; the node checks them again before they name a folder.
_APPLICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_PACKAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_UNSAFE = re.compile(r"[.#-]")


class PackageError(Exception):
    """A package that cannot be installed; the message names the package and why, never a URL's SAS."""


@dataclass(frozen=True)
class Package:
    """One package reference as the control plane resolved it."""

    application_id: str
    version: str
    is_default: bool
    package_id: str
    url: str

    @property
    def folder_name(self) -> str:
        return f"{self.application_id}#{self.version}"


def env_name(application_id: str, version: str | None) -> str:
    """`AZ_BATCH_APP_PACKAGE_<id>_<version>` (or without the version, for the default): Linux
    turns `#`, `.` and `-` into `_`; the id keeps its case (semantics §4.2, S11)."""
    name = application_id if version is None else f"{application_id}#{version}"
    return ENV_PREFIX + _ENV_UNSAFE.sub("_", name)


def parse(entries: Any) -> list[Package]:
    """The packages of a hello or an assignment. PackageError for a reference that did not
    resolve on the control plane (its reason) or an entry no control plane would send."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            raise PackageError("an application package entry is not an object")
        application_id, version = entry.get("applicationId"), entry.get("version")
        label = f"{application_id}" + (f" version {version}" if version else "")
        if entry.get("problem"):
            raise PackageError(f"Application package {label} cannot be installed: {str(entry['problem'])[:500]}.")
        url, package_id = entry.get("url"), entry.get("packageId")
        if not (isinstance(application_id, str) and _APPLICATION_ID.fullmatch(application_id)
                and isinstance(version, str) and _VERSION.fullmatch(version)
                and isinstance(package_id, str) and _PACKAGE_ID.fullmatch(package_id)
                and isinstance(url, str) and url.lower().startswith(("http://", "https://"))):
            raise PackageError(f"Application package {label[:200]} is not a package this node can install.")
        out.append(Package(application_id, version, bool(entry.get("isDefault")), package_id, url))
    return out


def environment(installed: list[tuple[Package, Path]]) -> dict[str, str]:
    """The variables naming each installed package's folder."""
    env: dict[str, str] = {}
    for package, folder in installed:
        env[env_name(package.application_id, package.version)] = str(folder)
        if package.is_default:
            env[env_name(package.application_id, None)] = str(folder)
    return env


def _marker(root: Path, package: Package) -> Path:
    return root / f".{package.folder_name}.installed"


def install(root: Path, package: Package) -> Path:
    """The package's folder under `root` (the node's `applications`), downloading and unpacking
    it unless this very upload (its package id) is already there."""
    folder = root / package.folder_name
    marker = _marker(root, package)
    with contextlib.suppress(OSError):
        if marker.read_text() == package.package_id and folder.is_dir() and not folder.is_symlink():
            return folder
    work = root / f".work-{uuid.uuid4().hex}"
    os.mkdir(work, 0o700)
    try:
        archive_path = work / "package.zip"
        _download(package, archive_path)
        staged = work / "unpacked"
        unpack(archive_path, staged, package)
        _read_only(staged)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        if folder.exists() or folder.is_symlink():
            # An older upload of this version: moved aside at once, deleted after.
            old = work / "replaced"
            os.rename(folder, old)
        os.rename(staged, folder)
        marker.write_text(package.package_id)
        return folder
    finally:
        _remove(work)


def sweep(root: Path) -> None:
    """Remove what an agent killed mid-install left (its `.work-*` folders); only at the start of
    an agent process, when nothing else can be installing."""
    with contextlib.suppress(FileNotFoundError):
        for child in root.iterdir():
            if child.name.startswith(".work-") and child.is_dir() and not child.is_symlink():
                _remove(child)


def _download(package: Package, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            storage.download_url(package.url, cast(IO[bytes], _Capped(out, MAX_DOWNLOAD_BYTES, package)))
        except storage.StorageError as exc:
            raise PackageError(f"Application package {package.application_id} version {package.version} "
                               f"could not be downloaded: {exc.message}") from exc


class _Capped:
    """A writer that refuses more than `limit` bytes."""

    def __init__(self, out: IO[bytes], limit: int, package: Package) -> None:
        self.out, self.limit, self.package, self.size = out, limit, package, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise PackageError(f"Application package {self.package.application_id} version "
                               f"{self.package.version} is larger than {self.limit} bytes.")
        return self.out.write(data)


def _entry_parts(name: str) -> list[str]:
    """An entry's path as folder names beneath the package folder; PackageError when it would
    leave it (absolute, a drive, `..`) or cannot be a name (NUL)."""
    unified = name.replace("\\", "/")
    if "\x00" in unified or unified.startswith("/") or re.match(r"[A-Za-z]:", unified):
        raise PackageError(f"the entry {name[:200]!r} names an absolute path")
    parts = [part for part in unified.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PackageError(f"the entry {name[:200]!r} leaves the package folder")
    return parts


def unpack(archive_path: Path, target: Path, package: Package) -> None:
    """Unpack the zip into `target` (created here), or PackageError with nothing kept."""
    label = f"Application package {package.application_id} version {package.version}"
    os.mkdir(target, 0o700)
    try:
        _unpack_into(archive_path, target, label)
    except BaseException:
        _remove(target)
        raise


def _unpack_into(archive_path: Path, target: Path, label: str) -> None:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ENTRIES:
                raise PackageError(f"it has more than {MAX_ENTRIES} entries")
            declared = sum(info.file_size for info in infos)
            if declared > MAX_UNPACKED_BYTES:
                raise PackageError(f"it unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            written = 0
            for info in infos:
                written = _extract(archive, info, target, written)
    except PackageError as exc:
        raise PackageError(f"{label} is not a package this node can unpack: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
            RuntimeError) as exc:
        # A corrupt archive, a bad CRC, an unsupported compression or an encrypted entry.
        raise PackageError(f"{label} is not a valid zip file ({type(exc).__name__}: {str(exc)[:200]}).") from None
    except OSError as exc:
        # The node's side (a full disk), or two entries of one name.
        raise PackageError(f"{label} could not be unpacked ({exc.strerror or type(exc).__name__}).") from None


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int) -> int:
    parts = _entry_parts(info.filename)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise PackageError(f"the entry {info.filename[:200]!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise PackageError(f"the entry {info.filename[:200]!r} is neither a file nor a folder")
    if not parts:
        return written
    # Every folder on the way is made here (never followed: nothing but files and folders is
    # ever created beneath `target`, so no link can be met).
    parent = target
    for part in parts[:-1]:
        parent = parent / part
        if not parent.is_dir():
            os.mkdir(parent, 0o700)
    path = parent / parts[-1]
    if info.is_dir() or kind == stat.S_IFDIR:
        if not path.is_dir():
            os.mkdir(path, 0o700)
        return written
    executable = bool(mode & 0o111)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, archive.open(info) as source:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > MAX_UNPACKED_BYTES:
                raise PackageError(f"it unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            out.write(chunk)
    if executable:
        os.chmod(path, 0o700)
    return written


def _read_only(top: Path) -> None:
    """Readable (and traversable) by every task user, writable by none: files 0444 (0555 when
    the zip marked them executable), folders 0555."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, 0o555 if os.stat(path).st_mode & 0o100 else 0o444, follow_symlinks=False)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o555, follow_symlinks=False)
    os.chmod(top, 0o555)


def _remove(path: Path) -> None:
    """Delete a work folder, read-only parts included."""
    def writable_then_retry(function: Any, name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    if path.exists():
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=writable_then_retry)  # onexc from Python 3.12 only
