"""Module fixtures shared by the storage acceptance tests: a real Azurite, a `shoal up` whose
account's linked storage is that Azurite, and SAS URLs made with the official storage SDK."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from shoal.testing.server import RunningShoal, running_shoal
from tests.storage.azurite import ACCOUNT, KEY, Azurite, running_azurite


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with running_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="module")
def blobs(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture(scope="module")
def shoal(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("shoal"),
                       extra_args=["--auto-storage", azurite.connection_string]) as running:
        yield running


def container_sas(azurite: Azurite, container: str, permission: str) -> str:
    sas = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                 permission=ContainerSasPermissions.from_string(permission),
                                 expiry=datetime.now(UTC) + timedelta(hours=2))
    return f"{azurite.blob_endpoint}/{container}?{sas}"


def blob_sas(azurite: Azurite, container: str, name: str) -> str:
    sas = generate_blob_sas(ACCOUNT, container, name, account_key=KEY, permission=BlobSasPermissions(read=True),
                            expiry=datetime.now(UTC) + timedelta(hours=2))
    return f"{azurite.blob_endpoint}/{container}/{name}?{sas}"


def upload(blobs: BlobServiceClient, container: str, files: dict[str, bytes]) -> Any:
    client = blobs.get_container_client(container)
    if not client.exists():
        client.create_container()
    for name, data in files.items():
        client.upload_blob(name, data, overwrite=True)
    return client
