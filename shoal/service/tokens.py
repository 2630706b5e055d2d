"""The tokens Shoal signs: Entra-style access tokens for service principals (RS256, checked
against the JWKS the discovery document names) and task authentication tokens (HS256, only
ever checked by Shoal itself).

Both keys live in the store (`signing_keys`), made on first start, so every replica signs and
checks with the same ones. What a token carries is checked here (signature, algorithm, audience,
expiry with a small skew, the claims Shoal needs); whether its principal or task still exists,
and what it may touch, is the API's to decide (`shoal.api.auth`)."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from shoal import clock
from shoal.errors import Unauthenticated
from shoal.store.schema import signing_keys
from shoal.store.sealing import Sealer, purpose

# The resource the azure-batch SDK asks a token for (its scope is this plus ".default").
BATCH_AUDIENCE = "https://batch.core.windows.net/"
# Entra gives this audience both with and without its trailing slash.
ACCEPTED_AUDIENCES = (BATCH_AUDIENCE, BATCH_AUDIENCE.rstrip("/"))
# The resource ARM clients (azure-mgmt-batch) ask a token for: the management API's, never the
# data plane's, so a token for one is refused by the other (shoal/api/management.py).
MANAGEMENT_AUDIENCE = "https://management.azure.com/"
MANAGEMENT_AUDIENCES = (MANAGEMENT_AUDIENCE, MANAGEMENT_AUDIENCE.rstrip("/"))
ACCESS_TOKEN_LIFETIME_S = 3600
# A token is good this long either side of its nbf/exp, for clocks that differ a little.
CLOCK_SKEW_S = 300
# A task token's own expiry is only a backstop: it stops working when its task ends. Tasks live
# at most 180 days (semantics §6.2).
TASK_TOKEN_LIFETIME_S = 180 * 86400
RSA_KEY_BITS = 2048
ACCESS, TASK = "access", "task"
# Tokens bigger than this are refused unread: no client sends one, and decoding costs.
MAX_TOKEN_CHARS = 16 * 1024


class InvalidToken(Unauthenticated):
    """A bearer token Shoal does not accept; the detail says why (never the token itself)."""

    def __init__(self, detail: str) -> None:
        super().__init__("Server failed to authenticate the request. The bearer token is not valid.",
                         values={"AuthenticationErrorDetail": detail})


@dataclass(frozen=True)
class AccessClaims:
    """What an accepted access token says about its caller."""

    tenant_id: str
    client_id: str
    object_id: str
    issuer: str
    # When it expires (Unix seconds), for a cache of verified tokens to honour.
    expires: float = 0.0


@dataclass(frozen=True)
class TaskClaims:
    account: str
    job_id: str
    task_id: str
    attempt: int
    expires: float = 0.0


@dataclass(frozen=True)
class SigningKeys:
    access_kid: str
    access_private: rsa.RSAPrivateKey
    task_kid: str
    task_secret: bytes

    def jwks(self) -> dict[str, Any]:
        """The public half of the access token key, as a JSON Web Key Set."""
        numbers = self.access_private.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.access_kid,
                          "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}]}


def _b64url_uint(value: int) -> str:
    data = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_or_create(engine: Engine, sealer: Sealer | None = None) -> SigningKeys:
    """The store's signing keys; made on the first start (of any replica: the first one wins)."""
    sealer = sealer or Sealer()
    try:
        _create_missing_keys(engine, sealer)
    except IntegrityError:
        pass  # another replica made them at the same moment: its keys are the ones
    with engine.connect() as conn:
        rows = {row.purpose: row for row in conn.execute(select(signing_keys))}
    label = purpose(signing_keys, "secret")
    access_pem, task_secret = (str(sealer.unseal(rows[name].secret, label)) for name in (ACCESS, TASK))
    private = serialization.load_pem_private_key(access_pem.encode("ascii"), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return SigningKeys(rows[ACCESS].kid, private, rows[TASK].kid, task_secret.encode("ascii"))


def _create_missing_keys(engine: Engine, sealer: Sealer) -> None:
    label = purpose(signing_keys, "secret")
    with engine.begin() as conn:
        rows = {row.purpose: row for row in conn.execute(select(signing_keys))}
        if ACCESS not in rows:
            key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
            conn.execute(signing_keys.insert().values(kid=uuid.uuid4().hex, purpose=ACCESS,
                                                      secret=sealer.seal(pem, label),
                                                      created=clock.now()))
        if TASK not in rows:
            conn.execute(signing_keys.insert().values(kid=uuid.uuid4().hex, purpose=TASK,
                                                      secret=sealer.seal(secrets.token_urlsafe(48), label),
                                                      created=clock.now()))


def issuer(base_url: str, tenant_id: str) -> str:
    """Entra's v2.0 issuer shape, on Shoal's own authority."""
    return f"{base_url.rstrip('/')}/{tenant_id}/v2.0"


def mint_access_token(keys: SigningKeys, *, issuer_url: str, tenant_id: str, client_id: str, object_id: str,
                      audience: str = BATCH_AUDIENCE, now: datetime | None = None,
                      lifetime_s: int = ACCESS_TOKEN_LIFETIME_S) -> str:
    issued = int((now or clock.now()).timestamp())
    claims = {"aud": audience, "iss": issuer_url, "iat": issued, "nbf": issued, "exp": issued + lifetime_s,
              "tid": tenant_id, "appid": client_id, "azp": client_id, "oid": object_id, "sub": object_id,
              "idtyp": "app", "ver": "2.0", "uti": secrets.token_urlsafe(16)}
    return jwt.encode(claims, keys.access_private, algorithm="RS256", headers={"kid": keys.access_kid})


def mint_task_token(keys: SigningKeys, *, account: str, job_id: str, task_id: str, attempt: int,
                    now: datetime | None = None) -> str:
    issued = int((now or clock.now()).timestamp())
    claims = {"aud": BATCH_AUDIENCE, "iat": issued, "exp": issued + TASK_TOKEN_LIFETIME_S, "acct": account,
              "job": job_id, "task": task_id, "attempt": attempt}
    return jwt.encode(claims, keys.task_secret, algorithm="HS256", headers={"kid": keys.task_kid})


def verify(keys: SigningKeys, token: str,
           audiences: tuple[str, ...] = ACCEPTED_AUDIENCES) -> AccessClaims | TaskClaims:
    """The claims of a token Shoal signed and that is good now; InvalidToken otherwise. The key is
    chosen by the header's kid and each key admits exactly one algorithm, so an RS256 public key
    can never be passed off as an HMAC secret. ``audiences``: what an access token must be for
    (the data plane's by default); a task token is only ever the data plane's."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("The token is too long.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("The token is not a JSON Web Token.") from None
    kid = header.get("kid")
    try:
        if kid == keys.access_kid:
            claims = jwt.decode(token, keys.access_private.public_key(), algorithms=["RS256"],
                                audience=list(audiences), leeway=CLOCK_SKEW_S,
                                options={"require": ["exp", "iat", "aud", "iss", "tid", "oid", "appid"]})
            return _access_claims(claims)
        if kid == keys.task_kid:
            claims = jwt.decode(token, keys.task_secret, algorithms=["HS256"], audience=BATCH_AUDIENCE,
                                leeway=CLOCK_SKEW_S, options={"require": ["exp", "iat", "aud"]})
            return _task_claims(claims)
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The token is expired.") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("The token is not valid yet.") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken(f"The token's audience is not {audiences[0]}.") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("The token's signature is not valid.") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"The token is not valid: {type(exc).__name__}.") from None
    raise InvalidToken("The token is not signed by a key of this server.")


def _text_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidToken(f"The token's '{name}' claim is missing or not valid.")
    return value


def _access_claims(claims: dict[str, Any]) -> AccessClaims:
    return AccessClaims(_text_claim(claims, "tid"), _text_claim(claims, "appid"), _text_claim(claims, "oid"),
                        _text_claim(claims, "iss"), float(claims["exp"]))


def _task_claims(claims: dict[str, Any]) -> TaskClaims:
    attempt = claims.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise InvalidToken("The token's 'attempt' claim is missing or not valid.")
    return TaskClaims(_text_claim(claims, "acct"), _text_claim(claims, "job"), _text_claim(claims, "task"),
                      attempt, float(claims["exp"]))


def task_is_running(engine: Engine, claims: TaskClaims) -> bool:
    """Whether the attempt a task token was made for is still running: a token stops working
    when its task ends (or is requeued, retried or deleted)."""
    from shoal.model.states import TaskState
    from shoal.store.schema import jobs, tasks

    with engine.connect() as conn:
        row = conn.execute(select(tasks.c.state, tasks.c.attempt).join(jobs, jobs.c.seq == tasks.c.job_seq)
                           .where(jobs.c.account == claims.account, jobs.c.key == claims.job_id.lower(),
                                  tasks.c.key == claims.task_id.lower())).first()
    return row is not None and row.state == TaskState.RUNNING and row.attempt == claims.attempt
