"""Entra-style sign-in and task authentication tokens against a real `shoal up --tls`: the
azure-batch SDK's token credential path with azure-identity's ClientSecretCredential, and a real
task that uses its AZ_BATCH_AUTHENTICATION_TOKEN from inside the node."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shoal.testing.server import RunningShoal, kill_agents, running_shoal, start_shoal, stop_shoal
from tests.acceptance.rest import assert_batch_error, call, verifier
from tests.helpers import wait_for, wait_task_state, wait_tasks_done
from tests.identity import access_token, assign_role, cli, client_with_pool, create_principal, token_client

POOL = "idpool"


@pytest.fixture(scope="module")
def tls_shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("tls"), extra_args=["--tls"]) as running:
        yield running


@pytest.fixture(scope="module")
def key_client(tls_shoal: RunningShoal) -> Any:
    return client_with_pool(tls_shoal, POOL)


def test_server_behind_another_address_names_it_as_the_authority(tmp_path: Path) -> None:
    """`shoal server --authority URL`: tokens name URL as their issuer, the discovery document
    sends clients there, and the server still takes its own tokens."""
    shoal = start_shoal(tmp_path / "server", command="server",
                        extra_args=["--tls", "--authority", "https://batch.example.test/"])
    try:
        principal = create_principal(shoal, "proxied")
        assign_role(shoal, principal, "Reader")
        document = httpx.get(f"{shoal.endpoint}/{principal['tenantId']}/v2.0/.well-known/openid-configuration",
                             verify=verifier(shoal)).json()
        assert document["issuer"] == f"https://batch.example.test/{principal['tenantId']}/v2.0"
        assert document["token_endpoint"] == f"https://batch.example.test/{principal['tenantId']}/oauth2/v2.0/token"
        token = access_token(shoal, principal)
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == document["issuer"]
        assert call(shoal, "GET", "/pools", token=token).status_code == 200
    finally:
        stop_shoal(shoal)
        kill_agents(tmp_path)
    bad = cli_run(["server", "--authority", "ftp://x", "--port", "0", "--data-dir", str(tmp_path / "bad")])
    assert bad.returncode == 2 and "--authority" in bad.stderr


def cli_run(args: list[str]) -> Any:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, timeout=60)


def test_up_tls_prints_the_ca_and_serves_https(tls_shoal: RunningShoal) -> None:
    assert tls_shoal.endpoint.startswith("https://127.0.0.1:")
    assert tls_shoal.ca_file and f"CA:       {tls_shoal.ca_file}" in tls_shoal.log()
    assert "SSL_CERT_FILE" in tls_shoal.log()
    tls_dir = Path(tls_shoal.ca_file).parent
    for key in tls_dir.glob("*key*.pem"):
        assert key.stat().st_mode & 0o777 == 0o600
    # The CLI finds the CA in endpoint.json and talks https.
    out = cli(tls_shoal, "pool", "list", "--json")
    assert out.returncode == 0, out.stderr
    with pytest.raises(httpx.ConnectError):  # no CA given: the certificate is not trusted
        httpx.get(f"{tls_shoal.endpoint}/pools", verify=True)


def test_principal_create_prints_its_secret_once(tls_shoal: RunningShoal) -> None:
    out = cli(tls_shoal, "principal", "create", "printed")
    assert out.returncode == 0, out.stderr
    fields = dict(line.strip().split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert {"tenant id", "client id", "secret"} <= fields.keys()
    listed = cli(tls_shoal, "principal", "list", "--json")
    assert fields["client id"] in listed.stdout and fields["secret"] not in listed.stdout


def test_sdk_token_credential_path_against_shoal(tls_shoal: RunningShoal, key_client: Any) -> None:
    principal = create_principal(tls_shoal, "pipeline")
    assign_role(tls_shoal, principal, "Azure Batch Job Submitter")
    client = token_client(tls_shoal, principal)
    assert POOL in [pool.id for pool in client.list_pools()]
    client.create_job(models.BatchJobCreateOptions(id="by-token", pool_info=models.BatchPoolInfo(pool_id=POOL)))
    client.create_task("by-token", models.BatchTaskCreateOptions(id="t1", command_line="/bin/echo hi"))
    wait_tasks_done(client, "by-token")
    assert client.get_task("by-token", "t1").execution_info.exit_code == 0
    # Deleted, the principal's next call is refused (its cached token no longer counts).
    assert cli(tls_shoal, "principal", "delete", "pipeline").returncode == 0
    with pytest.raises(HttpResponseError) as info:
        client.get_job("by-token")
    assert info.value.status_code == 401


# Runs inside the task, with the node's Python and the standard library only.
TASK_SCRIPT = r"""
import json, os, ssl, urllib.error, urllib.request
# The node's CA bundle (SSL_CERT_FILE) trusts the server's own CA: no option needed.
context = ssl.create_default_context()
token = os.environ["AZ_BATCH_AUTHENTICATION_TOKEN"]
job = os.environ["AZ_BATCH_JOB_ID"]

def call(method, path, body=None):
    request = urllib.request.Request(
        os.environ["AZ_BATCH_ACCOUNT_URL"] + path + "?api-version=2025-06-01", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json; odata=minimalmetadata"})
    try:
        with urllib.request.urlopen(request, context=context) as answer:
            return [answer.status, None]
    except urllib.error.HTTPError as error:
        return [error.code, json.loads(error.read() or b"{}").get("code")]

print(json.dumps({
    "addTask": call("POST", "/jobs/" + job + "/tasks", {"id": "child", "commandLine": "/bin/true"}),
    "ownJob": call("GET", "/jobs/" + job),
    "ownTasks": call("GET", "/jobs/" + job + "/tasks"),
    "otherJob": call("GET", "/jobs/other"),
    "addToOtherJob": call("POST", "/jobs/other/tasks", {"id": "sneaky", "commandLine": "/bin/true"}),
    "pool": call("GET", "/pools/" + os.environ["AZ_BATCH_POOL_ID"]),
    "jobs": call("GET", "/jobs"),
    "token": token,
    "caBundle": os.environ.get("SSL_CERT_FILE"),
}))
"""


def test_task_token_works_for_its_own_job_only_and_ends_with_the_task(tls_shoal: RunningShoal,
                                                                      key_client: Any) -> None:
    for job_id in ("tokened", "other"):
        key_client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    task = models.BatchTaskCreateOptions(
        id="caller", command_line="/usr/bin/python3 -c \"import os; exec(os.environ['SCRIPT'])\"",
        environment_settings=[models.EnvironmentSetting(name="SCRIPT", value=TASK_SCRIPT),
                              # The task's own settings cannot replace the token.
                              models.EnvironmentSetting(name="AZ_BATCH_AUTHENTICATION_TOKEN", value="mine")])
    # azure-batch 15.1 has no model field for it (api-version 2025-06-01 still defines it): set raw.
    task["authenticationTokenSettings"] = {"access": ["job"]}
    key_client.create_task("tokened", task)
    wait_task_state(key_client, "tokened", "caller", "completed", timeout=30)
    info = key_client.get_task("tokened", "caller")
    stdout = b"".join(key_client.download_task_file("tokened", "caller", "stdout.txt"))
    stderr = b"".join(key_client.download_task_file("tokened", "caller", "stderr.txt"))
    assert info.execution_info.exit_code == 0, stderr
    seen = json.loads(stdout)
    assert seen["caBundle"].startswith(str(tls_shoal.nodes_dir)) and seen["caBundle"].endswith("ca-bundle.pem")
    assert seen["addTask"] == [201, None]
    assert seen["ownJob"] == [200, None] and seen["ownTasks"] == [200, None]
    for refused in ("otherJob", "addToOtherJob", "pool", "jobs"):
        assert seen[refused] == [403, "AuthorizationFailure"], (refused, seen[refused])
    assert "child" in [t.id for t in key_client.list_tasks("tokened")]
    assert "sneaky" not in [t.id for t in key_client.list_tasks("other")]
    assert key_client.get_task("tokened", "caller").as_dict().get("authenticationTokenSettings") == {"access": ["job"]}
    # The token is in no log of the server or the node's agent.
    assert seen["token"] not in tls_shoal.log()
    for agent_log in tls_shoal.nodes_dir.rglob("*.log"):
        assert seen["token"] not in agent_log.read_text(errors="replace"), agent_log
    # Its task has ended: the token opens nothing any more, not even its own job.
    response = call(tls_shoal, "GET", "/jobs/tokened", token=seen["token"])
    body = assert_batch_error(response, 401, "AuthenticationFailed")
    assert "no longer running" in json.dumps(body)


def test_a_task_without_token_settings_gets_no_token(key_client: Any) -> None:
    key_client.create_job(models.BatchJobCreateOptions(id="plain", pool_info=models.BatchPoolInfo(pool_id=POOL)))
    key_client.create_task("plain", models.BatchTaskCreateOptions(
        id="t", command_line="/bin/sh -c 'echo token=${AZ_BATCH_AUTHENTICATION_TOKEN:-none}'"))
    wait_tasks_done(key_client, "plain")
    assert b"".join(key_client.download_task_file("plain", "t", "stdout.txt")) == b"token=none\n"


@pytest.mark.parametrize("settings", [{"access": ["pool"]}, {"access": "job"}, {"access": [7]}, "job"])
def test_bad_token_settings_are_refused(tls_shoal: RunningShoal, key_client: Any, settings: Any) -> None:
    if "bad" not in [job.id for job in key_client.list_jobs()]:
        key_client.create_job(models.BatchJobCreateOptions(id="bad", pool_info=models.BatchPoolInfo(pool_id=POOL)))
    body = json.dumps({"id": "t", "commandLine": "/bin/true", "authenticationTokenSettings": settings}).encode()
    response = call(tls_shoal, "POST", "/jobs/bad/tasks", body=body)
    assert_batch_error(response, 400, "InvalidPropertyValue")
    assert list(key_client.list_tasks("bad")) == []


def _modes(tls_shoal: RunningShoal, *modes: str) -> Any:
    return cli(tls_shoal, "account", "auth-modes", *modes)


def _running_task_token(key_client: Any, job_id: str) -> str:
    """The authentication token of a task "sleeper" of a new job, which the task prints and then
    keeps valid by running for a minute."""
    key_client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    sleeper = models.BatchTaskCreateOptions(
        id="sleeper", command_line="/bin/sh -c 'echo $AZ_BATCH_AUTHENTICATION_TOKEN; exec sleep 60'")
    sleeper["authenticationTokenSettings"] = {"access": ["job"]}
    key_client.create_task(job_id, sleeper)
    wait_task_state(key_client, job_id, "sleeper", "running", 30)

    def printed() -> bytes:
        try:
            return b"".join(key_client.download_task_file(job_id, "sleeper", "stdout.txt")).strip()
        except ResourceNotFoundError:
            return b""  # running, but its stdout is not there yet

    return wait_for(printed, 30, message="the task's token on its stdout").decode()


def test_allowed_authentication_modes_are_enforced(tls_shoal: RunningShoal, key_client: Any) -> None:
    principal = create_principal(tls_shoal, "modes")
    assign_role(tls_shoal, principal, "Reader")
    aad = access_token(tls_shoal, principal)
    task_token = _running_task_token(key_client, "modes")
    assert _modes(tls_shoal).stdout.split() == ["SharedKey", "AAD", "TaskAuthenticationToken"]
    assert json.loads(_modes(tls_shoal, "--json").stdout) == {
        "allowedAuthenticationModes": ["SharedKey", "AAD", "TaskAuthenticationToken"]}
    assert call(tls_shoal, "GET", "/jobs/modes", token=task_token).status_code == 200
    try:
        assert _modes(tls_shoal, "SharedKey", "AAD").returncode == 0
        body = assert_batch_error(call(tls_shoal, "GET", "/jobs/modes", token=task_token), 401, "AuthenticationFailed")
        assert "TaskAuthenticationToken authentication is disabled" in json.dumps(body)
        assert call(tls_shoal, "GET", "/pools", token=aad).status_code == 200
        assert _modes(tls_shoal, "SharedKey,TaskAuthenticationToken").returncode == 0
        body = assert_batch_error(call(tls_shoal, "GET", "/pools", token=aad), 401, "AuthenticationFailed")
        assert "AAD authentication is disabled" in json.dumps(body)
        assert call(tls_shoal, "GET", "/jobs/modes", token=task_token).status_code == 200
        # Shared Key is how the account is managed: it cannot go, and nothing changes when asked.
        refused = _modes(tls_shoal, "AAD")
        assert refused.returncode == 1 and "InvalidPropertyValue" in refused.stdout
        assert _modes(tls_shoal, "Kerberos").returncode == 1
        assert _modes(tls_shoal).stdout.split() == ["SharedKey", "TaskAuthenticationToken"]
    finally:
        assert _modes(tls_shoal, "SharedKey", "AAD", "TaskAuthenticationToken").returncode == 0
    assert call(tls_shoal, "GET", "/pools", token=aad).status_code == 200
    # Terminated, the task's token stops working at once.
    key_client.terminate_task("modes", "sleeper")
    wait_task_state(key_client, "modes", "sleeper", "completed")
    assert_batch_error(call(tls_shoal, "GET", "/jobs/modes", token=task_token), 401, "AuthenticationFailed")


def _dashboard(tls_shoal: RunningShoal) -> httpx.Client:
    return httpx.Client(base_url=tls_shoal.endpoint, follow_redirects=False, timeout=30, verify=verifier(tls_shoal))


def _sign_in(browser: httpx.Client, secret: str) -> httpx.Response:
    return browser.post("/ui/signin", data={"key": secret, "next": "/ui/pools"})


def test_a_principal_signs_in_to_the_dashboard_with_its_access_token(tls_shoal: RunningShoal,
                                                                     key_client: Any) -> None:
    """Issue 12: the dashboard takes a service principal's token as well as the key; the session
    names the principal, never holds the token, and ends when the principal is deleted."""
    principal = create_principal(tls_shoal, "dashboard-user")
    token = access_token(tls_shoal, principal)
    with _dashboard(tls_shoal) as browser:
        assert browser.get("/ui/pools").status_code == 303  # not signed in yet
        response = _sign_in(browser, token)
        assert response.status_code == 303 and response.headers["location"] == "/ui/pools"
        cookie = browser.cookies.get("shoal_ui_session")
        assert cookie and token not in cookie and principal["clientSecret"] not in cookie
        assert principal["clientId"] in cookie  # whose session it is, in the clear and signed
        # A new principal holds no role: signed in, it is shown nothing, as the REST API would.
        for path in ("/ui/pools", f"/ui/pools/{POOL}", "/ui/jobs", "/ui/usage"):
            refused = browser.get(path)
            assert refused.status_code == 403 and "AuthorizationFailure" in refused.text, path
            assert POOL not in refused.text or path.endswith(POOL)
        assign_role(tls_shoal, principal, "Reader")
        page = wait_for(lambda: (shown := browser.get("/ui/pools")).status_code == 200 and shown, 15,
                        message="the Reader's pools page")
        assert POOL in page.text and token not in page.text
        # A Reader reads a node's page but may not act on the node.
        (node,) = key_client.list_nodes(POOL)
        node_page = browser.get(f"/ui/pools/{POOL}/nodes/{quote(node.id)}")
        assert node_page.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', node_page.text).group(1)  # type: ignore[union-attr]
        acted = browser.post(f"/ui/pools/{POOL}/nodes/{quote(node.id)}/action",
                             data={"action": "disablescheduling", "csrf": csrf})
        assert acted.status_code == 403 and "pools/write" in acted.text
        assert key_client.get_node(POOL, node.id).scheduling_state == "enabled"
        # A forged principal in the cookie breaks its signature.
        parts = cookie.split(".")
        other = create_principal(tls_shoal, "dashboard-other")
        browser.cookies.set("shoal_ui_session", ".".join([*parts[:5], other["clientId"], parts[6]]), path="/ui")
        assert browser.get("/ui/pools").status_code == 303
        browser.cookies.set("shoal_ui_session", cookie, path="/ui")
        assert browser.get("/ui/pools").status_code == 200
        assert cli(tls_shoal, "principal", "delete", principal["clientId"]).returncode == 0
        wait_for(lambda: browser.get("/ui/pools").status_code == 303, 15, message="the session to end")


def test_the_dashboard_refuses_task_tokens_forged_and_disallowed_tokens(tls_shoal: RunningShoal,
                                                                        key_client: Any) -> None:
    principal = create_principal(tls_shoal, "dashboard-modes")
    assign_role(tls_shoal, principal, "Reader")
    token = access_token(tls_shoal, principal)
    task_token = _running_task_token(key_client, "uitoken")
    head, body, signature = token.split(".")
    forged_signature = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with _dashboard(tls_shoal) as browser:
        for refused, why in [(task_token, "task authentication token"),
                             (f"{head}.{body}.{forged_signature}", "signature"), ("a.b.c", "JSON Web Token"),
                             ("not-a-key", "neither"), ("\x00.\x00.\x00", "")]:
            response = _sign_in(browser, refused)
            assert response.status_code == 403, refused
            message = response.text.split('id="signin-error">', 1)[1].split("<", 1)[0]
            assert why in message and not browser.cookies.get("shoal_ui_session"), message
        assert _sign_in(browser, token).status_code == 303
        assert browser.get("/ui/pools").status_code == 200
        try:
            assert _modes(tls_shoal, "SharedKey,TaskAuthenticationToken").returncode == 0
            wait_for(lambda: browser.get("/ui/pools").status_code == 303, 15, message="AAD sessions to end")
            browser.cookies.clear()
            response = _sign_in(browser, token)
            assert response.status_code == 403 and "AAD authentication is disabled" in response.text
            assert _sign_in(browser, tls_shoal.primary_key).status_code == 303  # the key still works
        finally:
            assert _modes(tls_shoal, "SharedKey", "AAD", "TaskAuthenticationToken").returncode == 0
    key_client.terminate_task("uitoken", "sleeper")
