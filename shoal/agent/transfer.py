"""The transfer process: downloads a task's resource files before its command runs and uploads
its output files after it exits. The agent starts it as the task's own user
(``python -m shoal.agent.transfer``, the request as JSON on stdin, the outcome as JSON on
stdout; shoal/agent/taskfiles.py), so what it downloads belongs to that user, a ``file://``
source is read with that user's rights, and an output pattern can upload only what that user
could read. Paths are reached from directory descriptors without following links
(shoal/agent/confined.py), so a link planted in the task folder leads nowhere.

Failure codes are Batch's TaskFailureInformationCodes: BlobNotFound, BlobAccessDenied,
BlobDownloadTimedOut, BlobDownloadMiscError, ResourceDirectoryCreateFailed,
ResourceFileCreateFailed, ResourceFileWriteFailed, DiskFull; FileUploadContainerNotFound and
FileUploadMiscError for uploads. Messages name URLs without their SAS.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO

from shoal import storage
from shoal.agent import confined, patterns

USER_ERROR = "usererror"
DEFAULT_FILE_MODE = 0o770
UPLOAD_LOG = "fileuploadout.txt"
UPLOAD_ERRORS = "fileuploaderr.txt"
_DOWNLOAD_CODES = {storage.NOT_FOUND: "BlobNotFound", storage.DENIED: "BlobAccessDenied",
                   storage.TIMED_OUT: "BlobDownloadTimedOut", storage.OTHER: "BlobDownloadMiscError",
                   storage.CONTAINER_NOT_FOUND: "BlobNotFound"}
_DOWNLOAD_MESSAGES = {
    "BlobNotFound": "The specified blob or file does not exist",
    "BlobAccessDenied": "Access for one of the specified Azure Blob(s) is denied",
    "BlobDownloadTimedOut": "The download of one of the specified Azure Blob(s) timed out",
    "BlobDownloadMiscError": "Miscellaneous error encountered while downloading one of the specified Azure Blob(s)",
}


class TransferFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"category": USER_ERROR, "code": self.code, "message": self.message[:4000]}


# ---- downloads ---------------------------------------------------------------------------------

def download_all(wd_fd: int, resource_files: list[dict[str, Any]]) -> None:
    for item in resource_files:
        _download_one(wd_fd, item)


def _mode_of(item: dict[str, Any]) -> int:
    text = item.get("fileMode")
    return int(text, 8) & 0o777 if isinstance(text, str) and text else DEFAULT_FILE_MODE


def _download_one(wd_fd: int, item: dict[str, Any]) -> None:
    mode = _mode_of(item)
    target = item.get("filePath") or ""
    url = item.get("httpUrl")
    if url:
        parts = _components(target)
        if not parts:
            raise TransferFailed("ResourceFileCreateFailed", "filePath must name a file")
        _fetch_into(wd_fd, parts, mode, lambda out: storage.download_url(url, out))
        return
    container = item.get("storageContainerUrl")
    if not container:
        raise TransferFailed("BlobDownloadMiscError", "The resource file has no source")
    base = _components(target)
    # Listed page by page while downloading: a container of a million blobs is never held whole.
    try:
        for blob in storage.list_blobs(container, item.get("blobPrefix")):
            _download_blob(wd_fd, container, base, blob, mode)
    except storage.StorageError as exc:
        raise _download_failure(exc) from exc


def _download_blob(wd_fd: int, container: str, base: list[str], blob: storage.BlobItem, mode: int) -> None:
    if blob.name.endswith("/"):
        return  # a folder marker (hierarchical namespaces), not a file
    try:
        parts = base + confined.components(blob.name)
    except confined.PathRefused as exc:
        raise TransferFailed("ResourceFileCreateFailed",
                             f"The blob name {blob.name[:200]!r} cannot be a file beneath the working "
                             f"directory: {exc}") from exc
    _fetch_into(wd_fd, parts, mode,
                lambda out, name=blob.name: storage.download_blob(container, name, out))


def _components(path: str) -> list[str]:
    try:
        return confined.components(path)
    except confined.PathRefused as exc:
        raise TransferFailed("ResourceFileCreateFailed", f"filePath {path[:200]!r}: {exc}") from exc


def _download_failure(exc: storage.StorageError) -> TransferFailed:
    code = _DOWNLOAD_CODES.get(exc.kind, "BlobDownloadMiscError")
    return TransferFailed(code, f"{_DOWNLOAD_MESSAGES[code]}: {exc.message}")


def _fetch_into(wd_fd: int, parts: list[str], mode: int, fetch: Any) -> None:
    try:
        dir_fd = confined.walk_dirs(wd_fd, parts[:-1], create=True)
    except OSError as exc:
        raise TransferFailed("ResourceDirectoryCreateFailed",
                             f"The directory for {'/'.join(parts)[:200]!r} cannot be created: {exc.strerror} "
                             "(a link or a file is in the way)") from exc
    try:
        try:
            fd = confined.create_file(dir_fd, parts[-1], 0o600)
        except OSError as exc:
            raise TransferFailed("ResourceFileCreateFailed",
                                 f"The file {'/'.join(parts)[:200]!r} cannot be created: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as out:
            try:
                fetch(out)
                out.flush()
            except storage.StorageError as exc:
                raise _download_failure(exc) from exc
            except OSError as exc:
                code = "DiskFull" if exc.errno == errno.ENOSPC else "ResourceFileWriteFailed"
                raise TransferFailed(code, f"Writing {'/'.join(parts)[:200]!r} failed: {exc.strerror}") from exc
            os.fchmod(out.fileno(), mode)
    finally:
        os.close(dir_fd)


# ---- uploads -----------------------------------------------------------------------------------

def _should_upload(condition: str, exit_code: int | None) -> bool:
    if condition == "tasksuccess":
        return exit_code == 0
    if condition == "taskfailure":
        return exit_code != 0
    return True


def upload_all(task_fd: int, task_dir: str, env: dict[str, str], exit_code: int | None,
               output_files: list[dict[str, Any]]) -> None:
    with _upload_logs(task_fd) as (log, errors):
        try:
            for item in output_files:
                condition = ((item.get("uploadOptions") or {}).get("uploadCondition") or "taskcompletion").lower()
                if _should_upload(condition, exit_code):
                    _upload_one(task_fd, task_dir, env, item, log)
        except TransferFailed as exc:
            errors.write(f"{_now()} {exc.code}: {exc.message}\n")
            raise


@contextmanager
def _upload_logs(task_fd: int) -> Iterator[tuple[Any, Any]]:
    out = os.fdopen(confined.create_file(task_fd, UPLOAD_LOG, 0o640), "w", encoding="utf-8")
    err = os.fdopen(confined.create_file(task_fd, UPLOAD_ERRORS, 0o640), "w", encoding="utf-8")
    with out, err:
        yield out, err


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _upload_one(task_fd: int, task_dir: str, env: dict[str, str], item: dict[str, Any], log: Any) -> None:
    pattern_text = item.get("filePattern") or ""
    container = (item.get("destination") or {}).get("container") or {}
    url = container.get("containerUrl") or ""
    headers = {h["name"]: h.get("value") or "" for h in container.get("uploadHeaders") or [] if h.get("name")}
    try:
        pattern = patterns.parse(pattern_text, task_dir, env)
        found = list(patterns.matches(task_fd, pattern))
    except patterns.PatternRefused as exc:
        raise TransferFailed("FileUploadMiscError", f"filePattern {pattern_text[:200]!r}: {exc}") from exc
    for beneath_task, beneath_base in found:
        name = patterns.blob_name(pattern, beneath_base, container.get("path"))
        try:
            fd = confined.open_file(task_fd, beneath_task)
        except OSError as exc:
            raise TransferFailed("FileUploadMiscError",
                                 f"Cannot read {'/'.join(beneath_task)[:200]!r}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as data:
            _upload_file(url, name, data, headers)
        log.write(f"{_now()} uploaded {'/'.join(beneath_task)} to {storage.redact(url)} as {name}\n")


def _upload_file(url: str, name: str, data: BinaryIO, headers: dict[str, str]) -> None:
    if not stat.S_ISREG(os.fstat(data.fileno()).st_mode):
        return
    try:
        storage.upload(url, name, data, headers)
    except storage.StorageError as exc:
        code = "FileUploadContainerNotFound" if exc.kind == storage.CONTAINER_NOT_FOUND else "FileUploadMiscError"
        raise TransferFailed(code, f"Uploading output files failed: {exc.message}") from exc


# ---- the process -------------------------------------------------------------------------------

def handle(request: dict[str, Any], dir_fd: int) -> dict[str, Any]:
    """Carry out one request in the folder ``dir_fd`` (the working directory for a download,
    the task folder for an upload), which the agent opened and passed down."""
    try:
        if request.get("op") == "download":
            download_all(dir_fd, request.get("resourceFiles") or [])
        elif request.get("op") == "upload":
            upload_all(dir_fd, request.get("taskDir") or "", request.get("environment") or {},
                       request.get("exitCode"), request.get("outputFiles") or [])
        else:
            raise TransferFailed("BlobDownloadMiscError", "unknown transfer request")
    except TransferFailed as exc:
        return {"failure": exc.to_json()}
    except OSError as exc:
        code = "ResourceFileCreateFailed" if request.get("op") == "download" else "FileUploadMiscError"
        return {"failure": TransferFailed(code, f"{exc.strerror or type(exc).__name__}").to_json()}
    except Exception as exc:  # a name or a tree no rule foresaw: the task fails, said plainly
        code = "BlobDownloadMiscError" if request.get("op") == "download" else "FileUploadMiscError"
        return {"failure": TransferFailed(code, f"The transfer failed ({type(exc).__name__})").to_json()}
    return {"failure": None}


def _warm_up() -> None:
    """Load, while still root, what the transfer uses later: the interpreter's files may be out
    of the task user's reach (a Python under root's home), and the SDKs import lazily."""
    import encodings.idna  # noqa: F401

    storage.warm_up()


def main(argv: list[str]) -> int:
    """``transfer DIR_FD [UID GID GROUPS]``: drop to the user (when given) after loading
    everything, then read the request from stdin and write the outcome to stdout."""
    dir_fd = int(argv[0])
    _warm_up()
    if len(argv) == 4:
        from shoal.agent.spawner import become

        groups = [int(g) for g in argv[3].split(",") if g]
        become(int(argv[1]), int(argv[2]), groups)
    request = json.loads(sys.stdin.buffer.read())
    outcome = handle(request, dir_fd)
    sys.stdout.write(json.dumps(outcome))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
