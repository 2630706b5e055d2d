"""HTTP plumbing shared by every route: bodies, responses, errors, conditions and paging."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

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
    return Response(orjson.dumps(body), status_code=error.status, headers=headers, media_type=JSON_TYPE)


async def read_json(request: Request, *, optional: bool = False) -> tuple[Any, int]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge("The request body is too large and exceeds the maximum permissible limit.",
                           values={"MaxLimit": str(MAX_BODY_BYTES)})
    if not raw.strip():
        if optional:
            return {}, 0
        raise BadRequest("The request body is missing.", code="InvalidRequestBody")
    try:
        return orjson.loads(raw), len(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("The request body is not valid JSON.", code="InvalidRequestBody",
                         values={"Reason": str(exc)[:200]}) from exc


def json_response(request: Request, payload: Any, *, status: int = 200, etag: str | None = None,
                  last_modified: datetime | None = None, odata_type: str | None = None) -> Response:
    headers = request_headers(request)
    if etag:
        headers["ETag"] = etag
    if last_modified is not None:
        headers["Last-Modified"] = clock.http_date(last_modified)
    if isinstance(payload, dict) and odata_type:
        payload = {"odata.metadata": f"{base_url(request)}/$metadata#{odata_type}", **payload}
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type=JSON_TYPE)


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


def _parse_http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return clock.as_utc(parsed)


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
        when = _parse_http_date(headers["if-unmodified-since"])
        if when is not None and last > when:
            raise ConditionNotMet()
    if_none = headers.get("if-none-match")
    if if_none is not None:
        if "*" in if_none or etag in _etags(if_none):
            raise _not_modified() if read else ConditionNotMet()
    elif "if-modified-since" in headers:
        when = _parse_http_date(headers["if-modified-since"])
        if when is not None and last <= when:
            raise _not_modified() if read else ConditionNotMet()


def guard(request: Request, stamp: Callable[[], tuple[str, datetime]]) -> None:
    """Apply the request's conditional headers; the resource's ETag is read only if it has any."""
    if has_conditions(request):
        check_conditions(request, *stamp())


def has_conditions(request: Request) -> bool:
    headers = request.headers
    return any(h in headers for h in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"))


def max_results(request: Request) -> int:
    raw = request.query_params.get("maxresults")
    if raw is None:
        return MAX_RESULTS_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise InvalidQuery("maxresults", raw, "The value must be between 1 and 1000.")
    return value


def encode_token(value: int) -> str:
    return base64.urlsafe_b64encode(f"shoal:{value}".encode()).decode().rstrip("=")


def decode_token(request: Request) -> int:
    raw = request.query_params.get("$skiptoken")
    if not raw:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        prefix, value = text.split(":", 1)
        if prefix != "shoal":
            raise ValueError(text)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidQuery("$skiptoken", raw, "The continuation token is not valid.") from exc


def next_link(request: Request, token: int) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "$skiptoken"]
    params.append(("$skiptoken", encode_token(token)))
    from urllib.parse import urlencode

    return f"{base_url(request)}{request.url.path}?{urlencode(params)}"


def new_request_id() -> str:
    return str(uuid.uuid4())
