"""Azure Batch Shared Key authentication: building, signing and verifying the string to sign.

The canonical form produced by `string_to_sign` is byte-for-byte what the azure-batch 15.1.0 SDK
(`azure.batch._patch.BatchSharedKeyAuthPolicy`) signs, so a request we sign with `sign_request` looks
exactly like one from the SDK. `verify` additionally accepts the few other forms real clients produce
(see `_candidate_strings`), because a client whose signature we refuse is a client that cannot use Shoal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import parse_qsl, urlsplit

from shoal import clock
from shoal.errors import BadRequest, BatchError

# The standard headers whose values are signed, in the order they appear in the string to sign.
SIGNED_STANDARD_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)

# Batch rejects requests whose date is further than this from the server clock (replay protection).
MAX_CLOCK_SKEW_S = 15 * 60

AUTH_SCHEME = "SharedKey"

# Methods for which the SDK leaves a missing Content-Length empty; for all others it signs "0".
_BODYLESS_METHODS = frozenset({"GET", "HEAD"})


class SharedKeyError(BatchError):
    """A request failed Shared Key authentication; `status` is 401 (no usable credentials) or 403.

    Batch reports these as AuthenticationFailed, with the specific reason in the
    AuthenticationErrorDetail value and a generic message.
    """

    code = "AuthenticationFailed"

    def __init__(self, detail: str, *, status: int = 403) -> None:
        super().__init__(
            "Server failed to authenticate the request. Make sure the value of Authorization header is "
            "correctly formed including the signature.",
            status=status,
            values={"AuthenticationErrorDetail": detail},
        )
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # The SDK treats a header with an empty value as absent, for standard and ocp- headers alike.
    return {name.lower(): value for name, value in headers.items() if value}


def _headers_part(method: str, headers: dict[str, str], *, empty_zero_length: bool) -> str:
    values = [headers.get(name, "") for name in SIGNED_STANDARD_HEADERS]
    length_index = SIGNED_STANDARD_HEADERS.index("content-length")
    if empty_zero_length:
        # Storage-style clients leave a zero Content-Length empty.
        if values[length_index] == "0":
            values[length_index] = ""
    elif not values[length_index] and method.upper() not in _BODYLESS_METHODS:
        values[length_index] = "0"
    lines = [method.upper(), *values]
    # The SDK selects ocp- headers with a substring test ("ocp-" in name), not a prefix test.
    ocp = sorted((name, value) for name, value in headers.items() if "ocp-" in name)
    lines.extend(f"{name}:{value}" for name, value in ocp)
    return "\n".join(lines) + "\n"


def _query_part_sdk(query_items: Iterable[tuple[str, str]]) -> str:
    # Mirrors urllib's parse_qs as the SDK uses it: blank values vanish, only the first value of a
    # repeated parameter is signed, names keep their case and sort by code point.
    first_values: dict[str, str] = {}
    for name, value in query_items:
        if value:
            first_values.setdefault(name, value)
    return "".join(f"\n{name}:{first_values[name]}" for name in sorted(first_values))


def _query_part_storage(query_items: Iterable[tuple[str, str]]) -> str:
    # The documented Azure canonicalisation: lower-cased names, repeated values sorted and comma-joined.
    grouped: dict[str, list[str]] = {}
    for name, value in query_items:
        grouped.setdefault(name.lower(), []).append(value)
    return "".join(f"\n{name}:{','.join(sorted(grouped[name]))}" for name in sorted(grouped))


def string_to_sign(
    method: str,
    path_as_sent: str,
    query_items: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    *,
    account: str,
) -> str:
    """The string the azure-batch SDK signs for this request.

    `path_as_sent` is the still percent-encoded URL path; `query_items` are decoded (name, value)
    pairs in arrival order; `headers` may use any letter case.
    """
    return (
        _headers_part(method, _lower_headers(headers), empty_zero_length=False)
        + f"/{account}{path_as_sent}"
        + _query_part_sdk(query_items)
    )


def _candidate_strings(
    method: str,
    path_as_sent: str,
    query_items: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    account: str,
) -> list[str]:
    """Every string a legitimate client could have signed for this request, SDK form first."""
    lowered = _lower_headers(headers)
    header_parts = [
        _headers_part(method, lowered, empty_zero_length=False),
        _headers_part(method, lowered, empty_zero_length=True),
    ]
    # azure-batch 14.x signed the path with %2F and %5C turned into "/" (file paths arrive encoded).
    legacy_path = path_as_sent.replace("%2F", "/").replace("%2f", "/").replace("%5C", "/").replace("%5c", "/")
    paths = [path_as_sent, legacy_path]
    query_parts = [_query_part_sdk(query_items), _query_part_storage(query_items)]
    candidates: list[str] = []
    for header_part in header_parts:
        for path in paths:
            for query_part in query_parts:
                candidate = f"{header_part}/{account}{path}{query_part}"
                if candidate not in candidates:
                    candidates.append(candidate)
    return candidates


def sign(account: str, key_b64: str, string: str) -> str:
    """The Authorization header value for `string` signed with the account's base64 key."""
    return f"{AUTH_SCHEME} {account}:{_signature(key_b64, string)}"


def _signature(key_b64: str, string: str) -> str:
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the account key is not valid base64") from exc
    digest = hmac.new(key, string.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_authorization(value: str | None) -> tuple[str, str]:
    """Split `SharedKey account:signature` into (account, signature)."""
    if not value:
        raise SharedKeyError("The Authorization header is missing.", status=401)
    scheme, _, credentials = value.strip().partition(" ")
    account, sep, signature = credentials.strip().rpartition(":")
    if scheme != AUTH_SCHEME or not sep or not account or not signature:
        raise SharedKeyError(
            "The Authorization header is not in the form 'SharedKey account:signature'.", status=401
        )
    return account, signature


def request_time(headers: Mapping[str, str]) -> datetime:
    """When the client says it sent the request: ocp-date wins over Date, as in Batch."""
    lowered = _lower_headers(headers)
    raw = lowered.get("ocp-date") or lowered.get("date")
    if not raw:
        raise SharedKeyError("The request has neither an ocp-date nor a Date header.")
    sent = clock.parse_http_date(raw)
    if sent is None:
        raise SharedKeyError(f"The request date '{raw[:64]}' is not an RFC 1123 date.")
    return sent


def _is_signed_header(name: str) -> bool:
    return name in SIGNED_STANDARD_HEADERS or "ocp-" in name or name in ("authorization", "x-ms-date")


def refuse_ambiguity(query_items: Sequence[tuple[str, str]], header_items: Iterable[tuple[str, str]]) -> None:
    """Refuse a request that repeats a query parameter (in any letter case) or a header that the
    signature covers. The SDK's canonical form signs only the first value of a repeated
    parameter and a router reads the last: rather than pick, Shoal accepts one value per name,
    so what a handler uses is always what was signed. No Batch operation repeats either."""
    seen: set[str] = set()
    for name, _value in query_items:
        folded = name.lower()
        if folded in seen:
            raise BadRequest("A query parameter is given more than once.", code="InvalidQueryParameterValue",
                             values={"QueryParameterName": name[:64],
                                     "Reason": "Each query parameter may appear once."})
        seen.add(folded)
    seen_headers: set[str] = set()
    for name, _value in header_items:
        folded = name.lower()
        if not _is_signed_header(folded):
            continue
        if folded in seen_headers:
            raise BadRequest("A header is given more than once.", code="InvalidHeaderValue",
                             values={"HeaderName": name[:64], "Reason": "Each signed header may appear once."})
        seen_headers.add(folded)


def verify(
    method: str,
    path_as_sent: str,
    query_items: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    keys_for_account: Callable[[str], Sequence[str] | None],
    *,
    now: datetime | None = None,
) -> str:
    """Check a request's Shared Key signature and date; return the account name or raise SharedKeyError.

    `keys_for_account` returns the account's base64 keys (primary and secondary), or None/empty when
    the account is unknown. Header names may use any letter case.
    """
    lowered = _lower_headers(headers)
    account, signature = parse_authorization(lowered.get("authorization"))
    sent = request_time(lowered)
    current = now or datetime.now(UTC)
    if abs(clock.seconds_between(current, sent)) > MAX_CLOCK_SKEW_S:
        raise SharedKeyError(
            f"The request date {sent.isoformat()} is more than {MAX_CLOCK_SKEW_S // 60} minutes off."
        )
    keys = keys_for_account(account) or ()
    candidates = _candidate_strings(method, path_as_sent, query_items, lowered, account)
    # Bytes, not str: compare_digest refuses str with non-ASCII characters, and the header is
    # whatever the caller sent.
    presented = signature.encode("utf-8", "replace")
    for key in keys:
        for candidate in candidates:
            if hmac.compare_digest(_signature(key, candidate).encode("ascii"), presented):
                return account
    raise SharedKeyError(
        f"The MAC signature found in the HTTP request '{signature[:128]}' is not the same as any computed signature."
    )


def sign_request(method: str, url: str, headers: Mapping[str, str], account: str, key: str) -> dict[str, str]:
    """Client side: return `headers` plus `ocp-date` (if missing) and `Authorization`.

    Pass the headers exactly as they will go on the wire, Content-Length included, and the URL as it
    will be sent (path percent-encoded).
    """
    signed = dict(headers)
    if not _lower_headers(signed).get("ocp-date"):
        signed["ocp-date"] = formatdate(usegmt=True)
    parts = urlsplit(url)
    query_items = parse_qsl(parts.query, keep_blank_values=True)
    text = string_to_sign(method, parts.path or "/", query_items, signed, account=account)
    signed["Authorization"] = sign(account, key, text)
    return signed
