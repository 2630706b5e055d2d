"""An unauthenticated client cannot make the server hold a huge request head."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import psutil

from shoal.api.http_protocol import MAX_REQUEST_HEAD_BYTES
from tests.acceptance import rest


def _address(shoal: Any) -> tuple[str, int]:
    parts = urlsplit(shoal.endpoint)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _send_huge_header(shoal: Any, header_bytes: int) -> bytes:
    """Send a request whose one header is ``header_bytes`` long; return what the server answers."""
    with socket.create_connection(_address(shoal), timeout=10) as sock:
        sock.sendall(b"GET /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        sent = 0
        try:
            while sent < header_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection once the bound was passed
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def test_a_huge_header_is_refused_with_431_and_does_not_grow_the_server(shoal: Any) -> None:
    server = psutil.Process(shoal.process.pid)
    before = server.memory_info().rss
    for _ in range(3):
        answer = _send_huge_header(shoal, 64 * 1024 * 1024)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"code":"RequestHeaderTooLarge"' in answer
    grown = server.memory_info().rss - before
    # Three 64 MiB heads: had the server buffered any of them, it would have grown by 64 MiB.
    assert grown < 16 * 1024 * 1024, grown
    assert rest.call(shoal, "GET", "/pools").status_code == 200


def test_a_head_just_under_the_bound_and_a_large_body_are_not_refused(shoal: Any) -> None:
    big_header = "b" * (MAX_REQUEST_HEAD_BYTES // 2)
    response = rest.call(shoal, "GET", "/pools", headers={"X-Filler": big_header})
    assert response.status_code == 200, response.text
    # A body far larger than the head bound travels in the same reads as the head.
    body = b'{"id": "' + b"x" * 500_000 + b'"}'
    response = rest.call(shoal, "POST", "/jobs", body=body)
    assert response.status_code == 400, response.text
