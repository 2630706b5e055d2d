"""The agent's side of the agent protocol (docs/agent-protocol.md): register, hello, sync.

Transport failures and 5xx answers are retried with capped exponential backoff for as long as
the caller allows (the control plane may be restarting). A 410 ``NodeGone`` and a 401 are not
retried: they become :class:`NodeGoneError` and :class:`AuthRejectedError`.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from typing import Any

import httpx

API_PREFIX = "/agent/v1"
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 5.0
REQUEST_TIMEOUT_S = 30.0
# The last word of a node that left: not worth waiting long for.
GOODBYE_TIMEOUT_S = 2.0
# A long-poll is held by the server up to pollTimeoutS; give it this much extra before giving up.
LONG_POLL_MARGIN_S = 10.0


class AgentClientError(Exception):
    """Base of the errors the protocol client raises."""


class NodeGoneError(AgentClientError):
    """410: the node has left the pool; the agent must clean up and exit."""


class AuthRejectedError(AgentClientError):
    """401: the control plane does not know this token."""


class UnreachableError(AgentClientError):
    """The control plane could not be reached before the caller's deadline."""


class ProtocolError(AgentClientError):
    """A 4xx answer other than 401/410: retrying the same request will not help."""


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def reset(self) -> None:
        self._next = self.initial_s

    def next_delay(self) -> float:
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self.max_s, self._next * 2)
        return delay


class ControlPlaneClient:
    """HTTP calls to ``/agent/v1`` with the node's credentials."""

    def __init__(self, join_url: str, node_id: str | None = None, token: str | None = None,
                 ca_file: str | None = None) -> None:
        self.base_url = join_url.rstrip("/")
        self.node_id = node_id
        self.token = token
        # Two connections are enough: the long-poll and the call that interrupts it.
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits,
                                       verify=verify)
        self.last_contact = time.monotonic()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"ShoalNode {self.token}"}

    async def _post_once(
        self, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        """One attempt. Raises httpx errors for transport problems, ours for final answers."""
        resp = await self._http.post(API_PREFIX + path, json=body, headers=headers, timeout=timeout)
        if resp.status_code == 410:
            raise NodeGoneError(resp.text)
        if resp.status_code == 401:
            raise AuthRejectedError(resp.text)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise httpx.HTTPStatusError(
                f"server answered {resp.status_code}", request=resp.request, response=resp
            )
        if resp.status_code >= 400:
            raise ProtocolError(f"{path}: {resp.status_code} {resp.text[:500]}")
        self.last_contact = time.monotonic()
        return resp.json() if resp.content else {}

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        give_up_after_s: float | None = None,
    ) -> dict[str, Any]:
        """POST with retries until it succeeds, the answer is final, or ``give_up_after_s`` passes
        without any successful contact (measured from the last one)."""
        backoff = Backoff()
        while True:
            try:
                return await self._post_once(path, body, headers or self._auth(), timeout)
            except (httpx.TransportError, httpx.HTTPStatusError, ValueError) as exc:
                if give_up_after_s is not None and time.monotonic() - self.last_contact > give_up_after_s:
                    raise UnreachableError(f"control plane unreachable: {exc!r}") from exc
                await asyncio.sleep(backoff.next_delay())

    async def register(
        self, join_token: str, pool_id: str, hostname: str, cores: int, memory_mib: int
    ) -> tuple[str, str]:
        body = {"poolId": pool_id, "hostname": hostname, "cores": cores, "memoryMiB": memory_mib}
        answer = await self.post("/register", body, headers={"Authorization": f"ShoalJoin {join_token}"})
        self.node_id, self.token = answer["nodeId"], answer["token"]
        return self.node_id, self.token

    async def goodbye(self, body: dict[str, Any] | None = None) -> None:
        await self._post_once(f"/nodes/{self.node_id}/goodbye", body or {}, self._auth(), GOODBYE_TIMEOUT_S)

    async def hello(self, body: dict[str, Any], give_up_after_s: float | None = None) -> dict[str, Any]:
        return await self.post(f"/nodes/{self.node_id}/hello", body, give_up_after_s=give_up_after_s)

    async def sync_once(self, body: dict[str, Any], poll_timeout_s: float) -> dict[str, Any]:
        """A single sync attempt; the caller owns retry, because each retry rebuilds the body."""
        timeout = poll_timeout_s + LONG_POLL_MARGIN_S if body.get("wait") else REQUEST_TIMEOUT_S
        return await self._post_once(f"/nodes/{self.node_id}/sync", body, self._auth(), timeout)
