"""Certificate routes (api-versions up to 2024-02-01.19.0): /certificates and
/certificates(thumbprintAlgorithm=…,thumbprint=…) with its canceldelete.

Status codes as Azure answers them (recorded: test_batch.pyTestBatchtest_batch_certificates[sync].json
and azure-sdk-for-node/batchservice-tests.json): add 201 with Location and DataServiceId in the
`ThumbprintAlgorithm=…,Thumbprint=…` spelling, delete 202, cancel-delete 204. Certificates carry
no ETag. From 2024-07-01.20.0 on the operations are gone, as they are from the API documents.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import listing, render, versions
from shoal.api.http import empty_response
from shoal.service import certificates as certificate_service
from shoal.service.context import Context

CERTIFICATE_TYPE = "certificates/@Element"
LAST_VERSION = "2024-02-01.19.0"
_UNTIL = versions.VERSIONS[versions.VERSIONS.index(LAST_VERSION) + 1]
# Batch names a certificate by an OData key, whose names clients (and Azure's own Location
# header) spell in either case: these routes match without case (`CASE_INSENSITIVE`).
KEY_PATH = "/certificates(thumbprintAlgorithm={algorithm},thumbprint={thumbprint})"
CASE_INSENSITIVE = re.IGNORECASE
# Each add opens its data in a child process (up to seconds of CPU and 512 MiB): at most this
# many at once; further adds wait their turn on the loop, holding no worker thread meanwhile.
MAX_CONCURRENT_ADDS = 2
_adding = asyncio.Semaphore(MAX_CONCURRENT_ADDS)


def _served(request: Request) -> None:
    versions.require_before(request, _UNTIL)


def _key(request: Request) -> tuple[str, str]:
    _served(request)
    return request.path_params["algorithm"], request.path_params["thumbprint"]


async def add_certificate(request: Request, ctx: Context) -> Response:
    _served(request)
    body, _size = await versions.read_json(request, "certificate.create")
    # Opening a pfx takes a child process and up to seconds: in a worker thread, so neither the
    # loop nor the store's writer waits for it; then the write goes to the writer.
    async with _adding:
        certificate = await asyncio.to_thread(certificate_service.parse_add, body)
    await request.state.runner.write(certificate_service.add, ctx, certificate)
    location = (f"{ctx.base_url}/certificates(ThumbprintAlgorithm={certificate['thumbprint_algorithm']},"
                f"Thumbprint={certificate['thumbprint']})")
    return empty_response(request, 201, location=location)


async def list_certificates(request: Request, ctx: Context) -> Response:
    _served(request)
    items = [render.certificate(ctx.base_url, row) for row in certificate_service.list_all(ctx)]
    return listing.respond(request, items, "certificates", "certificate")


async def get_certificate(request: Request, ctx: Context) -> Response:
    algorithm, thumbprint = _key(request)
    row = certificate_service.get(ctx, algorithm, thumbprint)
    return listing.single(request, render.certificate(ctx.base_url, row), CERTIFICATE_TYPE, None, "certificate")


async def delete_certificate(request: Request, ctx: Context) -> Response:
    certificate_service.delete_certificate(ctx, *_key(request))
    return empty_response(request, 202)


async def cancel_certificate_deletion(request: Request, ctx: Context) -> Response:
    certificate_service.cancel_deletion(ctx, *_key(request))
    return empty_response(request, 204)


ROUTES = [
    ("/certificates", ["POST"], add_certificate),
    ("/certificates", ["GET"], list_certificates),
    (KEY_PATH, ["GET"], get_certificate),
    (KEY_PATH, ["DELETE"], delete_certificate),
    (f"{KEY_PATH}/canceldelete", ["POST"], cancel_certificate_deletion),
]
