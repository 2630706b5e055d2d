"""Who is calling: every Batch request is authenticated here before anything else is read (the
body included), by one of the three ways Batch knows:

- **SharedKey**: the account key's HMAC over the request (`shoal/sharedkey.py`);
- **AAD**: `Authorization: Bearer <jwt>`, an access token Shoal's token endpoint gave a service
  principal (`shoal/api/identity.py`): its signature, audience, expiry (with a small skew), its
  issuer and tenant (the account's), and a principal that still exists;
- **TaskAuthenticationToken**: `Bearer <AZ_BATCH_AUTHENTICATION_TOKEN>`, good while its task
  attempt runs, and only for that task's job (its tasks included).

The account's `allowedAuthenticationModes` then decides whether that way is allowed at all.
What the store says (principals, the account's policy) is cached here for a few seconds: a
bearer request costs a signature check, not a store round trip. A task token is checked against
the store every time, so it stops working the moment its task ends."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode

from starlette.requests import Request

from shoal import sharedkey
from shoal.errors import BatchError, Unauthenticated
from shoal.service import principals, tokens

if TYPE_CHECKING:
    from shoal.service.context import Context
    from shoal.store.runner import StoreRunner

SHARED_KEY, AAD, TASK_TOKEN = principals.AUTH_MODES
# How long what the store says about principals and the account's policy is believed. A
# principal deleted through this server is forgotten at once; through another replica, within this.
STORE_CACHE_S = 5.0
# Tokens whose signature is known good, kept by their SHA-256 (cleared when full).
MAX_VERIFIED_TOKENS = 10_000


@dataclass(frozen=True)
class Identity:
    """What bearer tokens are checked with: the signing keys, and the authority (the server's
    endpoint) their issuer names."""

    keys: tokens.SigningKeys
    authority: str


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of a request (`request.state.caller`)."""

    mode: str
    account: str
    # The service principal's client id and object id (AAD); the job a task token is good for.
    client_id: str | None = None
    job_id: str | None = None
    object_id: str | None = None


class Forbidden(BatchError):
    status = 403
    code = "AuthorizationFailure"

    def __init__(self, message: str = "This request is not authorized to perform this operation.") -> None:
        super().__init__(message)


class ModeNotAllowed(Unauthenticated):
    def __init__(self, mode: str) -> None:
        super().__init__("Server failed to authenticate the request. The authentication mode is not allowed "
                         "for this account.",
                         values={"AuthenticationErrorDetail": f"{mode} authentication is disabled for this "
                                                              "account (allowedAuthenticationModes)."})


class Authenticator:
    """Authenticates the requests of one server: holds the account keys, the token signing keys
    and the short-lived caches of what the store says."""

    def __init__(self, ctx: Context, keys: dict[str, tuple[str, str]], runner: StoreRunner,
                 identity: Identity | None = None) -> None:
        self.ctx = ctx
        self.keys = keys
        self.runner = runner
        self.identity = identity
        self._principals: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._policy: tuple[principals.AccountPolicy, float] | None = None
        self._verified_tokens: dict[bytes, tokens.AccessClaims | tokens.TaskClaims] = {}

    async def authenticate(self, request: Request) -> Caller:
        """Verify the caller, then leave the handlers exactly the query that was signed."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        query = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        sharedkey.refuse_ambiguity(query, request.headers.items())
        scheme, _, credential = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            caller = await self._bearer(credential.strip(), path)
        else:
            account = sharedkey.verify(request.method, path, query, request.headers, self._keys_for)
            caller = Caller(SHARED_KEY, account)
        if self.identity is not None and caller.mode not in (await self.policy()).allowed_modes:
            raise ModeNotAllowed(caller.mode)
        if any(not value for _name, value in query):
            # The SDK's canonical form does not sign blank parameters: handlers must not see them.
            request.scope["query_string"] = urlencode([(n, v) for n, v in query if v]).encode("latin-1")
            request.__dict__.pop("_query_params", None)
        request.state.caller = caller
        return caller

    def _keys_for(self, account: str) -> tuple[str, ...] | None:
        pair = self.keys.get(account)
        return pair if pair else None

    async def _bearer(self, token: str, path: str) -> Caller:
        if self.identity is None:
            raise tokens.InvalidToken("This server accepts no bearer tokens.")
        if not token:
            raise tokens.InvalidToken("The bearer token is missing.")
        claims = self._verified(token)
        if isinstance(claims, tokens.TaskClaims):
            return await self._task_caller(claims, path)
        await self._check_principal(claims)
        return Caller(AAD, self.ctx.account, client_id=claims.client_id, object_id=claims.object_id)

    async def _check_principal(self, claims: tokens.AccessClaims) -> None:
        assert self.identity is not None
        if claims.issuer != tokens.issuer(self.identity.authority, claims.tenant_id):
            raise tokens.InvalidToken("The token's issuer is not this server's authority.")
        refusal = await self.principal_refusal(claims)
        if refusal:
            raise tokens.InvalidToken(refusal)

    async def principal_refusal(self, claims: tokens.AccessClaims) -> str | None:
        """Why the principal of once-accepted claims is refused now (its tenant is not the
        account's, or it was deleted), or None."""
        if claims.tenant_id != (await self.policy()).tenant_id:
            return "The token was issued for another tenant than the account's."
        if await self._principal_tenant(claims) != claims.tenant_id:
            return "The token's service principal does not exist."
        return None

    async def principal_of(self, token: str) -> tokens.AccessClaims:
        """The claims of a service principal's access token that this account accepts now (the
        dashboard's sign-in): a task token, or a token while AAD is not allowed, is refused."""
        if self.identity is None:
            raise tokens.InvalidToken("This server accepts no bearer tokens (start it with --tls).")
        claims = self._verified(token)
        if isinstance(claims, tokens.TaskClaims):
            raise tokens.InvalidToken("A task authentication token cannot sign in to the dashboard.")
        await self._check_principal(claims)
        if AAD not in (await self.policy()).allowed_modes:
            raise ModeNotAllowed(AAD)
        return claims

    def _verified(self, token: str) -> tokens.AccessClaims | tokens.TaskClaims:
        """The token's claims: its signature is checked once, then remembered until it expires
        (a client sends the same token for its hour); expiry is checked on every use."""
        assert self.identity is not None
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        claims = self._verified_tokens.get(digest)
        if claims is None or time.time() > claims.expires + tokens.CLOCK_SKEW_S:
            self._verified_tokens.pop(digest, None)
            claims = tokens.verify(self.identity.keys, token)
            if len(self._verified_tokens) >= MAX_VERIFIED_TOKENS:
                self._verified_tokens.clear()  # a bound, not a policy: verifying again is cheap
            self._verified_tokens[digest] = claims
        return claims

    async def _task_caller(self, claims: tokens.TaskClaims, path: str) -> Caller:
        if claims.account != self.ctx.account:
            raise tokens.InvalidToken("The token was issued for another account.")
        if not await self.runner.read(tokens.task_is_running, self.ctx.engine, claims):
            raise tokens.InvalidToken("The task the token was issued to is no longer running.")
        if not within_job(path, claims.job_id):
            raise Forbidden("This request is not authorized to perform this operation: a task authentication "
                            "token allows operations on its own job only.")
        return Caller(TASK_TOKEN, claims.account, job_id=claims.job_id)

    async def policy(self) -> principals.AccountPolicy:
        cached = self._policy
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        policy = await self.runner.read(_read_policy, self.ctx)
        self._policy = (policy, time.monotonic() + STORE_CACHE_S)
        return policy

    async def _principal_tenant(self, claims: tokens.AccessClaims) -> str | None:
        key = (claims.object_id, claims.client_id)
        cached = self._principals.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        tenant = await self.runner.read(principals.principal_tenant, self.ctx, claims.object_id, claims.client_id)
        if len(self._principals) > 10_000:
            self._principals.clear()  # a bound, not a policy: entries are cheap to read again
        self._principals[key] = (tenant, time.monotonic() + STORE_CACHE_S)
        return tenant

    def forget_principal(self, object_id: str, client_id: str) -> None:
        self._principals.pop((object_id, client_id), None)

    def forget_policy(self) -> None:
        self._policy = None


def _read_policy(ctx: Context) -> principals.AccountPolicy:
    with ctx.engine.connect() as conn:
        return principals.account_policy(conn, ctx.account)


def within_job(path: str, job_id: str) -> bool:
    """Whether a request path is the job's or beneath it (`/jobs/{job}` and its tasks, files…)."""
    parts = path.split("/")
    return len(parts) >= 3 and parts[0] == "" and parts[1] == "jobs" and unquote(parts[2]).lower() == job_id.lower()
