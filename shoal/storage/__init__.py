"""Blob storage and the other places task files come from and go to: the one module that talks
to Azure Blob Storage (through the official azure-storage-blob SDK; Azurite locally), to plain
``http(s)://`` URLs and to ``file://`` sources. Nothing else in Shoal touches blobs.

Every error leaves as a :class:`StorageError` whose ``kind`` says what Batch calls it (the
caller turns it into a failureInfo code) and whose message names the URL without its query
string: a SAS signature never reaches a log, a failureInfo or an error body.

``file://`` is a Shoal extension for a source on the node's own file system. The storage code
opens it with the privileges of the process that calls it; the node agent calls it only from
the transfer process it runs *as the task's user* (shoal/agent/transfer.py), so a task can read
through ``file://`` exactly what its user could read anyway, and nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

import httpx
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

NOT_FOUND = "notfound"
DENIED = "denied"
TIMED_OUT = "timeout"
CONTAINER_NOT_FOUND = "containernotfound"
OTHER = "other"

CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 120.0
CHUNK_BYTES = 4 * 1024 * 1024
AUTO_STORAGE_SAS_LIFETIME = timedelta(days=7)
"""How long the SAS of an `autoStorageContainerName` source lives: past any realistic wait in a
queue plus the download, as Batch's own generated SAS does."""
PACKAGE_SAS_LIFETIME = timedelta(hours=1)
"""How long the read-only SAS a node gets for one application package lives: it is used at
once (at boot, or just before a task), so a leaked URL is worth little for long."""


class StorageError(Exception):
    """A source or destination that could not be read or written; ``kind`` is one of the
    constants above, the message is safe to show (no SAS)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def redact(url: str) -> str:
    """``url`` without its query string (where a SAS signature lives) or user info."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:  # raises for a port that is not a number in range
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<malformed URL>"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + ("?…" if parts.query else "")


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def is_supported_url(url: str) -> bool:
    return _is_http(url) or url.lower().startswith("file://")


def _kind_of_status(status: int | None) -> str:
    if status == 404:
        return NOT_FOUND
    if status in (401, 403):
        return DENIED
    return OTHER


def _translate(exc: BaseException, what: str, url: str) -> StorageError:
    shown = redact(url)
    if isinstance(exc, ResourceNotFoundError):
        code = getattr(exc, "error_code", None)
        kind = CONTAINER_NOT_FOUND if str(code) == "ContainerNotFound" else NOT_FOUND
        return StorageError(kind, f"{what} {shown}: not found ({code or 404})")
    if isinstance(exc, ClientAuthenticationError):
        return StorageError(DENIED, f"{what} {shown}: access denied ({getattr(exc, 'error_code', None) or 403})")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        code = getattr(exc, "error_code", None)
        return StorageError(_kind_of_status(status), f"{what} {shown}: HTTP {status} {code or ''}".rstrip())
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        timed_out = "timed out" in str(exc).lower() or "timeout" in type(exc.__cause__ or exc).__name__.lower()
        return StorageError(TIMED_OUT if timed_out else OTHER,
                            f"{what} {shown}: {'timed out' if timed_out else 'the storage service cannot be reached'}")
    if isinstance(exc, httpx.TimeoutException):
        return StorageError(TIMED_OUT, f"{what} {shown}: timed out")
    if isinstance(exc, httpx.HTTPError):
        return StorageError(OTHER, f"{what} {shown}: {type(exc).__name__}")
    if isinstance(exc, AzureError):
        return StorageError(OTHER, f"{what} {shown}: {type(exc).__name__}")
    return StorageError(OTHER, f"{what} {shown}: {type(exc).__name__}")


@functools.lru_cache(maxsize=16)
def _container(url: str) -> ContainerClient:
    """One client (and so one connection pool) per container URL: a thousand small blobs are a
    thousand requests on a few connections, not a thousand connections. Kept for the life of
    the process, which for a transfer is one task's files."""
    if not _is_http(url):
        raise StorageError(OTHER, f"{redact(url)} is not an http(s) container URL")
    try:
        return ContainerClient.from_container_url(url, connection_timeout=CONNECT_TIMEOUT_S,
                                                  read_timeout=READ_TIMEOUT_S, retry_total=2)
    except (ValueError, AzureError) as exc:
        raise StorageError(OTHER, f"{redact(url)} is not a valid container URL") from exc


@dataclass(frozen=True)
class BlobItem:
    name: str
    size: int


def list_blobs(container_url: str, prefix: str | None) -> Iterator[BlobItem]:
    """The blobs of a container (SAS with read and list), optionally under a name prefix."""
    client = _container(container_url)
    try:
        for blob in client.list_blobs(name_starts_with=prefix or None):
            yield BlobItem(blob.name, int(blob.size or 0))
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, "Listing", container_url) from exc


def download_blob(container_url: str, name: str, out: IO[bytes]) -> None:
    client = _container(container_url)
    try:
        client.download_blob(name, max_concurrency=4).readinto(out)
    except Exception as exc:
        raise _translate(exc, f"Downloading blob {name!r} of", container_url) from exc


def download_url(url: str, out: IO[bytes]) -> None:
    """An ``http(s)://`` URL (a blob URL with its SAS, or any web server) or a ``file://`` path."""
    if url.lower().startswith("file://"):
        _copy_file_url(url, out)
        return
    if not _is_http(url):
        raise StorageError(OTHER, f"{redact(url)}: only http, https and file URLs are supported")
    try:
        # The bytes as served, never decoded: a resource file is the file the URL names, and
        # decoding `Content-Encoding: gzip, gzip` would inflate a few hundred bytes on the wire
        # into gigabytes in memory at once.
        with _http().stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                raise StorageError(_kind_of_status(response.status_code),
                                   f"Downloading {redact(url)}: HTTP {response.status_code}")
            for chunk in response.iter_raw(CHUNK_BYTES):
                out.write(chunk)
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, "Downloading", url) from exc


_http_client: httpx.Client | None = None


def _http() -> httpx.Client:
    global _http_client
    if _http_client is None:
        _http_client = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                    follow_redirects=True)
    return _http_client


_EAGER_MODULES = ("concurrent.futures.thread", "threading", "queue", "uuid", "hmac", "hashlib", "base64",
                  "email.utils", "http.client", "xml.etree.ElementTree", "encodings.idna", "ssl",
                  "requests.adapters", "urllib3.util.retry", "azure.core.pipeline.transport")


def warm_up() -> None:
    """Import and build now what the first transfer would load lazily (a process about to give
    up its privileges calls this while it can still read every file of the interpreter)."""
    for codec in ("utf-8-sig", "idna", "latin-1", "ascii"):
        "".encode(codec)
    for name in _EAGER_MODULES:
        importlib.import_module(name)
    # The SDKs import parts of themselves on first use (chunked and parallel transfers, error
    # types): load every synchronous submodule now.
    import azure.core
    import azure.storage.blob

    for package in (azure.storage.blob, azure.core):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".aio" in module.name or "async" in module.name or "tracing" in module.name:
                continue
            with contextlib.suppress(Exception):
                importlib.import_module(module.name)
    _http()
    ContainerClient.from_container_url("http://127.0.0.1/account/container?sv=x").get_blob_client("blob")


def file_url_path(url: str) -> str:
    """The local path a ``file://`` URL names: no host but ``localhost``, an absolute path,
    percent-decoded, no NUL. ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError("a file URL is file:///absolute/path (no host, query or fragment)")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise ValueError("a file URL names an absolute path without NUL")
    return path


def _copy_file_url(url: str, out: IO[bytes]) -> None:
    try:
        path = file_url_path(url)
    except ValueError as exc:
        raise StorageError(OTHER, f"{redact(url)}: {exc}") from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise StorageError(NOT_FOUND, f"{path}: not found") from exc
    except PermissionError as exc:
        raise StorageError(DENIED, f"{path}: access denied") from exc
    except OSError as exc:
        raise StorageError(OTHER, f"{path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise StorageError(OTHER, f"{path}: not a regular file")
        while chunk := source.read(CHUNK_BYTES):
            out.write(chunk)


def upload(container_url: str, blob_name: str, data: IO[bytes], headers: dict[str, str]) -> None:
    """Put ``data`` as ``blob_name`` (overwriting), with the client's extra headers."""
    client = _container(container_url)
    try:
        client.upload_blob(blob_name, data, overwrite=True, max_concurrency=4, headers=dict(headers))
    except Exception as exc:
        raise _translate(exc, f"Uploading blob {blob_name!r} to", container_url) from exc


# ---- the account's linked ("auto") storage -------------------------------------------------------

def auto_storage_container_url(connection_string: str, container: str, *, now: datetime | None = None) -> str:
    """A read+list SAS URL for ``container`` in the linked storage account the connection string
    names (Azure's `autoStorageContainerName`)."""
    service = BlobServiceClient.from_connection_string(connection_string)
    credential = service.credential
    account_name = getattr(credential, "account_name", None)
    account_key = getattr(credential, "account_key", None)
    if not account_name or not account_key:
        raise StorageError(OTHER, "the auto-storage connection string has no account name and key")
    start = now or datetime.now(UTC)
    sas = generate_container_sas(account_name, container, account_key=account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=start + AUTO_STORAGE_SAS_LIFETIME, start=start - timedelta(minutes=5))
    base = service.url.rstrip("/")
    return f"{base}/{urllib.parse.quote(container)}?{sas}"


def _account_key(service: BlobServiceClient) -> tuple[str, str]:
    credential = service.credential
    account_name = getattr(credential, "account_name", None)
    account_key = getattr(credential, "account_key", None)
    if not account_name or not account_key:
        raise StorageError(OTHER, "the auto-storage connection string has no account name and key")
    return account_name, account_key


def auto_storage_blob_url(connection_string: str, container: str, blob: str, *,
                          lifetime: timedelta = PACKAGE_SAS_LIFETIME, now: datetime | None = None) -> str:
    """A read-only SAS URL of one blob in the linked storage account: what a node downloads an
    application package from, so that no key ever reaches a node."""
    service = BlobServiceClient.from_connection_string(connection_string)
    account_name, account_key = _account_key(service)
    start = now or datetime.now(UTC)
    sas = generate_blob_sas(account_name, container, blob, account_key=account_key,
                            permission=BlobSasPermissions(read=True), expiry=start + lifetime,
                            start=start - timedelta(minutes=5))
    base = service.url.rstrip("/")
    return f"{base}/{urllib.parse.quote(container)}/{urllib.parse.quote(blob)}?{sas}"


def upload_to_auto_storage(connection_string: str, container: str, blob: str, data: IO[bytes]) -> None:
    """Put ``data`` as ``blob`` in the linked storage account (the container is made if missing)."""
    try:
        service = BlobServiceClient.from_connection_string(
            connection_string, connection_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, retry_total=2)
        client = service.get_container_client(container)
        with contextlib.suppress(ResourceExistsError):
            client.create_container()
        client.upload_blob(blob, data, overwrite=True, max_concurrency=4)
    except Exception as exc:
        raise _translate(exc, f"Uploading blob {blob!r} to the linked storage container", container) from exc


def delete_from_auto_storage(connection_string: str, container: str, blob: str) -> None:
    """Remove ``blob`` from the linked storage account; a blob already gone is no error."""
    try:
        service = BlobServiceClient.from_connection_string(
            connection_string, connection_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, retry_total=2)
        with contextlib.suppress(ResourceNotFoundError):
            service.get_blob_client(container, blob).delete_blob()
    except Exception as exc:
        raise _translate(exc, f"Deleting blob {blob!r} of the linked storage container", container) from exc


def check_connection_string(connection_string: str) -> None:
    """ValueError unless the string names an account with a key (what a SAS needs)."""
    try:
        service = BlobServiceClient.from_connection_string(connection_string)
    except (ValueError, AzureError) as exc:
        raise ValueError(f"not a storage connection string: {type(exc).__name__}") from exc
    credential = service.credential
    if not getattr(credential, "account_name", None) or not getattr(credential, "account_key", None):
        raise ValueError("the connection string must carry AccountName and AccountKey")
