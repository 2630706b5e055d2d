"""The sign-in and sign-out forms: the account key is checked and forgotten; the browser keeps
only a session cookie (shoal/web/session.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from shoal.errors import BatchError
from shoal.web import session
from shoal.web.shared import PREFIX, Forbidden, _form, current_session, error_page, templates, with_headers

if TYPE_CHECKING:
    from shoal.api.app import Api


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this server, never another site."""
    if not target or not target.startswith(PREFIX + "/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 0x20 for c in target):
        return f"{PREFIX}/"
    return target


def _form_page(next_target: str, message: str | None, status: int = 200) -> Response:
    html = templates().get_template("signin.html").render(next=next_target, message=message, prefix=PREFIX,
                                                          csrf="")
    return with_headers(HTMLResponse(html, status_code=status))


def routes(api: Api) -> list[tuple[str, list[str], object]]:
    async def show(request: Request) -> Response:
        if current_session(api, request) is not None:
            return with_headers(RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303))
        return _form_page(_safe_next(request.query_params.get("next")), None)

    async def sign_in(request: Request) -> Response:
        try:
            form = await _form(request)
        except BatchError as error:
            return error_page(error)
        except ClientDisconnect:
            return Response(status_code=499)
        keys = [key for pair in api.keys.values() for key in pair]
        key = session.key_matches(form.get("key", "").strip(), keys)
        target = _safe_next(form.get("next"))
        if key is None:
            return _form_page(target, "That is not this account's key.", status=403)
        response = with_headers(RedirectResponse(target, status_code=303))
        response.set_cookie(session.COOKIE_NAME, session.issue(key), max_age=session.SESSION_LIFETIME_S,
                            path=PREFIX, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    async def sign_out(request: Request) -> Response:
        found = current_session(api, request)
        try:
            form = await _form(request)
        except BatchError as error:
            return error_page(error)
        if found is None or not found.csrf_ok(form.get(session.CSRF_FIELD)):
            return error_page(Forbidden("The form's CSRF token is missing or not valid."))
        response = with_headers(RedirectResponse(f"{PREFIX}/signin", status_code=303))
        response.delete_cookie(session.COOKIE_NAME, path=PREFIX, httponly=True, samesite="strict")
        return response

    return [("/signin", ["GET"], show), ("/signin", ["POST"], sign_in), ("/signout", ["POST"], sign_out)]
