"""Bearer tokens on a real `shoal up --tls`: what the data plane refuses, on every route, and that
no secret reaches a log or an answer."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shoal.service import tokens
from shoal.testing.server import RunningShoal, running_shoal
from tests.acceptance.rest import assert_batch_error, call, verifier
from tests.identity import (
    BATCH_SCOPE,
    access_token,
    assign_role,
    cli,
    create_principal,
    signing_keys,
    token_request,
)

SECRETS: list[str] = []
UNAUTHENTICATED_PROBES = ("/health", "/ready")


@pytest.fixture(scope="module")
def tls_shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("tls"), extra_args=["--tls"]) as running:
        yield running


@pytest.fixture(scope="module")
def principal(tls_shoal: RunningShoal) -> dict[str, Any]:
    made = create_principal(tls_shoal, "security")
    SECRETS.append(made["clientSecret"])
    assign_role(tls_shoal, made, "Azure Batch Account Reader")
    return made


@pytest.fixture(scope="module")
def keys(tls_shoal: RunningShoal) -> tokens.SigningKeys:
    return signing_keys(tls_shoal)


def _refused(response: httpx.Response, detail: str | None = None) -> None:
    body = assert_batch_error(response, 401, "AuthenticationFailed")
    if detail is not None:
        values = {v["key"]: v["value"] for v in body.get("values", [])}
        assert detail in values.get("AuthenticationErrorDetail", ""), values


def _mint(keys: tokens.SigningKeys, tls_shoal: RunningShoal, principal: dict[str, Any], **changes: Any) -> str:
    claims = {"tenant_id": principal["tenantId"], "client_id": principal["clientId"],
              "object_id": principal["objectId"],
              "issuer_url": tokens.issuer(tls_shoal.endpoint, principal["tenantId"])}
    claims.update(changes)
    return tokens.mint_access_token(keys, **claims)


def test_a_principal_token_reads_the_data_plane(tls_shoal: RunningShoal, principal: dict[str, Any]) -> None:
    token = access_token(tls_shoal, principal)
    SECRETS.append(token)
    assert call(tls_shoal, "GET", "/pools", token=token).status_code == 200


def test_tampered_token_is_refused(tls_shoal: RunningShoal, principal: dict[str, Any]) -> None:
    header, payload, signature = access_token(tls_shoal, principal).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["oid"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _refused(call(tls_shoal, "GET", "/pools", token=f"{header}.{forged}.{signature}"), "signature")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    _refused(call(tls_shoal, "GET", "/pools", token=f"{header}.{payload}.{flipped}"))


def test_token_of_another_key_alg_none_and_key_confusion_are_refused(tls_shoal: RunningShoal,
                                                                    principal: dict[str, Any],
                                                                    keys: tokens.SigningKeys) -> None:
    claims = {"aud": tokens.BATCH_AUDIENCE, "iss": tokens.issuer(tls_shoal.endpoint, principal["tenantId"]),
              "iat": int(time.time()), "exp": int(time.time()) + 600, "tid": principal["tenantId"],
              "appid": principal["clientId"], "oid": principal["objectId"]}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(call(tls_shoal, "GET", "/pools",
                  token=jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": keys.access_kid})))
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": keys.access_kid})
    _refused(call(tls_shoal, "GET", "/pools", token=unsigned))
    public_pem = keys.access_private.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = _hs256(claims, public_pem, keys.access_kid)
    _refused(call(tls_shoal, "GET", "/pools", token=confused))
    _refused(call(tls_shoal, "GET", "/pools", token="not-a-jwt"), "not a JSON Web Token")
    _refused(call(tls_shoal, "GET", "/pools", token="x" * 20000), "too long")


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT itself refuses a PEM as an HMAC key)."""
    import hashlib
    import hmac

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}." \
                    f"{part(json.dumps(claims).encode())}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def test_expired_and_not_yet_valid_tokens_are_refused_beyond_the_skew(tls_shoal: RunningShoal,
                                                                      principal: dict[str, Any],
                                                                      keys: tokens.SigningKeys) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    expired = _mint(keys, tls_shoal, principal, now=now - timedelta(seconds=3600 + tokens.CLOCK_SKEW_S + 60))
    _refused(call(tls_shoal, "GET", "/pools", token=expired), "expired")
    # Within the skew an expired token still passes, as Entra's do.
    barely = _mint(keys, tls_shoal, principal, now=now - timedelta(seconds=3600 + 60))
    assert call(tls_shoal, "GET", "/pools", token=barely).status_code == 200
    future = _mint(keys, tls_shoal, principal, now=now + timedelta(seconds=tokens.CLOCK_SKEW_S + 120))
    _refused(call(tls_shoal, "GET", "/pools", token=future), "not valid yet")


def test_wrong_audience_and_issuer_are_refused(tls_shoal: RunningShoal, principal: dict[str, Any],
                                               keys: tokens.SigningKeys) -> None:
    _refused(call(tls_shoal, "GET", "/pools",
                  token=_mint(keys, tls_shoal, principal, audience="https://storage.azure.com/")), "audience")
    _refused(call(tls_shoal, "GET", "/pools", token=_mint(
        keys, tls_shoal, principal, issuer_url=tokens.issuer("https://login.example.com", principal["tenantId"]))),
        "issuer")


def test_unknown_and_deleted_principals_are_refused(tls_shoal: RunningShoal, principal: dict[str, Any],
                                                    keys: tokens.SigningKeys) -> None:
    ghost = _mint(keys, tls_shoal, principal, client_id=str(uuid.uuid4()), object_id=str(uuid.uuid4()))
    _refused(call(tls_shoal, "GET", "/pools", token=ghost), "does not exist")
    leaving = create_principal(tls_shoal, "leaving")
    SECRETS.append(leaving["clientSecret"])
    assign_role(tls_shoal, leaving, "Reader")
    token = access_token(tls_shoal, leaving)
    assert call(tls_shoal, "GET", "/pools", token=token).status_code == 200
    out = cli(tls_shoal, "principal", "delete", leaving["clientId"])
    assert out.returncode == 0, out.stderr
    _refused(call(tls_shoal, "GET", "/pools", token=token), "does not exist")
    assert leaving["clientId"] not in cli(tls_shoal, "principal", "list", "--json").stdout
    # Its secret no longer gets a token either.
    again = token_request(tls_shoal, leaving["tenantId"], {
        "grant_type": "client_credentials", "client_id": leaving["clientId"],
        "client_secret": leaving["clientSecret"], "scope": BATCH_SCOPE})
    assert again.status_code == 400 and again.json()["error"] == "unauthorized_client"


def test_task_tokens_of_another_account_a_gone_task_or_another_key_are_refused(tls_shoal: RunningShoal,
                                                                               keys: tokens.SigningKeys) -> None:
    other_account = tokens.mint_task_token(keys, account="elsewhere", job_id="j", task_id="t", attempt=0)
    _refused(call(tls_shoal, "GET", "/jobs/j", token=other_account), "another account")
    never_ran = tokens.mint_task_token(keys, account=tls_shoal.account, job_id="j", task_id="t", attempt=0)
    _refused(call(tls_shoal, "GET", "/jobs/j", token=never_ran), "no longer running")
    header, payload, _signature = never_ran.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    _refused(call(tls_shoal, "GET", "/jobs/j", token=_hs256(claims, b"guessed secret", keys.task_kid)), "signature")


def test_token_of_another_tenant_is_refused(tls_shoal: RunningShoal) -> None:
    out = cli(tls_shoal, "tenant", "create", "elsewhere")
    assert out.returncode == 0, out.stderr
    other_tenant = out.stdout.strip()
    outsider = create_principal(tls_shoal, "outsider", "--tenant", other_tenant)
    SECRETS.append(outsider["clientSecret"])
    assert outsider["tenantId"] == other_tenant
    # Its own tenant's authority gives it a token; the account, in another tenant, refuses it.
    token = access_token(tls_shoal, outsider)
    _refused(call(tls_shoal, "GET", "/pools", token=token), "another tenant")


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "client_credentials", "client_secret": "wrong"}, 401, "invalid_client"),
    ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "scope": "https://storage.azure.com/.default"}, 400, "invalid_scope"),
    ({"grant_type": "client_credentials", "client_id": str(uuid.uuid4())}, 400, "unauthorized_client"),
    ({"grant_type": "client_credentials", "client_secret": ""}, 400, "invalid_request"),
])
def test_token_endpoint_refusals(tls_shoal: RunningShoal, principal: dict[str, Any], form: dict[str, str],
                                 status: int, error: str) -> None:
    sent = {"client_id": principal["clientId"], "client_secret": principal["clientSecret"], "scope": BATCH_SCOPE,
            **form}
    response = token_request(tls_shoal, principal["tenantId"], sent)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["error_description"].startswith("AADSTS")
    assert "access_token" not in body


def test_token_endpoint_refuses_unknown_tenants_and_huge_bodies(tls_shoal: RunningShoal,
                                                                principal: dict[str, Any]) -> None:
    form = {"grant_type": "client_credentials", "client_id": principal["clientId"],
            "client_secret": principal["clientSecret"], "scope": BATCH_SCOPE}
    for tenant in (str(uuid.uuid4()), "..", "not-a-guid", "%00"):
        response = token_request(tls_shoal, tenant, form)
        assert response.status_code in (400, 404), (tenant, response.text)
    huge = token_request(tls_shoal, principal["tenantId"], {**form, "pad": "x" * 100_000})
    assert huge.status_code == 413
    assert token_request(tls_shoal, principal["tenantId"], form).status_code == 200


def _data_plane_routes() -> list[tuple[str, str]]:
    from shoal.api import identity
    from shoal.api.agent import AgentHub
    from shoal.api.app import Api, build_app
    from shoal.service.context import Context

    app = build_app(Api(Context(engine=None, account="x"), {}), AgentHub(), 1.0)  # type: ignore[arg-type]
    out = []
    for route in app.routes:
        path = getattr(route, "path", "")
        # The agent protocol has its own node tokens (tests/security/test_protocol.py); the
        # authority's routes are unauthenticated by design, as on Entra, and so are the probes
        # that say only ok or not (tests/acceptance/test_observability.py).
        if path.startswith("/agent/") or path in (*identity.AUTHORITY_PATHS, *UNAUTHENTICATED_PROBES):
            continue
        if path == "/ui":
            # The dashboard signs in with its own session cookie: strangers get the sign-in page
            # (tests/acceptance/test_dashboard_http.py::test_every_page_refuses_a_stranger).
            continue
        concrete = "/".join("x" if part.startswith("{") else part for part in path.split("/"))
        out.extend((method, concrete) for method in sorted(route.methods or ()) if method != "HEAD")
    return out


def test_every_route_refuses_unsigned_and_bad_bearer_requests(tls_shoal: RunningShoal, principal: dict[str, Any],
                                                              keys: tokens.SigningKeys) -> None:
    from shoal.api import management

    routes = _data_plane_routes()
    assert len(routes) > 60
    assert {(method, path.split("?")[0]) for method, path in routes} >= {
        ("POST", "/subscriptions/x/resourceGroups/x/providers/Microsoft.Batch/batchAccounts/x/listKeys"),
        ("POST", "/subscriptions/x/resourceGroups/x/providers/Microsoft.Batch/batchAccounts/x/regenerateKeys")}
    expired = _mint(keys, tls_shoal, principal, now=_long_ago())
    with httpx.Client(verify=verifier(tls_shoal), timeout=30) as http:
        for method, path in routes:
            url = f"{tls_shoal.endpoint}{path}?api-version=2025-06-01"
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {expired}"},
                            {"Authorization": "Basic dXNlcjpwYXNz"}):
                response = http.request(method, url, headers={"Content-Length": "0", **headers})
                assert response.status_code == 401, (method, path, headers, response.text)
                if management.is_management_path(path):
                    # ARM's error shape (shoal/api/management.py), and ARM's codes.
                    assert response.json()["error"]["code"] in ("AuthenticationFailed", "InvalidAuthenticationToken")
                else:
                    assert response.json()["code"] == "AuthenticationFailed"


def _long_ago() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=1)


def test_no_secret_in_answers_logs_or_the_store(tls_shoal: RunningShoal, principal: dict[str, Any]) -> None:
    listed = cli(tls_shoal, "principal", "list", "--json")
    assert listed.returncode == 0
    assert principal["clientId"] in listed.stdout and principal["clientSecret"] not in listed.stdout
    assert "clientSecret" not in listed.stdout
    # A failed sign-in with a secret in it leaves it nowhere.
    leaked = "not-the-secret-" + uuid.uuid4().hex
    token_request(tls_shoal, principal["tenantId"], {"grant_type": "client_credentials",
                                                     "client_id": principal["clientId"],
                                                     "client_secret": leaked, "scope": BATCH_SCOPE})
    SECRETS.append(leaked)
    log = tls_shoal.log()
    store = b"".join(path.read_bytes() for path in tls_shoal.data_dir.glob("shoal.db*"))
    assert SECRETS and principal["clientSecret"] in SECRETS
    for secret in SECRETS:
        assert secret not in log
        assert secret.encode() not in store
