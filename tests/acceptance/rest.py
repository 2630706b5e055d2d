"""Raw, signed REST calls for tests that need to send what the SDK never would."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

import httpx

from shoal.sharedkey import sign_request

API_VERSION = "2025-06-01"


def call(shoal: Any, method: str, path: str, *, body: bytes | None = None, params: dict[str, str] | None = None,
         headers: dict[str, str] | None = None, key: str | None = None, account: str | None = None,
         sign: bool = True, api_version: str | None = API_VERSION, token: str | None = None) -> httpx.Response:
    """A raw call; signed with the account key, or with ``token`` as a bearer token instead."""
    query = dict(params or {})
    if api_version is not None:
        query["api-version"] = api_version
    url = f"{shoal.endpoint}{path}" + (f"?{urlencode(query)}" if query else "")
    sent = {"Content-Type": "application/json; odata=minimalmetadata", **(headers or {})}
    if method not in ("GET", "HEAD"):
        sent["Content-Length"] = str(len(body or b""))
    if token is not None:
        sent = {"ocp-date": formatdate(usegmt=True), **sent, "Authorization": f"Bearer {token}"}
    elif sign:
        sent = sign_request(method, url, sent, account or shoal.account, key or shoal.primary_key)
    return httpx.request(method, url, content=body, headers=sent, timeout=30, verify=verifier(shoal))


def verifier(shoal: Any) -> Any:
    """What an https Shoal (`--tls`) is verified with: its own CA."""
    import ssl

    ca_file = getattr(shoal, "ca_file", None)
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def date_header(offset_s: float) -> str:
    import time

    return formatdate(time.time() + offset_s, usegmt=True)


def assert_batch_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == code, body
    assert body["odata.metadata"].endswith("Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element")
    assert body["message"]["lang"] == "en-US"
    assert "RequestId:" in body["message"]["value"]
    return body
