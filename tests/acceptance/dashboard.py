"""Helpers for the dashboard tests: a signed-in HTTP client, the CSRF token of a page, and a
headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from shoal.testing.server import RunningShoal

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def http(shoal: RunningShoal) -> httpx.Client:
    return httpx.Client(base_url=shoal.endpoint, follow_redirects=False, timeout=30)


@contextmanager
def signed_in(shoal: RunningShoal, key: str | None = None) -> Iterator[httpx.Client]:
    """An HTTP client signed in through the form (it holds the session cookie)."""
    with http(shoal) as client:
        response = client.post("/ui/signin", data={"key": key or shoal.primary_key, "next": "/ui/pools"})
        assert response.status_code == 303, response.text
        assert client.cookies.get("shoal_ui_session")
        yield client


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in_page(chromium: Any, shoal: RunningShoal, path: str = "/ui/pools") -> Any:
    """A new browser page, signed in through the form, on ``path``."""
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    page.goto(shoal.endpoint + path)
    page.fill("input[name=key]", shoal.primary_key)
    page.click("#signin button[type=submit]")
    page.wait_for_url(f"**{path}")
    return page
