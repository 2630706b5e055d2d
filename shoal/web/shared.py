"""What every dashboard route shares: the session check, CSRF on forms, where the work runs,
templates, and the headers of every answer.

A page is a plain function ``(ctx, view) -> Page`` that reads through `shoal.service` and is run,
template rendering included, on one of the store runner's lanes (shoal/store/runner.py), never on
the event loop; what it raises as a `BatchError` becomes an error page with the error's status.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from shoal.api.auth import AAD, SHARED_KEY
from shoal.api.http import read_body
from shoal.errors import BatchError
from shoal.service import tokens
from shoal.service.context import Context
from shoal.service.permissions import Operation
from shoal.store.runner import Busy
from shoal.web import session

if TYPE_CHECKING:
    from shoal.api.app import Api

log = logging.getLogger("shoal.web")
PREFIX = "/ui"
MAX_FORM_BYTES = 16 * 1024
# Query and form values longer than this are refused: nothing the dashboard asks for is longer.
MAX_VALUE_CHARS = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class BadInput(BatchError):
    status = 400
    code = "InvalidQueryParameterValue"


class Forbidden(BatchError):
    status = 403
    code = "AuthenticationFailed"


@dataclass
class Page:
    """A template and what it shows, or (with ``json``) a JSON answer for a poll."""

    template: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    status: int = 200
    redirect: str | None = None


@dataclass
class View:
    """What a page function gets of the request: plain data, safe to read on any thread."""

    path: Mapping[str, str]
    query: Mapping[str, str]
    form: Mapping[str, str]
    csrf: str
    base_url: str


@functools.cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("shoal.web", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["json_script"] = json_for_script
    return env


def json_for_script(value: Any) -> str:
    """JSON safe inside a <script type="application/json"> block: no `</script>`, no comment opener."""
    text = json.dumps(value, separators=(",", ":"))
    return jinja2.utils.markupsafe.Markup(
        text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render(page: Page, view: View) -> Response:
    if page.redirect is not None:
        return with_headers(RedirectResponse(page.redirect, status_code=303))
    if page.json is not None:
        return with_headers(JSONResponse(page.json, status_code=page.status))
    assert page.template is not None
    html = templates().get_template(page.template).render(**page.values, csrf=view.csrf, prefix=PREFIX)
    return with_headers(HTMLResponse(html, status_code=page.status))


def with_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(error: BatchError, csrf: str = "") -> Response:
    html = templates().get_template("error.html").render(error=error, csrf=csrf, prefix=PREFIX)
    response = with_headers(HTMLResponse(html, status_code=error.status))
    if isinstance(error, _BusyError):
        response.headers["Retry-After"] = "1"
    return response


class _BusyError(BatchError):
    status = 503
    code = "ServerBusy"


def _checked(items: list[tuple[str, str]], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        if len(value) > MAX_VALUE_CHARS or len(name) > 64:
            raise BadInput(f"A {what} value is too long.", values={"Name": name[:64]})
        out[name] = value
    return out


async def _form(request: Request) -> dict[str, str]:
    if request.method != "POST":
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, MAX_FORM_BYTES)
    if content_type != "application/x-www-form-urlencoded":
        raise BadInput("A dashboard form is sent as application/x-www-form-urlencoded.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput("The form could not be read.") from exc
    return _checked(pairs, "form")


def principal_secret(api: Api) -> bytes | None:
    """What principals' session cookies are signed with (None on a server without tokens)."""
    if api.identity is None:
        return None
    return session.principal_secret(api.identity.keys.task_secret)


async def current_session(api: Api, request: Request) -> session.Session | None:
    """The request's valid session, if any. A principal's holds only while the principal exists
    in the account's tenant and the account allows AAD sign-in."""
    keys = [key for pair in api.keys.values() for key in pair]
    found = session.verify(request.cookies.get(session.COOKIE_NAME), keys, principal_secret=principal_secret(api))
    if found is None:
        return None
    allowed = (await api.auth.policy()).allowed_modes
    if found.principal is None:
        return found if SHARED_KEY in allowed else None
    principal = found.principal
    claims = tokens.AccessClaims(principal.tenant_id, principal.client_id, principal.object_id, issuer="")
    if AAD not in allowed or await api.auth.principal_refusal(claims):
        return None
    return found


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return with_headers(RedirectResponse(f"{PREFIX}/signin?next={quote(target, safe='')}", status_code=303))


PageFunction = Callable[[Context, View], Page]


class NotPermitted(BatchError):
    status = 403
    code = "AuthorizationFailure"


async def _check_permitted(api: Api, found: session.Session, needs: Operation) -> None:
    """A principal's session shows and does only what its roles allow (as the REST API would
    for the same principal); a key's session is the account's and may do anything."""
    if found.principal is None:
        return
    granted = await api.authz.permissions_of(found.principal.object_id)
    if not granted.allows(needs):
        raise NotPermitted(f"Your roles do not allow {needs.name} on this account.",
                           values={"AuthorizationErrorDetail": needs.name})


def page(api: Api, function: PageFunction, needs: Operation,
         lane: str = "read") -> Callable[[Request], Awaitable[Response]]:
    """A signed-in page: refused (sent to sign in, or 403 for a form) without a session, and 403
    when the session's principal may not do ``needs``; a POST also needs the session's CSRF
    token; then ``function`` runs on ``lane`` with its rendering."""

    async def endpoint(request: Request) -> Response:
        found = await current_session(api, request)
        if found is None:
            if request.method == "POST":
                return error_page(Forbidden("Sign in to the dashboard first."))
            return sign_in_redirect(request)
        csrf = found.csrf_token
        try:
            await _check_permitted(api, found, needs)
            view = View(dict(request.path_params), _checked(list(request.query_params.multi_items()), "query"),
                        await _form(request), csrf, api.context_for(request).base_url)
            if request.method == "POST" and not found.csrf_ok(view.form.get(session.CSRF_FIELD)):
                raise Forbidden("The form's CSRF token is missing or not valid: reload the page and try again.")
            ctx = api.context_for(request)
            run_lane = api.runner.lane(lane)
            return await run_lane.call(_run, function, ctx, view, shed=True)
        except Busy:
            return error_page(_BusyError("The server is busy; try again in a moment."), csrf)
        except BatchError as error:
            return error_page(error, csrf)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception:  # noqa: BLE001 - the page says little, the log has the trace
            log.exception("unhandled error in dashboard %s %s", request.method, request.url.path)
            return error_page(BatchError("An internal error occurred.", code="InternalError"), csrf)

    return endpoint


def _run(function: PageFunction, ctx: Context, view: View) -> Response:
    return render(function(ctx, view), view)


def on_loop(api: Api, handler: Callable[[Request, Context], Awaitable[Response]],
            needs: Operation) -> Callable[[Request], Awaitable[Response]]:
    """A signed-in GET whose handler talks to a node through the loop's HTTP client (and sends
    its store reads to the runner itself)."""

    async def endpoint(request: Request) -> Response:
        found = await current_session(api, request)
        if found is None:
            return with_headers(JSONResponse({"error": "Sign in to the dashboard first."}, status_code=401))
        request.state.runner = api.runner  # for the handler's own store reads
        try:
            await _check_permitted(api, found, needs)
            _checked(list(request.query_params.multi_items()), "query")
            return with_headers(await handler(request, api.context_for(request)))
        except Busy:
            return with_headers(JSONResponse({"error": "The server is busy."}, status_code=503))
        except BatchError as error:
            return with_headers(JSONResponse({"error": error.message, "code": error.code}, status_code=error.status))
        except Exception:  # noqa: BLE001
            log.exception("unhandled error in dashboard %s %s", request.method, request.url.path)
            return with_headers(JSONResponse({"error": "An internal error occurred."}, status_code=500))

    return endpoint
