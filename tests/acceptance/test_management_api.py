"""The management API against a real `shoal up --tls`, with the real azure-mgmt-batch 19 signed in
through azure-identity's ClientSecretCredential: the account resource, its keys listed and
regenerated (the old key refused by the data plane at once, the other still taken, the CLI's
endpoint file rewritten), RBAC per action, and ARM's 401/400 answers that change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError

from shoal import config
from shoal.testing.server import RunningShoal, account_info, running_shoal
from tests.acceptance.rest import call, verifier
from tests.identity import access_token, assign_role, cli, create_principal, credential

MANAGEMENT_SCOPE = "https://management.azure.com/.default"
API_VERSION = "2025-06-01"


@pytest.fixture(scope="module")
def tls_shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("mgmt"), extra_args=["--tls"]) as running:
        yield running


@pytest.fixture(scope="module")
def contributor(tls_shoal: RunningShoal) -> dict[str, Any]:
    principal = create_principal(tls_shoal, "mgmt-contributor")
    # At the subscription: it covers the account and every resource group.
    assign_role(tls_shoal, principal, "Contributor", "--scope", "subscription")
    return principal


@pytest.fixture(scope="module")
def reader(tls_shoal: RunningShoal) -> dict[str, Any]:
    principal = create_principal(tls_shoal, "mgmt-reader")
    assign_role(tls_shoal, principal, "Reader", "--scope", "subscription")
    return principal


def scope_parts() -> tuple[str, str]:
    parts = config.account_scope("shoal").split("/")
    return parts[2], parts[4]


def management_client(shoal: RunningShoal, principal: dict[str, Any]) -> Any:
    from azure.mgmt.batch import BatchManagementClient

    subscription, _group = scope_parts()
    return BatchManagementClient(credential(shoal, principal), subscription, base_url=shoal.endpoint,
                                 credential_scopes=[MANAGEMENT_SCOPE], connection_verify=shoal.ca_file)


def management_token(shoal: RunningShoal, principal: dict[str, Any]) -> str:
    return access_token(shoal, principal, scope=MANAGEMENT_SCOPE)


def account_path(suffix: str = "") -> str:
    return config.account_scope("shoal") + suffix


def arm_call(shoal: RunningShoal, method: str, path: str, *, token: str | None = None, body: Any = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    sent.setdefault("Content-Type", "application/json")
    return httpx.request(method, f"{shoal.endpoint}{path}?api-version={API_VERSION}", content=content,
                         headers=sent, verify=verifier(shoal), timeout=30)


def assert_arm_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]


def data_plane_status(shoal: RunningShoal, key: str) -> int:
    return call(shoal, "GET", "/pools", key=key).status_code


def test_account_resource_through_azure_mgmt_batch(tls_shoal: RunningShoal, contributor: dict[str, Any]) -> None:
    client = management_client(tls_shoal, contributor)
    subscription, group = scope_parts()
    account = client.batch_account.get(group, "shoal")
    assert account.id == config.account_scope("shoal")
    assert account.name == "shoal" and account.type == "Microsoft.Batch/batchAccounts"
    assert account.location == "local"
    assert f"https://{account.account_endpoint}" == tls_shoal.endpoint
    assert account.provisioning_state == "Succeeded"
    assert account.pool_quota == 100 and account.dedicated_core_quota == 500
    assert account.low_priority_core_quota == 100 and account.active_job_and_job_schedule_quota == 300
    assert sorted(account.allowed_authentication_modes) == ["AAD", "SharedKey", "TaskAuthenticationToken"]
    assert [a.name for a in client.batch_account.list_by_resource_group(group)] == ["shoal"]
    assert [a.id for a in client.batch_account.list()] == [account.id]
    # Unknown groups and accounts are ARM's 404s.
    with pytest.raises(HttpResponseError) as missing:
        client.batch_account.get(group, "nosuchaccount")
    assert missing.value.status_code == 404 and missing.value.error.code == "ResourceNotFound"
    with pytest.raises(HttpResponseError) as no_group:
        client.batch_account.get("no-such-group", "shoal")
    assert no_group.value.status_code == 404 and no_group.value.error.code == "ResourceGroupNotFound"
    assert subscription in account.id


def test_regenerating_a_key_refuses_it_at_once_and_keeps_the_other(tls_shoal: RunningShoal,
                                                                   contributor: dict[str, Any]) -> None:
    client = management_client(tls_shoal, contributor)
    _subscription, group = scope_parts()
    listed = client.batch_account.get_keys(group, "shoal")
    assert listed.account_name == "shoal"
    assert (listed.primary, listed.secondary) == (tls_shoal.primary_key, tls_shoal.secondary_key)
    old_primary = listed.primary
    assert data_plane_status(tls_shoal, old_primary) == 200

    regenerated = client.batch_account.regenerate_key(group, "shoal", {"keyName": "Primary"})
    assert regenerated.primary != old_primary and regenerated.secondary == tls_shoal.secondary_key
    # The very next data-plane request with the old key is refused; the secondary still works.
    assert data_plane_status(tls_shoal, old_primary) == 403
    assert data_plane_status(tls_shoal, tls_shoal.secondary_key) == 200
    assert data_plane_status(tls_shoal, regenerated.primary) == 200
    sdk = tls_shoal.client(key=old_primary)
    with pytest.raises(HttpResponseError):
        list(sdk.list_pools())
    assert list(tls_shoal.client(key=regenerated.primary).list_pools()) == []
    # The CLI reads the endpoint file: it shows, and signs with, the new key.
    shown = account_info(tls_shoal.data_dir)
    assert (shown["primaryKey"], shown["secondaryKey"]) == (regenerated.primary, regenerated.secondary)
    assert cli(tls_shoal, "pool", "list").returncode == 0
    assert client.batch_account.get_keys(group, "shoal").primary == regenerated.primary
    # No log line holds the new key (`shoal up`'s banner shows the keys it started with only).
    assert regenerated.primary not in tls_shoal.log()

    again = client.batch_account.regenerate_key(group, "shoal", {"keyName": "Secondary"})
    assert again.primary == regenerated.primary and again.secondary != tls_shoal.secondary_key
    assert data_plane_status(tls_shoal, tls_shoal.secondary_key) == 403
    assert data_plane_status(tls_shoal, again.secondary) == 200


def test_allowed_authentication_modes_through_patch(tls_shoal: RunningShoal, contributor: dict[str, Any]) -> None:
    from azure.mgmt.batch import models

    client = management_client(tls_shoal, contributor)
    _subscription, group = scope_parts()
    data_token = access_token(tls_shoal, contributor)
    assert call(tls_shoal, "GET", "/pools", token=data_token).status_code == 200
    updated = client.batch_account.update(group, "shoal", models.BatchAccountUpdateParameters(
        properties=models.BatchAccountUpdateProperties(allowed_authentication_modes=["SharedKey"])))
    assert updated.allowed_authentication_modes == ["SharedKey"]
    try:
        # AAD is off on the data plane at once (this server's policy cache is forgotten)…
        assert call(tls_shoal, "GET", "/pools", token=data_token).status_code == 401
        # …but ARM still takes the principal: it is how the modes are changed back.
        assert client.batch_account.get(group, "shoal").allowed_authentication_modes == ["SharedKey"]
        with pytest.raises(HttpResponseError) as refused:
            client.batch_account.update(group, "shoal", models.BatchAccountUpdateParameters(
                properties=models.BatchAccountUpdateProperties(allowed_authentication_modes=["Kerberos"])))
        assert refused.value.status_code == 400
    finally:
        client.batch_account.update(group, "shoal", models.BatchAccountUpdateParameters(
            properties=models.BatchAccountUpdateProperties(
                allowed_authentication_modes=["SharedKey", "AAD", "TaskAuthenticationToken"])))
    assert call(tls_shoal, "GET", "/pools", token=data_token).status_code == 200


def test_a_reader_may_get_the_account_but_not_its_keys(tls_shoal: RunningShoal, reader: dict[str, Any]) -> None:
    client = management_client(tls_shoal, reader)
    _subscription, group = scope_parts()
    assert client.batch_account.get(group, "shoal").name == "shoal"
    for attempt in (lambda: client.batch_account.get_keys(group, "shoal"),
                    lambda: client.batch_account.regenerate_key(group, "shoal", {"keyName": "Primary"})):
        with pytest.raises(HttpResponseError) as denied:
            attempt()
        assert denied.value.status_code == 403 and denied.value.error.code == "AuthorizationFailed"
    keys_now = account_info(tls_shoal.data_dir)
    assert data_plane_status(tls_shoal, keys_now["primaryKey"]) == 200


def test_a_principal_without_roles_is_refused_everything(tls_shoal: RunningShoal) -> None:
    nobody = create_principal(tls_shoal, "mgmt-nobody")
    token = management_token(tls_shoal, nobody)
    for method, path in (("GET", account_path()), ("GET", "/subscriptions/" + scope_parts()[0]
                                                   + "/providers/Microsoft.Batch/batchAccounts"),
                         ("POST", account_path("/listKeys"))):
        assert_arm_error(arm_call(tls_shoal, method, path, token=token), 403, "AuthorizationFailed")


def test_unsigned_shared_key_and_data_plane_tokens_are_401(tls_shoal: RunningShoal,
                                                          contributor: dict[str, Any]) -> None:
    from shoal.sharedkey import sign_request

    path = account_path("/listKeys")
    assert_arm_error(arm_call(tls_shoal, "POST", path), 401, "AuthenticationFailed")
    url = f"{tls_shoal.endpoint}{path}?api-version={API_VERSION}"
    keys = account_info(tls_shoal.data_dir)
    signed = sign_request("POST", url, {"Content-Type": "application/json", "Content-Length": "0"},
                          "shoal", keys["primaryKey"])
    response = httpx.post(url, headers=signed, verify=verifier(tls_shoal), timeout=30)
    assert_arm_error(response, 401, "AuthenticationFailed")
    assert keys["primaryKey"] not in response.text
    # A token for the data plane is not one for ARM, and the other way round.
    data_token = access_token(tls_shoal, contributor)
    assert_arm_error(arm_call(tls_shoal, "POST", path, token=data_token), 401, "InvalidAuthenticationToken")
    assert call(tls_shoal, "GET", "/pools", token=management_token(tls_shoal, contributor)).status_code == 401
    assert_arm_error(arm_call(tls_shoal, "GET", account_path(), token="not.a.jwt"), 401, "InvalidAuthenticationToken")


BAD_BODIES = [
    ("tertiary", {"keyName": "Tertiary"}),
    ("number", {"keyName": 1}),
    ("null", {"keyName": None}),
    ("list", ["Primary"]),
    ("extra-property", {"keyName": "Primary", "other": 1}),
    ("nul", {"keyName": "Primary\u0000"}),
    ("huge-value", {"keyName": "P" * 60_000}),
    ("empty", None),
]


@pytest.mark.parametrize(("name", "body"), BAD_BODIES, ids=[name for name, _ in BAD_BODIES])
def test_bad_regenerate_bodies_are_400_and_change_nothing(tls_shoal: RunningShoal, contributor: dict[str, Any],
                                                          name: str, body: Any) -> None:
    token = management_token(tls_shoal, contributor)
    before = account_info(tls_shoal.data_dir)
    response = arm_call(tls_shoal, "POST", account_path("/regenerateKeys"), token=token, body=body)
    assert_arm_error(response, 400, "InvalidRequestBody")
    assert before["primaryKey"] not in response.text
    assert account_info(tls_shoal.data_dir) == before
    assert data_plane_status(tls_shoal, before["primaryKey"]) == 200


def test_malformed_huge_and_unversioned_requests(tls_shoal: RunningShoal, contributor: dict[str, Any]) -> None:
    token = management_token(tls_shoal, contributor)
    before = account_info(tls_shoal.data_dir)
    path = account_path("/regenerateKeys")
    assert_arm_error(arm_call(tls_shoal, "POST", path, token=token, raw=b"{not json"), 400, "InvalidRequestBody")
    assert_arm_error(arm_call(tls_shoal, "POST", path, token=token, raw=b"x" * 200_000), 413,
                     "RequestEntityTooLarge")
    assert_arm_error(arm_call(tls_shoal, "PATCH", account_path(), token=token,
                              body={"properties": {"autoStorage": {"storageAccountId": "x"}}}), 400,
                     "FeatureNotSupported")
    assert_arm_error(arm_call(tls_shoal, "PATCH", account_path(), token=token,
                              body={"properties": {"allowedAuthenticationModes": "AAD"}}), 400, "InvalidRequestBody")
    unversioned = httpx.post(f"{tls_shoal.endpoint}{path}", headers={"Authorization": f"Bearer {token}"},
                             content=b'{"keyName": "Primary"}', verify=verifier(tls_shoal), timeout=30)
    assert_arm_error(unversioned, 400, "MissingApiVersionParameter")
    assert_arm_error(arm_call(tls_shoal, "PUT", account_path(), token=token, body={"location": "local"}), 405,
                     "MethodNotAllowed")
    assert account_info(tls_shoal.data_dir) == before


def test_a_regenerated_key_is_stored_sealed_and_ends_the_dashboard_sessions_signed_with_it(tmp_path: Path) -> None:
    """With a secrets key the new key is written sealed (store/sealing.py); the dashboard's
    sessions signed in with the old key end with it, those of the other key go on."""
    from sqlalchemy import create_engine, select

    from shoal.store.schema import accounts
    from shoal.store.sealing import PREFIX, Sealer, purpose

    key_file = tmp_path / "secrets.key"
    subprocess.run([sys.executable, "-m", "shoal.cli", "secrets-key", "new", str(key_file)], check=True,
                   capture_output=True)
    data_dir = tmp_path / "sealed"
    with running_shoal(data_dir, extra_args=["--tls", "--secrets-key-file", str(key_file)]) as shoal:
        principal = create_principal(shoal, "mgmt-sealed")
        assign_role(shoal, principal, "Contributor")
        with dashboard(shoal, shoal.primary_key) as by_primary, dashboard(shoal, shoal.secondary_key) as by_secondary:
            assert by_primary.get("/ui/pools").status_code == 200
            assert by_secondary.get("/ui/pools").status_code == 200
            _subscription, group = scope_parts()
            new = management_client(shoal, principal).batch_account.regenerate_key(group, "shoal",
                                                                                   {"keyName": "Primary"})
            assert by_primary.get("/ui/pools").status_code == 303  # back to the sign-in page
            assert by_secondary.get("/ui/pools").status_code == 200
        engine = create_engine(f"sqlite:///{data_dir / 'shoal.db'}")
        try:
            with engine.connect() as conn:
                stored = conn.execute(select(accounts.c.primary_key)).scalar_one()
        finally:
            engine.dispose()
        assert stored.startswith(PREFIX)
        assert Sealer.from_file(key_file).unseal(stored, purpose(accounts, "primary_key")) == new.primary
        assert new.primary.encode() not in b"".join(p.read_bytes() for p in sorted(data_dir.glob("shoal.db*")))


@contextmanager
def dashboard(shoal: RunningShoal, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shoal.endpoint, follow_redirects=False, timeout=30, verify=verifier(shoal)) as client:
        response = client.post("/ui/signin", data={"key": key, "next": "/ui/pools"})
        assert response.status_code == 303, response.text
        yield client


def test_regenerations_at_once_leave_the_server_with_the_stored_keys(tls_shoal: RunningShoal,
                                                                     contributor: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    token = management_token(tls_shoal, contributor)

    def regenerate(index: int) -> int:
        body = {"keyName": "Primary" if index % 2 else "Secondary"}
        return arm_call(tls_shoal, "POST", account_path("/regenerateKeys"), token=token, body=body).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(regenerate, range(16))) == [200] * 16
    listed = arm_call(tls_shoal, "POST", account_path("/listKeys"), token=token).json()
    shown = account_info(tls_shoal.data_dir)
    assert (shown["primaryKey"], shown["secondaryKey"]) == (listed["primary"], listed["secondary"])
    assert stored_keys(tls_shoal) == (listed["primary"], listed["secondary"])
    assert data_plane_status(tls_shoal, listed["primary"]) == 200
    assert data_plane_status(tls_shoal, listed["secondary"]) == 200


def stored_keys(shoal: RunningShoal) -> tuple[str, str]:
    """The keys in the store (this server keeps them in the clear: no --secrets-key-file)."""
    from sqlalchemy import create_engine, select

    from shoal.store.schema import accounts

    engine = create_engine(f"sqlite:///{shoal.data_dir / 'shoal.db'}")
    try:
        with engine.connect() as conn:
            row = conn.execute(select(accounts.c.primary_key, accounts.c.secondary_key)).one()
    finally:
        engine.dispose()
    return row.primary_key, row.secondary_key


def group_path(name: str) -> str:
    return f"/subscriptions/{scope_parts()[0]}/resourcegroups/{name}"


def test_resource_groups_are_made_read_and_deleted(tls_shoal: RunningShoal, contributor: dict[str, Any]) -> None:
    token = management_token(tls_shoal, contributor)
    # The account's own group is there from the start, and cannot go while it holds the account.
    own = arm_call(tls_shoal, "GET", group_path(scope_parts()[1]), token=token)
    assert own.status_code == 200 and own.json()["location"] == "local"
    assert_arm_error(arm_call(tls_shoal, "DELETE", group_path(scope_parts()[1]), token=token), 409,
                     "ResourceGroupDeletionBlocked")

    made = arm_call(tls_shoal, "PUT", group_path("Team-A_(1).x"), token=token,
                    body={"location": "local", "tags": {"team": "a"}})
    assert made.status_code == 201, made.text
    assert made.json() == {"id": f"/subscriptions/{scope_parts()[0]}/resourceGroups/Team-A_(1).x",
                           "name": "Team-A_(1).x", "type": "Microsoft.Resources/resourceGroups",
                           "location": "local", "tags": {"team": "a"}, "properties": {"provisioningState": "Succeeded"}}
    # Names compare without case; a PUT again updates the tags, never the location.
    again = arm_call(tls_shoal, "PUT", group_path("team-a_(1).X"), token=token, body={"location": "local"})
    assert again.status_code == 200 and again.json()["name"] == "Team-A_(1).x" and again.json()["tags"] == {}
    assert_arm_error(arm_call(tls_shoal, "PUT", group_path("team-a_(1).x"), token=token,
                              body={"location": "westeurope"}), 409, "InvalidResourceGroupLocation")
    # The new group holds no account.
    client = management_client(tls_shoal, contributor)
    assert list(client.batch_account.list_by_resource_group("Team-A_(1).x")) == []
    with pytest.raises(HttpResponseError) as missing:
        client.batch_account.get("Team-A_(1).x", "shoal")
    assert missing.value.error.code == "ResourceNotFound"

    exists = arm_call(tls_shoal, "HEAD", group_path("team-a_(1).x"), token=token)
    assert exists.status_code == 204 and exists.content == b""
    assert arm_call(tls_shoal, "DELETE", group_path("TEAM-A_(1).X"), token=token).status_code == 200
    assert arm_call(tls_shoal, "HEAD", group_path("team-a_(1).x"), token=token).status_code == 404
    assert_arm_error(arm_call(tls_shoal, "GET", group_path("Team-A_(1).x"), token=token), 404, "ResourceGroupNotFound")
    assert_arm_error(arm_call(tls_shoal, "DELETE", group_path("Team-A_(1).x"), token=token), 404,
                     "ResourceGroupNotFound")


BAD_GROUP_NAMES = ["ends-with-dot.", "x" * 91, "sp ace", "semi;colon", "nul%00", "star*", "%C3%A9t%C3%A9~"]


@pytest.mark.parametrize("name", BAD_GROUP_NAMES)
def test_bad_group_names_are_400_and_make_nothing(tls_shoal: RunningShoal, contributor: dict[str, Any],
                                                  name: str) -> None:
    token = management_token(tls_shoal, contributor)
    assert_arm_error(arm_call(tls_shoal, "PUT", group_path(name), token=token, body={"location": "local"}), 400,
                     "InvalidResourceGroupName")
    assert arm_call(tls_shoal, "GET", group_path(name), token=token).status_code == 404


def test_rights_at_the_account_do_not_reach_other_groups(tls_shoal: RunningShoal) -> None:
    """An assignment at the account (or its group) grants nothing over another group."""
    local = create_principal(tls_shoal, "mgmt-account-owner")
    assign_role(tls_shoal, local, "Owner")
    token = management_token(tls_shoal, local)
    assert arm_call(tls_shoal, "GET", account_path(), token=token).status_code == 200
    assert_arm_error(arm_call(tls_shoal, "PUT", group_path("elsewhere"), token=token, body={"location": "local"}),
                     403, "AuthorizationFailed")


def test_bad_group_bodies_and_rights(tls_shoal: RunningShoal, contributor: dict[str, Any],
                                     reader: dict[str, Any]) -> None:
    token = management_token(tls_shoal, contributor)
    for body, code in (({}, "LocationRequired"), ({"location": 5}, "InvalidRequestContent"),
                       ({"location": "local", "tags": {"a": 1}}, "InvalidTag"),
                       ({"location": "local", "tags": {"a\u0000": "b"}}, "InvalidTag"),
                       ({"location": "local", "managedBy": "x"}, "InvalidRequestContent"),
                       (["local"], "InvalidRequestContent")):
        assert_arm_error(arm_call(tls_shoal, "PUT", group_path("bad-body"), token=token, body=body), 400, code)
    assert arm_call(tls_shoal, "GET", group_path("bad-body"), token=token).status_code == 404
    # Unicode letters are letters, as on ARM.
    assert arm_call(tls_shoal, "PUT", group_path("%C3%A9t%C3%A9"), token=token,
                    body={"location": "local"}).status_code == 201
    # A Reader reads groups but makes or deletes none.
    reading = management_token(tls_shoal, reader)
    assert arm_call(tls_shoal, "GET", group_path("%C3%A9t%C3%A9"), token=reading).status_code == 200
    assert_arm_error(arm_call(tls_shoal, "PUT", group_path("reader-group"), token=reading,
                              body={"location": "local"}), 403, "AuthorizationFailed")
    assert_arm_error(arm_call(tls_shoal, "DELETE", group_path("%C3%A9t%C3%A9"), token=reading), 403,
                     "AuthorizationFailed")
    assert arm_call(tls_shoal, "DELETE", group_path("%C3%A9t%C3%A9"), token=token).status_code == 200


def test_shoal_account_regenerate_key(tls_shoal: RunningShoal, contributor: dict[str, Any]) -> None:
    """The CLI's way (Shared Key, like every command): the old key is refused at once, the other
    kept, and the next command signs with the new key from the rewritten endpoint file."""
    before = account_info(tls_shoal.data_dir)
    out = cli(tls_shoal, "account", "regenerate-key", "secondary", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["primaryKey"] == before["primaryKey"] and answer["secondaryKey"] != before["secondaryKey"]
    assert answer["secondaryKey"] not in out.stderr
    assert data_plane_status(tls_shoal, before["secondaryKey"]) == 403
    assert data_plane_status(tls_shoal, answer["secondaryKey"]) == 200
    assert account_info(tls_shoal.data_dir)["secondaryKey"] == answer["secondaryKey"]
    assert cli(tls_shoal, "account", "regenerate-key", "primary").returncode == 0
    assert data_plane_status(tls_shoal, before["primaryKey"]) == 403
    assert cli(tls_shoal, "pool", "list").returncode == 0
    assert cli(tls_shoal, "account", "regenerate-key", "tertiary").returncode == 2
    # Principals never call it, whatever their roles: it is the key holder's.
    data_token = access_token(tls_shoal, contributor)
    refused = call(tls_shoal, "POST", "/shoal/v1/account/regenerate-key", token=data_token,
                   body=b'{"keyName": "Primary"}')
    assert refused.status_code == 403
    bad = call(tls_shoal, "POST", "/shoal/v1/account/regenerate-key", key=account_info(tls_shoal.data_dir)["primaryKey"],
               body=b'{"keyName": "Tertiary"}')
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidRequestBody"


# What each built-in role may do through the management API, read from Azure's role definitions
# (written apart from the server's evaluator so that the two check each other): account read,
# account write, list keys, regenerate keys, group read, group write, group delete.
ALL = {"read", "write", "listKeys", "regenerateKeys", "groupRead", "groupWrite", "groupDelete"}
MANAGEMENT_MATRIX = {
    "Owner": ALL,
    "Contributor": ALL,
    "Reader": {"read", "groupRead"},
    "Azure Batch Account Contributor": {"read", "write", "listKeys", "regenerateKeys", "groupRead"},
    "Azure Batch Account Reader": {"read", "groupRead"},
    "Azure Batch Data Contributor": {"read", "groupRead"},
    "Azure Batch Job Submitter": {"groupRead"},
}


@pytest.mark.parametrize("role", sorted(MANAGEMENT_MATRIX))
def test_management_matrix_of_the_builtin_roles(tls_shoal: RunningShoal, role: str) -> None:
    principal = create_principal(tls_shoal, f"mgmt-matrix-{role.lower().replace(' ', '-')}")
    assign_role(tls_shoal, principal, role, "--scope", "subscription")
    token = management_token(tls_shoal, principal)
    group = f"matrix-{abs(hash(role)) % 10_000}"
    calls = {  # each with a body that would not change the account if allowed
        "read": ("GET", account_path(), None),
        "write": ("PATCH", account_path(), {}),
        "listKeys": ("POST", account_path("/listKeys"), None),
        "regenerateKeys": ("POST", account_path("/regenerateKeys"), {"keyName": "Tertiary"}),
        "groupWrite": ("PUT", group_path(group), {"location": "local"}),
        "groupRead": ("GET", group_path(group), None),
        "groupDelete": ("DELETE", group_path(group), None),
    }
    allowed = set()
    for name, (method, path, body) in calls.items():
        response = arm_call(tls_shoal, method, path, token=token, body=body)
        assert response.status_code < 500, (name, response.text)
        if response.status_code == 403:
            assert response.json()["error"]["code"] == "AuthorizationFailed"
        else:
            allowed.add(name)
    assert allowed == MANAGEMENT_MATRIX[role]
