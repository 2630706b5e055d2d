"""Helpers of the identity tests: principals made with the real CLI, tokens from the real token
endpoint, and the server's signing keys (read from its store) for tokens only an attacker or a
broken clock would send."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx

from shoal.testing.server import RunningShoal
from tests.acceptance.rest import verifier

BATCH_SCOPE = "https://batch.core.windows.net//.default"


def cli(shoal: RunningShoal, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args, "--data-dir", str(shoal.data_dir)],
                          capture_output=True, text=True, timeout=60)


def create_principal(shoal: RunningShoal, name: str, *extra: str) -> dict[str, Any]:
    out = cli(shoal, "principal", "create", name, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assign_role(shoal: RunningShoal, principal: dict[str, Any], role: str, *extra: str) -> dict[str, Any]:
    """Give a principal a role with the real CLI: a new principal holds none, as on Azure."""
    out = cli(shoal, "role", "assign", principal["clientId"], role, "--json", *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def token_request(shoal: RunningShoal, tenant: str, form: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{shoal.endpoint}/{tenant}/oauth2/v2.0/token", data=form, verify=verifier(shoal), timeout=30)


def access_token(shoal: RunningShoal, principal: dict[str, Any], scope: str = BATCH_SCOPE) -> str:
    response = token_request(shoal, principal["tenantId"], {
        "grant_type": "client_credentials", "client_id": principal["clientId"],
        "client_secret": principal["clientSecret"], "scope": scope})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def signing_keys(shoal: RunningShoal) -> Any:
    from shoal.service import tokens
    from shoal.store.db import create_store_engine

    engine = create_store_engine(f"sqlite:///{shoal.data_dir / 'shoal.db'}")
    try:
        return tokens.load_or_create(engine)
    finally:
        engine.dispose()


def credential(shoal: RunningShoal, principal: dict[str, Any]) -> Any:
    """azure-identity's ClientSecretCredential pointed at Shoal as its authority."""
    from azure.identity import ClientSecretCredential

    # MSAL sends instance discovery to login.microsoftonline.com for any authority it does not know,
    # never to the authority: a client of Shoal turns it off (Shoal answers the discovery documents).
    return ClientSecretCredential(principal["tenantId"], principal["clientId"], principal["clientSecret"],
                                  authority=shoal.endpoint, disable_instance_discovery=True,
                                  connection_verify=shoal.ca_file)


def token_client(shoal: RunningShoal, principal: dict[str, Any]) -> Any:
    """The azure-batch SDK signed in as ``principal`` (bearer tokens over https)."""
    from azure.batch import BatchClient

    return BatchClient(shoal.endpoint, credential(shoal, principal), connection_verify=shoal.ca_file)


def client_with_pool(shoal: RunningShoal, pool_id: str) -> Any:
    """The account key's SDK client, with a one-node pool up for the tokens' jobs to run on."""
    from tests.helpers import pool_options, wait_pool_idle

    client = shoal.client()
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=1))
    wait_pool_idle(client, pool_id, 1)
    return client
