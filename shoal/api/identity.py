"""Shoal as an Entra-style authority, enough for `azure-identity`'s ClientSecretCredential:

- `GET /{tenant}/v2.0/.well-known/openid-configuration` — the tenant discovery document MSAL reads
  first (it names the token endpoint and the JWKS);
- `GET /{tenant}/discovery/v2.0/keys` — the public key access tokens are signed with;
- `POST /{tenant}/oauth2/v2.0/token` — OAuth2 client credentials: a service principal's client id
  and secret for an access token to the scope the Batch SDK asks for;
- `GET /common/discovery/instance` — instance discovery. MSAL sends it to login.microsoftonline.com,
  never to the authority itself, for any authority it does not know: clients pointed at Shoal pass
  `disable_instance_discovery=True` (or their MSAL's `instance_discovery` URL here).

These are unauthenticated, as on Entra, and answer in OAuth's error shape (`error`,
`error_description`), not Batch's. The principals and tenants are managed through
`/shoal/v1/principals` and `/shoal/v1/tenants`, with Shared Key only (an account administrator's).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shoal import clock
from shoal.api.auth import SHARED_KEY, Forbidden, Identity
from shoal.api.http import dumps, empty_response, json_response, parse_json, read_body
from shoal.errors import BatchError
from shoal.service import accounts, principals, tokens
from shoal.service.context import Context
from shoal.store.runner import Busy

# A token request is a few form fields; anything bigger is refused before it is read whole.
MAX_TOKEN_REQUEST_BYTES = 16 * 1024
# The scopes a client may ask for: the Batch resource's default scope, in both spellings the
# SDKs use (the resource with its trailing slash, plus "/.default").
BATCH_SCOPES = (tokens.BATCH_AUDIENCE + "/.default", tokens.BATCH_AUDIENCE + ".default")
# The management API's (azure-mgmt-batch asks for "https://management.azure.com/.default").
MANAGEMENT_SCOPES = (tokens.MANAGEMENT_AUDIENCE + ".default", tokens.MANAGEMENT_AUDIENCE + "/.default")
# Each scope a client may ask for, and the audience its token is minted for.
AUDIENCE_OF_SCOPE = {**{scope: tokens.BATCH_AUDIENCE for scope in BATCH_SCOPES},
                     **{scope: tokens.MANAGEMENT_AUDIENCE for scope in MANAGEMENT_SCOPES}}
OPENID_CONFIGURATION_PATH = "/{tenant}/v2.0/.well-known/openid-configuration"
KEYS_PATH = "/{tenant}/discovery/v2.0/keys"
TOKEN_PATH = "/{tenant}/oauth2/v2.0/token"
INSTANCE_DISCOVERY_PATH = "/common/discovery/instance"
# The authority's routes: unauthenticated, as on Entra, and no Batch operations.
AUTHORITY_PATHS = (OPENID_CONFIGURATION_PATH, KEYS_PATH, TOKEN_PATH, INSTANCE_DISCOVERY_PATH)


class OAuthError(Exception):
    """An answer in OAuth 2.0's error shape (RFC 6749 §5.2), with Entra's AADSTS code."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def _oauth_response(failure: OAuthError) -> Response:
    now = clock.now()
    body = {"error": failure.error, "error_description": f"AADSTS{failure.code}: {failure.description}",
            "error_codes": [failure.code], "timestamp": clock.iso(now), "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4())}
    return Response(dumps(body), status_code=failure.status, media_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _json(payload: Any, *, cache: bool = False) -> Response:
    headers = {} if cache else {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return Response(dumps(payload), media_type="application/json", headers=headers)


def routes(api: Any, identity: Identity | None) -> list[Route]:
    """The authority's routes, and the extension routes that manage principals and tenants."""
    ctx: Context = api.ctx
    runner = api.runner

    def authority_route(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        operation = f"authority_{handler.__name__}"

        async def endpoint(request: Request) -> Response:
            # What the request log and /metrics count it under (shoal/api/access_log.py).
            request.state.operation = operation
            if identity is None:
                return _oauth_response(OAuthError(404, "invalid_request", 90002, "This server issues no tokens."))
            try:
                return await handler(request)
            except OAuthError as failure:
                return _oauth_response(failure)
            except Busy:
                return _oauth_response(OAuthError(503, "temporarily_unavailable", 90033,
                                                  "The server is busy; retry later."))
            except BatchError as error:
                return _oauth_response(OAuthError(error.status, "invalid_request", 900144, error.message))
            except ClientDisconnect:
                return Response(status_code=499)

        return endpoint

    async def known_tenant(tenant_id: str) -> str:
        try:
            uuid.UUID(tenant_id)
        except ValueError:
            raise OAuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant_id[:64]}' not found.") from None
        if not await runner.read(principals.tenant_exists, ctx, tenant_id):
            raise OAuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant_id}' not found.")
        return tenant_id

    async def openid_configuration(request: Request) -> Response:
        assert identity is not None
        tenant_id = await known_tenant(request.path_params["tenant"])
        base = identity.authority.rstrip("/")
        return _json({
            "issuer": tokens.issuer(base, tenant_id),
            "token_endpoint": f"{base}/{tenant_id}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant_id}/oauth2/v2.0/authorize",
            "jwks_uri": f"{base}/{tenant_id}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": [*BATCH_SCOPES, *MANAGEMENT_SCOPES],
            "tenant_region_scope": None,
            "cloud_instance_name": urlsplit(base).netloc,
        }, cache=True)

    async def keys(request: Request) -> Response:
        assert identity is not None
        await known_tenant(request.path_params["tenant"])
        return _json(identity.keys.jwks(), cache=True)

    async def instance_discovery(request: Request) -> Response:
        assert identity is not None
        endpoint = request.query_params.get("authorization_endpoint") or ""
        parts = urlsplit(endpoint).path.split("/")
        tenant = parts[1] if len(parts) > 1 and parts[1] else "common"
        base = identity.authority.rstrip("/")
        host = urlsplit(base).netloc
        return _json({"tenant_discovery_endpoint": f"{base}/{tenant}/v2.0/.well-known/openid-configuration",
                      "api-version": "1.1",
                      "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]},
                     cache=True)

    async def token(request: Request) -> Response:
        assert identity is not None
        tenant_id = await known_tenant(request.path_params["tenant"])
        raw = await read_body(request, MAX_TOKEN_REQUEST_BYTES)
        form = _form(raw)
        if form.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type: only client_credentials is served.")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not client_id or not secret:
            raise OAuthError(400, "invalid_request", 900144,
                             "The request body must contain the parameters 'client_id' and 'client_secret'.")
        scope = form.get("scope") or ""
        if scope.split() != [scope] or scope not in AUDIENCE_OF_SCOPE:
            raise OAuthError(400, "invalid_scope", 70011,
                             f"The provided value for the input parameter 'scope' is not valid: only "
                             f"{BATCH_SCOPES[0]} and {MANAGEMENT_SCOPES[0]} are served.")
        row = await runner.read(principals.check_client_secret, ctx, tenant_id, client_id, secret)
        if row is None:
            raise OAuthError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id[:64]}' was not found in the tenant.")
        if row is False:
            raise OAuthError(401, "invalid_client", 7000215, "Invalid client secret provided.")
        access_token = tokens.mint_access_token(identity.keys, issuer_url=tokens.issuer(identity.authority, tenant_id),
                                                tenant_id=tenant_id, client_id=row.client_id,
                                                object_id=row.object_id, audience=AUDIENCE_OF_SCOPE[scope])
        return _json({"token_type": "Bearer", "expires_in": tokens.ACCESS_TOKEN_LIFETIME_S,
                      "ext_expires_in": tokens.ACCESS_TOKEN_LIFETIME_S, "access_token": access_token})

    def shared_key_only(request: Request) -> None:
        if request.state.caller.mode != SHARED_KEY:
            raise Forbidden("Only the account's keys (Shared Key) may manage principals and tenants.")

    async def create_principal(request: Request, ctx: Context) -> Response:
        shared_key_only(request)
        created = principals.create_principal(ctx, parse_json(await request.body()))
        return json_response(request, created, status=201)

    async def list_principals(request: Request, ctx: Context) -> Response:
        shared_key_only(request)
        return json_response(request, {"value": principals.list_principals(ctx)})

    async def delete_principal(request: Request, ctx: Context) -> Response:
        shared_key_only(request)
        gone = principals.delete_principal(ctx, request.path_params["principal"])
        api.auth.forget_principal(gone["objectId"], gone["clientId"])
        api.authz.forget()
        return empty_response(request, 200)

    async def create_tenant(request: Request, ctx: Context) -> Response:
        shared_key_only(request)
        body = parse_json(await request.body())
        return json_response(request, principals.create_tenant(ctx, body.get("displayName")
                                                               if isinstance(body, dict) else None), status=201)

    async def list_tenants(request: Request, ctx: Context) -> Response:
        shared_key_only(request)
        return json_response(request, {"value": principals.list_tenants(ctx)})

    async def authentication_modes(request: Request, ctx: Context) -> Response:
        if request.method == "GET":
            policy = principals.account_policy_of(ctx)
            return json_response(request, {"allowedAuthenticationModes": list(policy.allowed_modes)})
        shared_key_only(request)
        body = parse_json(await request.body())
        chosen = principals.set_allowed_modes(ctx, body.get("allowedAuthenticationModes")
                                              if isinstance(body, dict) else None)
        api.auth.forget_policy()
        return json_response(request, {"allowedAuthenticationModes": chosen})

    async def regenerate_key(request: Request, ctx: Context) -> Response:
        # On the writer thread (placement "write"), as the management API's regenerateKeys.
        from shoal.api.management import keys_resource, regenerate_and_swap

        shared_key_only(request)
        which = accounts.key_name(parse_json(await request.body()))
        primary, secondary = regenerate_and_swap(api, ctx, which)
        return json_response(request, keys_resource(ctx.account, primary, secondary))

    return [
        Route(OPENID_CONFIGURATION_PATH, authority_route(openid_configuration), methods=["GET"]),
        Route(KEYS_PATH, authority_route(keys), methods=["GET"]),
        Route(TOKEN_PATH, authority_route(token), methods=["POST"]),
        Route(INSTANCE_DISCOVERY_PATH, authority_route(instance_discovery), methods=["GET"]),
        *(Route(path, api.batch(handler, placement, path=path), methods=methods) for path, methods, handler, placement in (
            ("/shoal/v1/principals", ["POST"], create_principal, "write"),
            ("/shoal/v1/principals", ["GET"], list_principals, "read"),
            ("/shoal/v1/principals/{principal}", ["DELETE"], delete_principal, "write"),
            ("/shoal/v1/tenants", ["POST"], create_tenant, "write"),
            ("/shoal/v1/tenants", ["GET"], list_tenants, "read"),
            ("/shoal/v1/account/authentication-modes", ["GET", "PUT"], authentication_modes, "write"),
            ("/shoal/v1/account/regenerate-key", ["POST"], regenerate_key, "write"),
        )),
    ]


def _form(raw: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a repeated field is refused (which one would count?)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", 900144, "The request body is not UTF-8.") from None
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in form:
            raise OAuthError(400, "invalid_request", 90015, f"The parameter '{name[:64]}' is given more than once.")
        form[name] = value
    return form
