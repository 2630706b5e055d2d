"""The sign-in and sign-out forms: an account key or a service principal's access token is
checked and forgotten; the browser keeps only a session cookie (shoal/web/session.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from shoal.api.auth import SHARED_KEY
from shoal.errors import BatchError
from shoal.web import session
from shoal.web.shared import (
    PREFIX,
    Forbidden,
    _form,
    current_session,
    error_page,
    principal_secret,
    templates,
    with_headers,
)

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
        if await current_session(api, request) is not None:
            return with_headers(RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303))
        return _form_page(_safe_next(request.query_params.get("next")), None)

    async def sign_in(request: Request) -> Response:
        try:
            form = await _form(request)
        except BatchError as error:
            return error_page(error)
        except ClientDisconnect:
            return Response(status_code=499)
        target = _safe_next(form.get("next"))
        given = form.get("key", "").strip()
        keys = [key for pair in api.keys.values() for key in pair]
        key = session.key_matches(given, keys)
        if key is not None:
            if SHARED_KEY not in (await api.auth.policy()).allowed_modes:
                return _form_page(target, "This account does not allow signing in with its key "
                                  "(allowedAuthenticationModes); sign in with an access token.", status=403)
            cookie, lifetime = session.issue(key), session.SESSION_LIFETIME_S
        elif given.count(".") == 2:  # a JSON Web Token: a service principal's access token
            try:
                claims = await api.auth.principal_of(given)
            except BatchError as error:
                detail = dict(error.values or {}).get("AuthenticationErrorDetail") or error.message
                return _form_page(target, f"That access token is not accepted: {detail}", status=403)
            secret = principal_secret(api)
            assert secret is not None  # principal_of accepted a token: the server has an identity
            cookie = session.issue_for_principal(
                secret, session.Principal(claims.tenant_id, claims.object_id, claims.client_id), claims.expires)
            lifetime = max(int(claims.expires - time.time()), 1)
        else:
            return _form_page(target, "That is neither this account's key nor an access token.", status=403)
        response = with_headers(RedirectResponse(target, status_code=303))
        response.set_cookie(session.COOKIE_NAME, cookie, max_age=min(lifetime, session.SESSION_LIFETIME_S),
                            path=PREFIX, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    async def sign_out(request: Request) -> Response:
        found = await current_session(api, request)
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
