"""List and single-resource bodies: OData paging, $filter and $select."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal import odata
from shoal.api import versions
from shoal.api.http import decode_token, json_response, max_results, next_link
from shoal.errors import InvalidQuery


def parse_filter(request: Request) -> odata.Node | None:
    text = request.query_params.get("$filter")
    if not text:
        return None
    try:
        return odata.parse_filter(text)
    except odata.ODataError as exc:
        raise InvalidQuery("$filter", text[:256], str(exc)) from exc


def compile_filter(request: Request) -> odata.Predicate | None:
    node = parse_filter(request)
    return None if node is None else odata.predicate_of(node)


def select_fields(request: Request) -> list[str] | None:
    text = request.query_params.get("$select")
    try:
        return odata.parse_select(text)
    except odata.ODataError as exc:
        raise InvalidQuery("$select", (text or "")[:256], str(exc)) from exc


def respond(request: Request, items: list[dict[str, Any]], odata_type: str, subject: str) -> Response:
    """Page an in-memory list (pools, jobs, nodes: small) of `subject`s, as the request's
    api-version writes them; the token is an offset."""
    predicate = compile_filter(request)
    fields = select_fields(request)
    items = [versions.rendered(request, subject, item) for item in items]
    if predicate is not None:
        items = [item for item in items if predicate(item)]
    start = decode_token(request)
    limit = max_results(request)
    page = items[start:start + limit]
    return page_response(request, page, odata_type, fields, start + limit if start + limit < len(items) else None)


def page_response(request: Request, page: list[dict[str, Any]], odata_type: str, fields: list[str] | None,
                  continuation: int | None, subject: str | None = None) -> Response:
    """A page of a list; `subject` names what it lists when the items are still to be written
    as the request's api-version writes them."""
    if subject is not None:
        page = [versions.rendered(request, subject, item) for item in page]
    if fields:
        page = [odata.apply_select(item, fields) for item in page]
    payload: dict[str, Any] = {"value": page}
    if continuation is not None:
        payload["odata.nextLink"] = next_link(request, continuation)
    return json_response(request, payload, odata_type=odata_type)


def single(request: Request, item: dict[str, Any], odata_type: str, last_modified: datetime | None,
           subject: str) -> Response:
    """One `subject`, as the request's api-version writes it."""
    fields = select_fields(request)
    item = versions.rendered(request, subject, item)
    etag = item.get("eTag")
    if fields:
        item = odata.apply_select(item, fields)
    return json_response(request, item, etag=etag, last_modified=last_modified,
                         odata_type=odata_type)
