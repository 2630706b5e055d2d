"""HTTP plumbing shared by every route: bodies, responses, errors, conditions and paging."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shoal import clock
from shoal.config import MAX_BODY_BYTES, MAX_RESULTS_DEFAULT
from shoal.errors import BadRequest, BatchError, BodyTooLarge, ConditionNotMet, InvalidQuery

ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
JSON_TYPE = "application/json;odata=minimalmetadata"


def base_url(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def request_headers(request: Request) -> dict[str, str]:
    headers = {"request-id": request.state.request_id, "DataServiceVersion": "3.0"}
    client_id = request.headers.get("client-request-id")
    if client_id:
        headers["client-request-id"] = client_id
    return headers


def error_response(request: Request, error: BatchError) -> Response:
    now = clock.now()
    body: dict[str, Any] = {
        "odata.metadata": f"{base_url(request)}/{ERROR_METADATA}",
        "code": error.code,
        "message": {"lang": "en-US",
                    "value": f"{error.message}\nRequestId:{request.state.request_id}\nTime:{clock.iso(now)}"},
    }
    if error.values:
        body["values"] = [{"key": k, "value": v} for k, v in error.values.items()]
    headers = request_headers(request)
    if request.method == "HEAD" or error.status == 304:
        # HEAD answers and 304s carry no body (RFC 9110).
        return Response(status_code=error.status, headers=headers)
    return Response(dumps(body), status_code=error.status, headers=headers, media_type=JSON_TYPE)


# Deeper than any Batch body (a pool spec nests about eight levels) and far below orjson's output
# limit (254), so whatever is accepted can always be rendered again, wrapped in a list answer.
MAX_JSON_DEPTH = 64
# Bodies larger than this are parsed and checked on a worker thread, off the event loop.
_PARSE_INLINE_BYTES = 256 * 1024


def body_too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge("The request body is too large and exceeds the maximum permissible limit.",
                        values={"MaxLimit": str(limit)})


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, read chunk by chunk and abandoned as soon as it passes `limit` bytes:
    a client can make us hold at most `limit` bytes (plus one chunk), whatever it sends."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DECIMAL.match(declared):
            raise BadRequest("The value of the Content-Length header is not valid.", code="InvalidHeaderValue",
                             values={"HeaderName": "Content-Length", "HeaderValue": declared[:32]})
        if int(declared) > limit:
            raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests containers more than `limit` deep. Iterative: a recursive walk is
    exactly what a deep document is built to break."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON body (UTF-8, RFC 8259) or raise 400 InvalidRequestBody; refuses documents
    nested deeper than `max_depth`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("The request body is not valid JSON.", code="InvalidRequestBody",
                         values={"Reason": str(exc)[:200]}) from exc
    # Cheap first: a document cannot nest deeper than it has opening brackets.
    if raw.count(b"{") + raw.count(b"[") > max_depth and json_depth_exceeds(value, max_depth):
        raise BadRequest("The request body is nested too deeply.", code="InvalidRequestBody",
                         values={"Reason": f"JSON nesting is limited to {max_depth} levels."})
    return value


async def parse_json_off_loop(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    if len(raw) <= _PARSE_INLINE_BYTES:
        return parse_json(raw, max_depth=max_depth)
    return await asyncio.to_thread(parse_json, raw, max_depth=max_depth)


async def read_json(request: Request, *, optional: bool = False) -> tuple[Any, int]:
    """A Batch request body: a JSON object of at most MAX_BODY_BYTES, and its size in bytes."""
    raw = await read_body(request, MAX_BODY_BYTES)
    if not raw.strip():
        if optional:
            return {}, 0
        raise BadRequest("The request body is missing.", code="InvalidRequestBody")
    value = await parse_json_off_loop(raw)
    if not isinstance(value, dict):
        # Every Batch request body is a JSON object.
        raise BadRequest("The request body must be a JSON object.", code="InvalidRequestBody")
    return value, len(raw)


def dumps(payload: Any) -> bytes:
    """JSON bytes for a response. orjson first; whatever it refuses (data nested past its limit,
    stored before depth was bounded; keys that are not strings) is written by an iterative
    encoder instead, so no stored value can make a response fail."""
    try:
        return orjson.dumps(payload)
    except (orjson.JSONEncodeError, TypeError):
        return _dumps_iteratively(payload)


def _scalar(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(str(value))


def _dumps_iteratively(payload: Any) -> bytes:
    out: list[bytes] = []
    # Work items: a value to write, or raw bytes (separators and closing brackets) to emit.
    stack: list[Any] = [(payload,)]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        value = item[0]
        if isinstance(value, dict):
            out.append(b"{")
            stack.append(b"}")
            entries = list(value.items())
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                stack.append((child,))
                stack.append(_scalar(key if isinstance(key, str) else str(key)) + b":")
                if index:
                    stack.append(b",")
        elif isinstance(value, list | tuple):
            out.append(b"[")
            stack.append(b"]")
            for index in range(len(value) - 1, -1, -1):
                stack.append((value[index],))
                if index:
                    stack.append(b",")
        else:
            out.append(_scalar(value))
    return b"".join(out)


def json_response(request: Request, payload: Any, *, status: int = 200, etag: str | None = None,
                  last_modified: datetime | None = None, odata_type: str | None = None) -> Response:
    headers = request_headers(request)
    if etag:
        headers["ETag"] = etag
    if last_modified is not None:
        headers["Last-Modified"] = clock.http_date(last_modified)
    if isinstance(payload, dict) and odata_type:
        payload = {"odata.metadata": f"{base_url(request)}/$metadata#{odata_type}", **payload}
    return Response(dumps(payload), status_code=status, headers=headers, media_type=JSON_TYPE)


def empty_response(request: Request, status: int, *, etag: str | None = None,
                   last_modified: datetime | None = None, location: str | None = None) -> Response:
    headers = request_headers(request)
    if etag:
        headers["ETag"] = etag
    if last_modified is not None:
        headers["Last-Modified"] = clock.http_date(last_modified)
    if location:
        headers["Location"] = location
        headers["DataServiceId"] = location
    return Response(status_code=status, headers=headers)


def _etags(value: str) -> set[str]:
    return {part.strip().strip('"') for part in value.split(",") if part.strip()}


# Batch allows one conditional header per request, except these pairs, where the ETag header decides.
_CONDITION_HEADERS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
_ALLOWED_PAIRS = ({"if-none-match", "if-modified-since"}, {"if-match", "if-unmodified-since"})


def _not_modified() -> BatchError:
    # Batch answers an unmet If-None-Match / If-Modified-Since on a read with 304, not 412.
    return BatchError("The condition specified in the conditional header(s) was not met for a read operation.",
                      code="ConditionNotMet", status=304)


def check_conditions(request: Request, etag: str, last_modified: datetime) -> None:
    """If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since as Batch applies them
    (REST docs, "Specifying conditional headers")."""
    headers = request.headers
    present = {name for name in _CONDITION_HEADERS if name in headers}
    if len(present) > 1 and present not in _ALLOWED_PAIRS:
        raise BadRequest("Multiple condition headers are not supported.", code="MultipleConditionHeadersNotSupported")
    read = request.method in ("GET", "HEAD")
    last = clock.as_utc(last_modified)
    assert last is not None
    last = last.replace(microsecond=0)
    if_match = headers.get("if-match")
    if if_match is not None:
        if "*" not in if_match and etag not in _etags(if_match):
            raise ConditionNotMet()
    elif "if-unmodified-since" in headers:
        when = clock.parse_http_date(headers["if-unmodified-since"])
        if when is not None and last > when:
            raise ConditionNotMet()
    if_none = headers.get("if-none-match")
    if if_none is not None:
        if "*" in if_none or etag in _etags(if_none):
            raise _not_modified() if read else ConditionNotMet()
    elif "if-modified-since" in headers:
        when = clock.parse_http_date(headers["if-modified-since"])
        if when is not None and last <= when:
            raise _not_modified() if read else ConditionNotMet()


def guard(request: Request, stamp: Callable[[], tuple[str, datetime]]) -> None:
    """Apply the request's conditional headers; the resource's ETag is read only if it has any."""
    if has_conditions(request):
        check_conditions(request, *stamp())


def has_conditions(request: Request) -> bool:
    headers = request.headers
    return any(h in headers for h in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"))


# ASCII digits only: int() would also take "1_000", " 7 " and other scripts' digits.
_DECIMAL = re.compile(r"[0-9]{1,19}\Z")
_INT64_MAX = 2**63 - 1
_MAX_TOKEN_TEXT = 64


def max_results(request: Request) -> int:
    raw = request.query_params.get("maxresults")
    if raw is None:
        return MAX_RESULTS_DEFAULT
    value = int(raw) if _DECIMAL.match(raw) else 0
    if not 1 <= value <= 1000:
        raise InvalidQuery("maxresults", raw[:64], "The value must be between 1 and 1000.")
    return value


def encode_token(value: int) -> str:
    return base64.urlsafe_b64encode(f"shoal:{value}".encode()).decode().rstrip("=")


def decode_token(request: Request) -> int:
    """The offset or sequence number a `$skiptoken` carries: 0..2^63-1 (a database integer)."""
    return decode_token_text(request.query_params.get("$skiptoken"))


def decode_token_text(raw: str | None) -> int:
    """`decode_token` of a token's text (None or empty: the start)."""
    if not raw:
        return 0
    try:
        if len(raw) > _MAX_TOKEN_TEXT:
            raise ValueError("too long")
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
        prefix, value = text.split(":", 1)
        if prefix != "shoal" or not _DECIMAL.match(value) or int(value) > _INT64_MAX:
            raise ValueError(text)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidQuery("$skiptoken", raw[:64], "The continuation token is not valid.") from exc


def next_link(request: Request, token: int) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "$skiptoken"]
    params.append(("$skiptoken", encode_token(token)))
    return f"{base_url(request)}{request.url.path}?{urlencode(params)}"


def new_request_id() -> str:
    return str(uuid.uuid4())
