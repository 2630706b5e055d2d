"""Shared Key and api-version checks, on the wire (wire.md)."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from tests.acceptance.rest import assert_batch_error, call, date_header


def test_both_account_keys_work(shoal):
    assert list(shoal.client(shoal.primary_key).list_pools()) == []
    assert list(shoal.client(shoal.secondary_key).list_pools()) == []


def test_wrong_key_is_refused_with_403(shoal):
    import base64

    wrong = base64.b64encode(b"not the key" * 4).decode()
    with pytest.raises((ClientAuthenticationError, HttpResponseError)) as info:
        list(shoal.client(wrong).list_pools())
    assert info.value.status_code == 403
    body = assert_batch_error(call(shoal, "GET", "/pools", key=wrong), 403, "AuthenticationFailed")
    assert any(v["key"] == "AuthenticationErrorDetail" for v in body["values"])


def test_missing_signature_is_401(shoal):
    assert_batch_error(call(shoal, "GET", "/pools", sign=False), 401, "AuthenticationFailed")


def test_unknown_account_is_refused(shoal):
    response = call(shoal, "GET", "/pools", account="someoneelse")
    assert response.status_code in (401, 403)
    assert response.json()["code"] == "AuthenticationFailed"


@pytest.mark.parametrize("offset_s", [-16 * 60, 16 * 60])
def test_date_skewed_over_15_minutes_is_refused(shoal, offset_s):
    response = call(shoal, "GET", "/pools", headers={"ocp-date": date_header(offset_s)})
    assert_batch_error(response, 403, "AuthenticationFailed")


def test_date_within_15_minutes_is_accepted(shoal):
    assert call(shoal, "GET", "/pools", headers={"ocp-date": date_header(-10 * 60)}).status_code == 200


def test_tampered_path_is_refused(shoal):
    from email.utils import formatdate

    import httpx

    from shoal.sharedkey import sign_request

    signed = sign_request("GET", f"{shoal.endpoint}/pools?api-version=2025-06-01",
                          {"ocp-date": formatdate(usegmt=True)}, shoal.account, shoal.primary_key)
    response = httpx.get(f"{shoal.endpoint}/jobs?api-version=2025-06-01", headers=signed)
    assert_batch_error(response, 403, "AuthenticationFailed")


@pytest.mark.parametrize("version", ["2025-06-01", "2024-02-01.19.0"])
def test_supported_api_versions(shoal, version):
    assert call(shoal, "GET", "/pools", api_version=version).status_code == 200


@pytest.mark.parametrize("version", ["2019-08-01.10.0", "2030-01-01.99.0", "banana"])
def test_unknown_api_version_is_400(shoal, version):
    body = assert_batch_error(call(shoal, "GET", "/pools", api_version=version), 400, "InvalidApiVersion")
    assert {"key": "QueryParameterName", "value": "api-version"} in body["values"]


def test_missing_api_version_is_400(shoal):
    assert_batch_error(call(shoal, "GET", "/pools", api_version=None), 400, "MissingRequiredQueryParameter")


def test_unknown_route_and_method_get_azure_error_bodies(shoal):
    body = assert_batch_error(call(shoal, "GET", "/no/such/thing"), 404, "InvalidUri")
    assert {"key": "RequestUri", "value": "/no/such/thing"} in body["values"]
    assert_batch_error(call(shoal, "PUT", "/pools"), 405, "UnsupportedHttpVerb")
