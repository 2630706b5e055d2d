"""The CLI's REST client: plain httpx, signed with Shared Key like any Batch client."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from shoal.cli.config import AccountInfo
from shoal.errors import BatchError
from shoal.sharedkey import sign_request

API_VERSION = "2025-06-01"


class BatchClient:
    def __init__(self, account: AccountInfo, timeout: float = 30.0) -> None:
        if not account.endpoint:
            raise BatchError("The account has no endpoint: is `shoal up` running?", code="NotRunning")
        self.account = account
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=account.ca_file) if account.ca_file else True
        self.http = httpx.Client(timeout=timeout, verify=verify)

    def request(self, method: str, path: str, params: dict[str, str] | None = None,
                body: Any = None) -> httpx.Response:
        query = {"api-version": API_VERSION, **(params or {})}
        url = f"{self.account.endpoint}{quote(path)}?{urlencode(query)}"
        return self._send(method, url, body)

    def upload(self, path: str, data: bytes, content_type: str) -> httpx.Response:
        """A PUT whose body is ``data`` as is (an application package's zip)."""
        url = f"{self.account.endpoint}{quote(path)}?{urlencode({'api-version': API_VERSION})}"
        return self._send("PUT", url, raw=(data, content_type))

    def _send(self, method: str, url: str, body: Any = None, raw: tuple[bytes, str] | None = None) -> httpx.Response:
        content = b"" if body is None else httpx.Request("POST", "http://x", json=body).content
        headers = {"Content-Type": "application/json; odata=minimalmetadata"} if body is not None else {}
        if raw is not None:
            content, headers = raw[0], {"Content-Type": raw[1]}
        if method not in ("GET", "HEAD"):
            headers["Content-Length"] = str(len(content))
        headers = sign_request(method, url, headers, self.account.name, self.account.primary_key)
        try:
            response = self.http.request(method, url, content=content or None, headers=headers)
        except httpx.ConnectError:
            raise BatchError(f"Shoal is not running at {self.account.endpoint}: start it with `shoal up`.",
                             code="NotRunning") from None
        except httpx.TransportError as exc:
            raise BatchError(f"Shoal at {self.account.endpoint} did not answer ({type(exc).__name__}).",
                             code="NoAnswer") from None
        if response.status_code >= 400:
            try:
                error = response.json()
                message = error.get("message", {}).get("value", "").split("\n")[0]
                values = {str(v.get("key")): str(v.get("value")) for v in error.get("values") or []
                          if isinstance(v, dict)}
                raise BatchError(message, code=error.get("code", "Error"), status=response.status_code,
                                 values=values)
            except ValueError:
                raise BatchError(response.text, status=response.status_code) from None
        return response

    def list(self, path: str, params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        response = self.request("GET", path, params)
        while True:
            payload = response.json()
            yield from payload.get("value", [])
            link = payload.get("odata.nextLink")
            if not link:
                return
            response = self._send("GET", link)

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path).json()
