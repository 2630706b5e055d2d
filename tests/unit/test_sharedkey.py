"""Shared Key verification against the signing policy of the real azure-batch SDK."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest

from shoal import sharedkey
from shoal.errors import BatchError
from shoal.sharedkey import SharedKeyError

ACCOUNT = "shoalacct"
KEY = base64.b64encode(b"k" * 64).decode()
WRONG_KEY = base64.b64encode(b"w" * 64).decode()
ENDPOINT = "http://127.0.0.1:8765"


def sdk_signed(request: HttpRequest) -> HttpRequest:
    """Run the SDK's own Shared Key policy over `request`, as BatchClient does before sending."""
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(ACCOUNT, KEY))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return request


def server_view(request: HttpRequest) -> tuple[str, str, list[tuple[str, str]], dict[str, str]]:
    """What the server sees: raw path, decoded query pairs (blanks kept, as Starlette does), headers."""
    parts = urlsplit(request.url)
    return request.method, parts.path, parse_qsl(parts.query, keep_blank_values=True), dict(request.headers)


def keys(*allowed: str):
    return {ACCOUNT: list(allowed)}.get


SDK_REQUESTS = {
    "get-with-query": lambda: HttpRequest(
        "GET",
        f"{ENDPOINT}/pools?api-version=2025-06-01&maxresults=10&%24filter=state%20eq%20%27active%27"
        "&%24select=id,state&timeout=30",
        headers={"client-request-id": "6c1a7e4e-8a55-4a8e-9d1b-123456789abc", "accept": "application/json"},
    ),
    "post-json": lambda: HttpRequest(
        "POST",
        f"{ENDPOINT}/pools?api-version=2025-06-01",
        headers={"content-type": "application/json; odata=minimalmetadata"},
        content='{"id": "pool-1", "vmSize": "Standard_D2s_v3"}',
    ),
    "post-without-body": lambda: HttpRequest(
        "POST", f"{ENDPOINT}/jobs/job-1/disable?api-version=2025-06-01&timeout=30"
    ),
    "delete-without-body": lambda: HttpRequest("DELETE", f"{ENDPOINT}/pools/pool-1?api-version=2025-06-01"),
    "file-path-with-encoded-slash": lambda: HttpRequest(
        "GET",
        f"{ENDPOINT}/jobs/job-1/tasks/task-1/files/wd%2Fout%20put%2Fresult.txt?api-version=2025-06-01",
        headers={"ocp-range": "bytes=0-99"},
    ),
    "if-match": lambda: HttpRequest(
        "PATCH",
        f"{ENDPOINT}/pools/pool-1?api-version=2025-06-01",
        headers={"If-Match": '"0x8DC0FFEE"', "content-type": "application/json"},
        content="{}",
    ),
}


@pytest.mark.parametrize("name", sorted(SDK_REQUESTS))
def test_sdk_signature_is_accepted_with_the_right_key(name):
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS[name]()))
    assert sharedkey.verify(method, path, query, headers, keys(KEY)) == ACCOUNT
    # The secondary key works too: any one of the account's keys may have signed.
    assert sharedkey.verify(method, path, query, headers, keys(WRONG_KEY, KEY)) == ACCOUNT


@pytest.mark.parametrize("name", sorted(SDK_REQUESTS))
def test_sdk_signature_is_refused_with_a_wrong_key(name):
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS[name]()))
    with pytest.raises(SharedKeyError) as caught:
        sharedkey.verify(method, path, query, headers, keys(WRONG_KEY))
    assert caught.value.status == 403


def test_unknown_account_is_refused():
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS["get-with-query"]()))
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path, query, headers, {}.get)


def test_tampered_path_is_refused():
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS["file-path-with-encoded-slash"]()))
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path.replace("task-1", "task-2"), query, headers, keys(KEY))


def test_tampered_query_is_refused():
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS["get-with-query"]()))
    tampered = [(n, "1000" if n == "maxresults" else v) for n, v in query]
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path, tampered, headers, keys(KEY))
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path, [*query, ("$expand", "stats")], headers, keys(KEY))


def test_tampered_method_and_signed_header_are_refused():
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS["if-match"]()))
    with pytest.raises(SharedKeyError):
        sharedkey.verify("PUT", path, query, headers, keys(KEY))
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path, query, {**headers, "If-Match": '"0x1"'}, keys(KEY))


def test_sdk_signs_missing_content_length_as_zero_but_server_accepts_empty_form():
    # The SDK signs "0" for a bodyless POST; a storage-style client signs "" — both must pass.
    request = SDK_REQUESTS["post-without-body"]()
    method, path, query, headers = server_view(sdk_signed(request))
    assert "content-length" not in {h.lower() for h in headers}
    text = sharedkey.string_to_sign(method, path, query, headers, account=ACCOUNT)
    assert text.split("\n")[3] == "0"
    empty_form = text.split("\n")
    empty_form[3] = ""
    storage_signed = {**headers, "Authorization": sharedkey.sign(ACCOUNT, KEY, "\n".join(empty_form))}
    assert sharedkey.verify(method, path, query, storage_signed, keys(KEY)) == ACCOUNT


def test_our_string_to_sign_matches_the_sdk_signature_exactly():
    for build in SDK_REQUESTS.values():
        method, path, query, headers = server_view(sdk_signed(build()))
        text = sharedkey.string_to_sign(method, path, query, headers, account=ACCOUNT)
        assert sharedkey.sign(ACCOUNT, KEY, text) == headers["Authorization"]


def test_legacy_sdk_path_form_with_decoded_slashes_is_accepted():
    method, path, query, headers = server_view(sdk_signed(SDK_REQUESTS["file-path-with-encoded-slash"]()))
    legacy = sharedkey.string_to_sign(method, path.replace("%2F", "/"), query, headers, account=ACCOUNT)
    resigned = {**headers, "Authorization": sharedkey.sign(ACCOUNT, KEY, legacy)}
    assert sharedkey.verify(method, path, query, resigned, keys(KEY)) == ACCOUNT


def test_string_to_sign_layout():
    headers = {
        "Content-Type": "application/json",
        "Content-Length": "2",
        "ocp-date": "Mon, 01 Jan 2024 00:00:00 GMT",
        "OCP-Range": "bytes=0-1",
        "client-request-id": "not-signed",
    }
    query = [("timeout", "30"), ("api-version", "2025-06-01"), ("$filter", "id eq 'a b'"), ("empty", "")]
    text = sharedkey.string_to_sign("post", "/pools/p%2F1", query, headers, account="acct")
    assert text == (
        "POST\n\n\n2\n\napplication/json\n\n\n\n\n\n\n"
        "ocp-date:Mon, 01 Jan 2024 00:00:00 GMT\nocp-range:bytes=0-1\n"
        "/acct/pools/p%2F1\n$filter:id eq 'a b'\napi-version:2025-06-01\ntimeout:30"
    )


def test_repeated_query_parameter_signed_in_either_form():
    headers = {"ocp-date": format_datetime(datetime.now(UTC), usegmt=True)}
    query = [("api-version", "1"), ("tag", "b"), ("tag", "a")]
    sdk_text = sharedkey.string_to_sign("GET", "/pools", query, headers, account=ACCOUNT)
    assert sdk_text.endswith("\napi-version:1\ntag:b")  # the SDK signs only the first value
    storage_text = sdk_text.rsplit("\n", 1)[0] + "\ntag:a,b"
    for text in (sdk_text, storage_text):
        signed = {**headers, "Authorization": sharedkey.sign(ACCOUNT, KEY, text)}
        assert sharedkey.verify("GET", "/pools", query, signed, keys(KEY)) == ACCOUNT
    # The signature checks out, but the server refuses the request before any handler sees
    # two values of which only one was signed (shoal.api.app calls refuse_ambiguity first).
    with pytest.raises(BatchError) as caught:
        sharedkey.refuse_ambiguity(query, headers.items())
    assert (caught.value.status, caught.value.code) == (400, "InvalidQueryParameterValue")


@pytest.mark.parametrize("query", [[("a", "1"), ("A", "2")], [("$filter", "x"), ("$filter", "x")]])
def test_a_query_parameter_given_twice_in_any_case_is_refused(query):
    with pytest.raises(BatchError) as caught:
        sharedkey.refuse_ambiguity(query, [])
    assert caught.value.code == "InvalidQueryParameterValue"


@pytest.mark.parametrize("name", ["ocp-date", "If-Match", "content-type", "Authorization", "x-ms-date", "Date",
                                  "client-ocp-thing"])
def test_a_signed_header_given_twice_is_refused(name):
    with pytest.raises(BatchError) as caught:
        sharedkey.refuse_ambiguity([], [(name, "1"), (name.upper(), "2")])
    assert (caught.value.status, caught.value.code) == (400, "InvalidHeaderValue")


def test_unsigned_headers_and_distinct_parameters_may_repeat_or_coexist():
    sharedkey.refuse_ambiguity([("api-version", "1"), ("maxresults", "5")],
                               [("Accept", "a"), ("accept", "b"), ("ocp-date", "x"), ("Date", "y")])


@pytest.mark.parametrize("date", ["Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
                                  "Mon, 01 Jan 2024 00:00:99999999999999 GMT",
                                  "Fri, 31 Dec 9999 23:59:59 -2359", "Sat, 01 Jan 0001 00:00:00 +2359",
                                  "x" * 10_000, "Wed, 31 Feb 2024 00:00:00 GMT"])
def test_a_date_out_of_any_range_is_an_authentication_failure_not_a_crash(date):
    headers = {"ocp-date": date, "Authorization": f"SharedKey {ACCOUNT}:AAAA"}
    with pytest.raises(SharedKeyError) as caught:
        sharedkey.verify("GET", "/pools", [], headers, keys(KEY))
    assert caught.value.status == 403


def test_a_non_ascii_signature_is_refused_not_a_crash():
    headers = {"ocp-date": format_datetime(datetime.now(UTC), usegmt=True),
               "Authorization": f"SharedKey {ACCOUNT}:sig\u00e9\u00ff"}
    with pytest.raises(SharedKeyError):
        sharedkey.verify("GET", "/pools", [], headers, keys(KEY))


def test_stale_or_missing_date_is_refused():
    request = sdk_signed(
        HttpRequest(
            "GET",
            f"{ENDPOINT}/pools?api-version=2025-06-01",
            headers={"ocp-date": format_datetime(datetime.now(UTC) - timedelta(minutes=16), usegmt=True)},
        )
    )
    method, path, query, headers = server_view(request)
    with pytest.raises(SharedKeyError, match="minutes"):
        sharedkey.verify(method, path, query, headers, keys(KEY))
    # The same request is fine if the server clock agrees with it.
    later = datetime.now(UTC) - timedelta(minutes=10)
    assert sharedkey.verify(method, path, query, headers, keys(KEY), now=later) == ACCOUNT
    del headers["ocp-date"]
    with pytest.raises(SharedKeyError):
        sharedkey.verify(method, path, query, headers, keys(KEY))


@pytest.mark.parametrize("value", [None, "", "Bearer abc", "SharedKey nocolon", "SharedKey :sig"])
def test_malformed_authorization_header_is_401(value):
    headers = {"ocp-date": format_datetime(datetime.now(UTC), usegmt=True)}
    if value is not None:
        headers["Authorization"] = value
    with pytest.raises(SharedKeyError) as caught:
        sharedkey.verify("GET", "/pools", [], headers, keys(KEY))
    assert caught.value.status == 401


def test_sign_request_round_trips_through_verify():
    url = f"{ENDPOINT}/jobs/j%2F1/tasks?api-version=2025-06-01&%24filter=state%20eq%20%27running%27"
    signed = sharedkey.sign_request("DELETE", url, {"client-request-id": "x"}, ACCOUNT, KEY)
    assert signed["client-request-id"] == "x" and "ocp-date" in signed
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    assert sharedkey.verify("DELETE", parts.path, query, signed, keys(KEY)) == ACCOUNT
    with pytest.raises(SharedKeyError):
        sharedkey.verify("DELETE", parts.path, query, signed, keys(WRONG_KEY))


def test_sign_request_matches_the_sdk_policy():
    date = format_datetime(datetime.now(UTC), usegmt=True)
    url = f"{ENDPOINT}/pools?api-version=2025-06-01&maxresults=5"
    ours = sharedkey.sign_request("GET", url, {"ocp-date": date}, ACCOUNT, KEY)
    theirs = sdk_signed(HttpRequest("GET", url, headers={"ocp-date": date}))
    assert ours["Authorization"] == theirs.headers["Authorization"]
