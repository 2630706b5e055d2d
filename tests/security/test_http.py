"""The HTTP layer as an attacker meets it: bodies, JSON, dates, Shared Key, $filter, paging and
operations Shoal does not serve, against a real `shoal up`. Each input gets a 4xx, never a 500,
and unauthenticated callers cannot make the server hold memory."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from shoal.api.http import MAX_JSON_DEPTH, dumps
from shoal.api.unserved import OPERATIONS
from shoal.config import MAX_BODY_BYTES
from shoal.sharedkey import sign_request
from tests.acceptance import rest
from tests.acceptance.rest import API_VERSION, assert_batch_error

MIB = 1024 * 1024


def _peak_rss(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM): growth shows even if freed again."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _reset_peak_rss(pid: int) -> int:
    """Reset VmHWM to the current RSS (Linux: "5" to clear_refs), so an earlier test's peak
    cannot hide this one's; returns the peak after the reset."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass  # not permitted: the peak only rises, which can make the check weaker, never wrong
    return _peak_rss(pid)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def _send_large_body(shoal: Any, method: str, path: str, headers: dict[str, str], total: int) -> bytes:
    """Declare and stream `total` body bytes from a thread while reading the answer; return the
    answer's first bytes. A server that answers before reading simply stops taking bytes."""
    parts = urlsplit(shoal.endpoint)
    assert parts.hostname and parts.port
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {total}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock.sendall(head.encode("latin-1"))

    def pump() -> None:
        chunk = b"a" * MIB
        sent = 0
        try:
            while sent < total:
                sock.sendall(chunk[: total - sent])
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed, or stopped reading: both are the point

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    answer = b""
    try:
        while not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError:
        pass
    sock.close()
    sender.join(30)
    return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


# --- bodies ----------------------------------------------------------------------------------

def test_an_unauthenticated_100_mib_agent_body_is_refused_before_it_is_read(shoal: Any) -> None:
    before = _reset_peak_rss(shoal.process.pid)
    answer = _send_large_body(shoal, "POST", "/agent/v1/nodes/x/sync",
                              {"Authorization": "ShoalNode forged", "Content-Type": "application/json"},
                              100 * MIB)
    assert _status(answer) in (401, 410), answer[:300]
    grown = _peak_rss(shoal.process.pid) - before
    assert grown < 16 * MIB, f"the server grew by {grown / MIB:.0f} MiB for an unauthenticated body"
    assert rest.call(shoal, "GET", "/pools").status_code == 200


def test_ten_thousand_made_up_node_ids_leave_no_state_behind(shoal: Any, shoal_mode: str) -> None:
    if shoal_mode != "root":
        pytest.skip("the server's own memory, the same whoever runs it: once, in the root mode, is enough (24 s)")
    def spray(client: httpx.Client, start: int, count: int) -> None:
        for index in range(start, start + count):
            # Long ids: a table keyed by node id would hold 2 KB more per request.
            node_id = f"{index:06d}" + "n" * 2000
            response = client.post(f"/agent/v1/nodes/{node_id}/sync", content=b'{"wait": false}',
                                   headers={"Authorization": "ShoalNode forged"})
            assert response.status_code == 410, response.text

    with httpx.Client(base_url=shoal.endpoint, timeout=30) as client:
        spray(client, 0, 1000)  # warm the allocator up
        before = _rss(shoal.process.pid)
        spray(client, 1000, 10_000)
        grown = _rss(shoal.process.pid) - before
    assert grown < 8 * MIB, f"10,000 made-up node ids grew the server by {grown / MIB:.1f} MiB"


def test_an_authenticated_body_past_the_cap_is_refused_without_reading_it_all(shoal: Any) -> None:
    total = 100 * MIB
    url = f"{shoal.endpoint}/jobs?api-version={API_VERSION}"
    headers = sign_request("POST", url, {"Content-Type": "application/json", "Content-Length": str(total)},
                           shoal.account, shoal.primary_key)
    headers.pop("Content-Length")
    before = _reset_peak_rss(shoal.process.pid)
    answer = _send_large_body(shoal, "POST", f"/jobs?api-version={API_VERSION}", headers, total)
    assert _status(answer) == 413, answer[:300]
    assert b'"code":"RequestBodyTooLarge"' in answer
    assert f'"value":"{MAX_BODY_BYTES}"'.encode() in answer
    grown = _peak_rss(shoal.process.pid) - before
    assert grown < 16 * MIB, f"the server grew by {grown / MIB:.0f} MiB for a body it refuses"


def test_a_body_without_content_length_is_cut_off_at_the_cap(shoal: Any) -> None:
    # Chunked transfer declares no length: the cap must hold while reading.
    def chunks() -> Any:
        for _ in range(MAX_BODY_BYTES // MIB + 2):
            yield b" " * MIB

    url = f"{shoal.endpoint}/jobs?api-version={API_VERSION}"
    headers = sign_request("POST", url, {"Content-Type": "application/json"}, shoal.account, shoal.primary_key)
    try:
        response = httpx.post(url, content=chunks(), headers=headers, timeout=30)
    except httpx.TransportError:
        pytest.fail("the server dropped the connection instead of answering 413")
    assert_batch_error(response, 413, "RequestBodyTooLarge")


def _deep(levels: int) -> str:
    """JSON text of `levels` wrappers {"a": [...]} (written out: json.dumps would recurse)."""
    return '{"a": [' * levels + '"leaf"' + "]}" * levels


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH // 2, 128, 495])
def test_deeply_nested_json_is_refused_and_listing_jobs_keeps_working(shoal: Any, client: Any, levels: int) -> None:
    from tests.helpers import pool_options

    if "deep-pool" not in {p.id for p in client.list_pools()}:
        client.create_pool(pool_options("deep-pool", target_dedicated_nodes=0))
    # `levels` wrappers of two containers each, inside the body: always past the limit.
    head = json.dumps({"id": f"deep-{levels}", "poolInfo": {"poolId": "deep-pool"}})
    body = (head[:-1] + ', "x": ' + _deep(levels) + "}").encode()
    response = rest.call(shoal, "POST", "/jobs", body=body)
    error = assert_batch_error(response, 400, "InvalidRequestBody")
    # Refused for its depth when read, before any property is looked at.
    assert any("nesting" in item["value"] for item in error.get("values", [])), error
    listed = rest.call(shoal, "GET", "/jobs")
    assert listed.status_code == 200, listed.text
    assert f"deep-{levels}" not in {job["id"] for job in listed.json()["value"]}


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"id": "x"', b"[1, 2]", b'"text"', b"\x00"])
def test_bodies_that_are_not_a_json_object_are_400(shoal: Any, body: bytes) -> None:
    assert_batch_error(rest.call(shoal, "POST", "/jobs", body=body), 400, "InvalidRequestBody")


def test_rendering_never_fails_on_stored_data_nested_past_orjson() -> None:
    # Data stored before depth was bounded must still render (orjson stops at 254 levels).
    value: Any = 1
    for _ in range(5000):
        value = [value, {"k": "v"}]
    out = dumps({"value": [value], 7: "non-string key"})
    assert out.startswith(b'{"value":[[[') and out.endswith(b'"7":"non-string key"}')
    assert out.count(b"[") == 5001


# --- dates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("date", [
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
    "Mon, 01 Jan 2024 00:00:99999999999999 GMT",
    "Fri, 31 Dec 9999 23:59:59 -2359",
    "Sat, 01 Jan 0001 00:00:00 +2359",
    "garbage",
])
def test_a_request_date_out_of_any_range_is_403(shoal: Any, date: str) -> None:
    url = f"{shoal.endpoint}/pools?api-version={API_VERSION}"
    headers = sign_request("GET", url, {"ocp-date": date}, shoal.account, shoal.primary_key)
    assert_batch_error(httpx.get(url, headers=headers, timeout=30), 403, "AuthenticationFailed")
    # The same through Date (no ocp-date) and unsigned.
    response = httpx.get(url, headers={"Date": date, "Authorization": f"SharedKey {shoal.account}:AAAA"}, timeout=30)
    assert_batch_error(response, 403, "AuthenticationFailed")


@pytest.mark.parametrize("header", ["If-Modified-Since", "If-Unmodified-Since"])
def test_a_conditional_date_out_of_range_is_ignored_not_a_500(shoal: Any, client: Any, header: str) -> None:
    from tests.helpers import pool_options

    if "dated-pool" not in {p.id for p in client.list_pools()}:
        client.create_pool(pool_options("dated-pool", target_dedicated_nodes=0))
    for date in ("Fri, 31 Dec 9999 23:59:59 -2359", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"):
        response = rest.call(shoal, "GET", "/pools/dated-pool", headers={header: date})
        assert response.status_code == 200, response.text


# --- Shared Key: what is used is what was signed ---------------------------------------------

def test_a_repeated_query_parameter_cannot_smuggle_an_unsigned_value(shoal: Any, client: Any) -> None:
    from tests.helpers import pool_options

    existing = {p.id for p in client.list_pools()}
    for pool_id in ("alpha-pool", "beta-pool"):
        if pool_id not in existing:
            client.create_pool(pool_options(pool_id, target_dedicated_nodes=0))
    # The SDK's canonical form signs the first value; a router reads the last.
    query = (f"api-version={API_VERSION}&$filter={quote(chr(39).join(['id eq ', 'alpha-pool', '']))}"
             f"&$filter={quote(chr(39).join(['id eq ', 'beta-pool', '']))}")
    url = f"{shoal.endpoint}/pools?{query}"
    headers = sign_request("GET", url, {}, shoal.account, shoal.primary_key)
    response = httpx.get(url, headers=headers, timeout=30)
    assert_batch_error(response, 400, "InvalidQueryParameterValue")
    # Names differ only in case: still one parameter twice.
    url = f"{shoal.endpoint}/pools?api-version={API_VERSION}&maxresults=1&MaxResults=2"
    headers = sign_request("GET", url, {}, shoal.account, shoal.primary_key)
    assert_batch_error(httpx.get(url, headers=headers, timeout=30), 400, "InvalidQueryParameterValue")


def test_a_repeated_signed_header_is_refused(shoal: Any, client: Any) -> None:
    from tests.helpers import pool_options

    if "alpha-pool" not in {p.id for p in client.list_pools()}:
        client.create_pool(pool_options("alpha-pool", target_dedicated_nodes=0))
    url = f"{shoal.endpoint}/pools/alpha-pool?api-version={API_VERSION}"
    etag = rest.call(shoal, "GET", "/pools/alpha-pool").headers["ETag"]
    # Signed: If-None-Match "nothing" (the last value, what a dict of headers keeps). Sent first:
    # the real ETag, which a handler reading the first value would act on.
    signed = sign_request("GET", url, {"If-None-Match": '"nothing"'}, shoal.account, shoal.primary_key)
    headers = [("If-None-Match", etag), *signed.items()]
    response = httpx.get(url, headers=headers, timeout=30)
    assert_batch_error(response, 400, "InvalidHeaderValue")


def test_blank_query_parameters_are_not_seen_by_handlers(shoal: Any) -> None:
    # The SDK's form does not sign blank values; they must act as if absent.
    url = f"{shoal.endpoint}/pools?api-version={API_VERSION}&maxresults="
    headers = sign_request("GET", url, {}, shoal.account, shoal.primary_key)
    response = httpx.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


# --- $filter, paging -------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "(" * 200 + "id eq 'a'" + ")" * 200,
    "(" * 5000 + "id eq 'a'" + ")" * 5000,
    "not " * 400 + "id eq 'a'",
    "id eq " + "9" * 5000,
])
def test_a_pathological_filter_is_400(shoal: Any, text: str) -> None:
    for path in ("/pools", "/jobs"):
        response = rest.call(shoal, "GET", path, params={"$filter": text})
        assert_batch_error(response, 400, "InvalidQueryParameterValue")


def test_a_filter_comparing_objects_is_false_not_a_500(shoal: Any, client: Any) -> None:
    from tests.helpers import pool_options

    if "alpha-pool" not in {p.id for p in client.list_pools()}:
        client.create_pool(pool_options("alpha-pool", target_dedicated_nodes=0))
    response = rest.call(shoal, "GET", "/pools", params={"$filter": "virtualMachineConfiguration gt "
                                                                    "virtualMachineConfiguration"})
    assert response.status_code == 200, response.text
    assert response.json()["value"] == []


def _token(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("token", [
    _token("shoal:9223372036854775808"), _token("shoal:" + "9" * 40), _token("shoal:-5"), _token("shoal:1_0"),
    "%%%", "A" * 5000, _token("other:5"),
])
def test_a_skiptoken_out_of_range_or_garbage_is_400(shoal: Any, client: Any, token: str) -> None:
    from azure.batch import models

    from tests.helpers import pool_options

    if "page-job" not in {j.id for j in client.list_jobs()}:
        if "alpha-pool" not in {p.id for p in client.list_pools()}:
            client.create_pool(pool_options("alpha-pool", target_dedicated_nodes=0))
        client.create_job(models.BatchJobCreateOptions(id="page-job",
                                                       pool_info=models.BatchPoolInfo(pool_id="alpha-pool")))
    for path in ("/jobs/page-job/tasks", "/pools", "/jobs"):
        response = rest.call(shoal, "GET", path, params={"$skiptoken": token})
        assert_batch_error(response, 400, "InvalidQueryParameterValue")


@pytest.mark.parametrize("value", ["1_0", " 5", "٣", "99999999999999999999999999", "0", "1001", "-1", "abc"])
def test_maxresults_garbage_is_400(shoal: Any, value: str) -> None:
    assert_batch_error(rest.call(shoal, "GET", "/pools", params={"maxresults": value}), 400,
                       "InvalidQueryParameterValue")


# --- operations Batch has and Shoal does not serve -------------------------------------------

def test_the_unserved_table_is_exactly_the_batch_operations_shoal_lacks() -> None:
    from tests.unit.test_rest_surface import served_operations, spec_operations

    assert {(method, path) for method, path, _name in OPERATIONS} == spec_operations() - served_operations()


@pytest.mark.parametrize(("method", "path", "operation"), [
    ("GET", "/pools/p/nodes/n/extensions", "ComputeNodeExtension_List"),
    ("GET", "/pools/p/nodes/n/rdp", "ComputeNode_GetRemoteDesktop"),
    ("GET", "/pools/p/nodes/n/extensions/e", "ComputeNodeExtension_Get"),
])
def test_an_unserved_batch_operation_is_feature_not_supported_after_auth(
        shoal: Any, method: str, path: str, operation: str) -> None:
    body = b"{}" if method in ("POST", "PATCH") else None
    response = rest.call(shoal, method, path, body=body)
    error = assert_batch_error(response, 400, "FeatureNotSupported")
    assert {"key": "OperationName", "value": operation} in error["values"]
    unsigned = rest.call(shoal, method, path, body=body, sign=False)
    assert_batch_error(unsigned, 401, "AuthenticationFailed")


def test_a_path_batch_does_not_have_is_still_404(shoal: Any) -> None:
    assert_batch_error(rest.call(shoal, "GET", "/no-such-thing"), 404, "InvalidUri")


def test_the_server_logged_no_traceback(shoal: Any) -> None:
    # Runs last in this module: nothing above may have reached the catch-all handler.
    time.sleep(0.2)
    assert "Traceback" not in shoal.log(), shoal.log()[-4000:]
