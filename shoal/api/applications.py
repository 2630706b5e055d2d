"""Application routes.

The data plane's two reads, as the API documents shape them and Azure answers them (recorded:
test_batch.pyTestBatchtest_batch_applications[sync].json, batchservice-tests.json):
`GET /applications` and `GET /applications/{applicationId}` with `id`, `versions` (active ones)
and `displayName` when the application has one; 404 `ApplicationNotFound`.

Azure manages applications through its management plane; Shoal manages them through extension
routes under `/shoal/v1/applications` (docs/application-packages.md), signed like every Batch
call and authorized as `Microsoft.Batch/batchAccounts/applications/…` and
`…/applications/versions/…` (shoal/api/authorization.py):

    PUT    /shoal/v1/applications/{id}                    {displayName?, allowUpdates?, defaultVersion?}
    PATCH  /shoal/v1/applications/{id}                    the same, only what is given
    GET    /shoal/v1/applications[/{id}]
    DELETE /shoal/v1/applications/{id}
    PUT    /shoal/v1/applications/{id}/versions/{version}  body: the zip (application/zip)
    GET    /shoal/v1/applications/{id}/versions
    DELETE /shoal/v1/applications/{id}/versions/{version}
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import zipfile
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import Response

from shoal import clock, config, storage
from shoal.api import listing
from shoal.api.http import body_too_large, empty_response, json_response, read_json
from shoal.errors import BatchError
from shoal.service import applications as app_service
from shoal.service.context import Context

log = logging.getLogger(__name__)

APPLICATION_TYPE = "getapplicationsummaryresponse/@Element"
LIST_TYPE = "listapplicationsummariesresponses"
# At most two uploads at once per server: each holds a temporary file of up to MAX_PACKAGE_BYTES.
_uploading = asyncio.Semaphore(2)
_ZIP_READ_CHUNK = 1024 * 1024


def summary(record: app_service.Application) -> dict[str, Any]:
    """ApplicationSummary; `displayName` only when set, as the recordings show."""
    out: dict[str, Any] = {"id": record.row.id, "versions": record.active_versions}
    if record.row.display_name:
        out["displayName"] = record.row.display_name
    return out


# Both reads return "only Applications and versions that are available for use on Compute Nodes"
# (the operations' description): an application without an active version is not listed, and
# reads as not found.

async def list_applications(request: Request, ctx: Context) -> Response:
    items = [summary(record) for record in app_service.list_all(ctx) if record.active_versions]
    return listing.respond(request, items, LIST_TYPE, "application")


async def get_application(request: Request, ctx: Context) -> Response:
    record = app_service.get(ctx, request.path_params["application_id"])
    if not record.active_versions:
        raise app_service.not_found()
    return listing.single(request, summary(record), APPLICATION_TYPE, None, "application")


ROUTES = [
    ("/applications", ["GET"], list_applications),
    ("/applications/{application_id}", ["GET"], get_application),
]


# ---- management (Shoal's extension) ----------------------------------------------------------

def _package(package: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"version": package.version, "state": package.state, "format": package.format}
    if package.last_activation_time is not None:
        out["lastActivationTime"] = clock.iso(package.last_activation_time)
    if package.size_bytes is not None:
        out["sizeBytes"] = package.size_bytes
    return out


def _application(record: app_service.Application) -> dict[str, Any]:
    row = record.row
    return {"id": row.id, "displayName": row.display_name, "allowUpdates": bool(row.allow_updates),
            "defaultVersion": row.default_version, "eTag": row.etag,
            "lastModified": clock.iso(row.last_modified), "packages": [_package(p) for p in record.packages]}


async def put_application(request: Request, ctx: Context) -> Response:
    body, _ = await read_json(request, optional=True)
    app_id = request.path_params["application_id"]
    created = await request.state.runner.write(app_service.create, ctx, app_id, body)
    record = await request.state.runner.read(app_service.get, ctx, app_id)
    return json_response(request, _application(record), status=201 if created else 200)


async def patch_application(request: Request, ctx: Context) -> Response:
    body, _ = await read_json(request)
    app_id = request.path_params["application_id"]
    await request.state.runner.write(app_service.update_settings, ctx, app_id, body)
    record = await request.state.runner.read(app_service.get, ctx, app_id)
    return json_response(request, _application(record))


async def show_application(request: Request, ctx: Context) -> Response:
    record = await request.state.runner.read(app_service.get, ctx, request.path_params["application_id"])
    return json_response(request, _application(record))


async def list_managed_applications(request: Request, ctx: Context) -> Response:
    records = await request.state.runner.read(app_service.list_all, ctx)
    return json_response(request, {"value": [_application(record) for record in records]})


async def delete_application(request: Request, ctx: Context) -> Response:
    blobs = await request.state.runner.write(app_service.delete_application, ctx,
                                             request.path_params["application_id"])
    await _remove_blobs(blobs)
    return empty_response(request, 200)


async def list_packages(request: Request, ctx: Context) -> Response:
    record = await request.state.runner.read(app_service.get, ctx, request.path_params["application_id"])
    return json_response(request, {"value": [_package(p) for p in record.packages]})


async def delete_package(request: Request, ctx: Context) -> Response:
    blob = await request.state.runner.write(app_service.delete_package, ctx, request.path_params["application_id"],
                                            request.path_params["version"])
    await _remove_blobs([blob])
    return empty_response(request, 200)


async def put_package(request: Request, ctx: Context) -> Response:
    """Store a zip as the version's package and make it active (Azure's create, upload to the
    storageUrl and activate, in one call)."""
    app_id, version = request.path_params["application_id"], request.path_params["version"]
    upload = await request.state.runner.write(app_service.begin_package, ctx, app_id, version)
    connection = config.auto_storage_connection_string()
    assert connection is not None  # begin_package refuses an account without linked storage
    async with _uploading:
        with tempfile.TemporaryFile() as spool:
            size = await _spool(request, spool)
            await asyncio.to_thread(_check_zip, spool)
            spool.seek(0)
            try:
                await asyncio.to_thread(storage.upload_to_auto_storage, connection, upload.container,
                                        upload.blob, spool)
            except storage.StorageError as exc:
                raise BatchError(f"The package could not be stored in the linked storage account: {exc.message}",
                                 code="StorageUploadFailed", status=502) from exc
    await request.state.runner.write(app_service.activate_package, ctx, app_id, version, upload, size)
    if upload.replaced is not None:
        await _remove_blobs([upload.replaced])
    record = await request.state.runner.read(app_service.get, ctx, app_id)
    package = next(p for p in record.packages if p.version.lower() == version.lower())
    return json_response(request, _package(package), status=201)


async def _spool(request: Request, out: IO[bytes]) -> int:
    """The request body into `out`, abandoned as soon as it passes the package limit."""
    limit = app_service.MAX_PACKAGE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    size = 0
    pending: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        pending.append(chunk)
        if sum(map(len, pending)) >= _ZIP_READ_CHUNK:
            await asyncio.to_thread(out.writelines, pending)
            pending = []
    await asyncio.to_thread(out.writelines, pending)
    if size == 0:
        raise app_service.bad_upload("the request has no body")
    return size


def _check_zip(spool: IO[bytes]) -> None:
    """Refuse what is not a zip at all; what a node could not unpack safely (a bomb, an entry
    leaving its folder) is judged by the node, which fails the task or the boot with it."""
    spool.seek(0)
    try:
        with zipfile.ZipFile(spool) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise app_service.bad_upload(type(exc).__name__) from exc


async def _remove_blobs(blobs: list[tuple[str, str]]) -> None:
    connection = config.auto_storage_connection_string()
    if connection is None:
        return
    for container, blob in blobs:
        try:
            await asyncio.to_thread(storage.delete_from_auto_storage, connection, container, blob)
        except storage.StorageError as exc:
            # The record is gone; a blob left behind costs storage, not correctness.
            log.warning("could not delete an application package blob: %s", exc.message)


_BASE = "/shoal/v1/applications"
EXTENSION_ROUTES = [
    (_BASE, ["GET"], list_managed_applications),
    (_BASE + "/{application_id}", ["PUT"], put_application),
    (_BASE + "/{application_id}", ["PATCH"], patch_application),
    (_BASE + "/{application_id}", ["GET"], show_application),
    (_BASE + "/{application_id}", ["DELETE"], delete_application),
    (_BASE + "/{application_id}/versions", ["GET"], list_packages),
    (_BASE + "/{application_id}/versions/{version}", ["PUT"], put_package),
    (_BASE + "/{application_id}/versions/{version}", ["DELETE"], delete_package),
]
