"""The web dashboard over plain HTTP (issue 12 item 1): every page refuses a stranger, forms need
the session's CSRF token, no page carries an account key, and bad input is a 4xx page, never a
500 — against a real `shoal up`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from azure.batch import models

from tests.acceptance.dashboard import csrf_of, http, signed_in
from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done


@pytest.fixture(scope="module")
def site(shoal: Any, client: Any) -> dict[str, str]:
    """A pool with a node and a start task, a job with a finished task and an active one."""
    client.create_pool(pool_options("web", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'echo start-task-output'", wait_for_success=True)))
    (node,) = wait_pool_idle(client, "web", 1)
    client.create_job(models.BatchJobCreateOptions(id="webjob", pool_info=models.BatchPoolInfo(pool_id="web")))
    client.create_task("webjob", models.BatchTaskCreateOptions(id="done", command_line="/bin/sh -c 'echo out; exit 2'"))
    wait_tasks_done(client, "webjob", 30)
    client.create_job(models.BatchJobCreateOptions(id="parked", pool_info=models.BatchPoolInfo(pool_id="nopool")))
    client.create_task("parked", models.BatchTaskCreateOptions(id="waiting", command_line="/bin/true"))
    return {"pool": "web", "node": node.id, "job": "webjob", "task": "done"}


def _pages(site: dict[str, str]) -> list[str]:
    pool, node, job, task = site["pool"], quote(site["node"]), site["job"], site["task"]
    return ["/ui/", "/ui/pools", f"/ui/pools/{pool}", f"/ui/pools/{pool}/heatmap", f"/ui/pools/{pool}/nodes/{node}",
            f"/ui/pools/{pool}/nodes/{node}/files", f"/ui/pools/{pool}/nodes/{node}/tail?file=startup/stdout.txt",
            "/ui/jobs", f"/ui/jobs/{job}", f"/ui/jobs/{job}?state=completed&exitcode=2",
            f"/ui/jobs/{job}/tasks/{task}", f"/ui/jobs/{job}/tasks/{task}/tail?file=stdout.txt&offset=0",
            "/ui/jobs/parked/tasks/waiting", "/ui/jobs/nosuchjob", "/ui/usage", "/ui/signin"]


def test_no_page_shows_a_key(shoal, site):
    with signed_in(shoal) as browser:
        bodies = {}
        for path in _pages(site):
            response = browser.get(path, follow_redirects=True)
            assert response.status_code in (200, 404), (path, response.status_code, response.text[:300])
            bodies[path] = response.text
        # The pages do show what they are for: the check below reads real content.
        assert "start-task-output" in bodies[f"/ui/pools/web/nodes/{quote(site['node'])}/tail?file=startup/stdout.txt"]
        assert "out" in bodies["/ui/jobs/webjob/tasks/done/tail?file=stdout.txt&offset=0"]
        assert "PoolNotFound" in bodies["/ui/jobs/parked/tasks/waiting"]  # the task's why
        for path, body in bodies.items():
            for key in (shoal.primary_key, shoal.secondary_key):
                assert key not in body, path
                assert quote(key, safe="") not in body, path
                assert key.replace("/", "\\/") not in body, path
        cookie = browser.cookies.get("shoal_ui_session")
        assert cookie and shoal.primary_key not in cookie and shoal.secondary_key not in cookie


def test_every_page_refuses_a_stranger(shoal, site):
    forged = ["garbage", "v1.9999999999.00.00", "v1.1.abc.def", "x" * 5000,
              "v1.9999999999.aaaa." + "0" * 64]
    with http(shoal) as stranger:
        for path in _pages(site):
            if path == "/ui/signin":
                continue
            for cookie in [None, *forged]:
                stranger.cookies.clear()
                if cookie is not None:
                    stranger.cookies.set("shoal_ui_session", cookie, path="/ui")
                response = stranger.get(path)
                if path.endswith("files") or "/tail" in path:
                    assert response.status_code == 401, (path, cookie)
                else:
                    assert response.status_code == 303, (path, cookie, response.status_code)
                    assert response.headers["location"].startswith("/ui/signin?next="), path
                assert "start-task-output" not in response.text and site["node"] not in response.text


def test_a_session_from_one_key_dies_with_the_key_and_wrong_keys_are_refused(shoal):
    with http(shoal) as client:
        for key in ["", "wrong", shoal.primary_key + "x", shoal.primary_key[:-1], "\x00" * 10, "é" * 100]:
            response = client.post("/ui/signin", data={"key": key})
            assert response.status_code == 403, key
            assert "shoal_ui_session" not in response.headers.get("set-cookie", "")
    # Off-site `next` targets are not followed.
    with http(shoal) as client:
        for target in ["https://evil.example/", "//evil.example/ui/", "/ui\\..\\x", "/elsewhere"]:
            response = client.post("/ui/signin", data={"key": shoal.primary_key, "next": target})
            assert response.status_code == 303 and response.headers["location"] == "/ui/", target


def test_posts_need_a_session_and_its_csrf_token(shoal, client, site):
    action = f"/ui/pools/{site['pool']}/nodes/{quote(site['node'])}/action"
    with http(shoal) as stranger:
        response = stranger.post(action, data={"action": "disablescheduling"})
        assert response.status_code == 403
    with signed_in(shoal) as one, signed_in(shoal) as other:
        page = one.get(f"/ui/pools/{site['pool']}/nodes/{quote(site['node'])}")
        token = csrf_of(page.text)
        other_token = csrf_of(other.get("/ui/pools").text)
        assert token != other_token
        for form in [{"action": "disablescheduling"}, {"action": "disablescheduling", "csrf": ""},
                     {"action": "disablescheduling", "csrf": "0" * 64},
                     {"action": "disablescheduling", "csrf": other_token}]:
            response = one.post(action, data=form)
            assert response.status_code == 403, form
            assert "CSRF" in response.text
        assert client.get_node(site["pool"], site["node"]).scheduling_state == "enabled"
        # A form sent as something else is refused before anything is done.
        response = one.post(action, content=f"action=disablescheduling&csrf={token}",
                            headers={"content-type": "text/plain"})
        assert response.status_code == 400
        response = one.post(action, data={"action": "explode", "csrf": token})
        assert response.status_code == 400
        response = one.post(action, data={"action": "disablescheduling", "csrf": token})
        assert response.status_code == 303
        assert client.get_node(site["pool"], site["node"]).scheduling_state == "disabled"
        # The service's own refusal (already disabled) is a 409 page.
        response = one.post(action, data={"action": "disablescheduling", "csrf": token})
        assert response.status_code == 409 and "NodeAlreadyInTargetSchedulingState" in response.text
        assert one.post(action, data={"action": "enablescheduling", "csrf": token}).status_code == 303
        # Signing out needs the token too.
        assert one.post("/ui/signout", data={"next": "/ui/"}).status_code == 403
        assert one.post("/ui/signout", data={"csrf": token}).status_code == 303


BAD_QUERIES = [
    ("/ui/jobs/webjob?page=notatoken", 400),
    ("/ui/jobs/webjob?page=" + "A" * 5000, 400),
    ("/ui/jobs/webjob?page=c2hvYWw6LTE", 400),  # shoal:-1
    ("/ui/jobs/webjob?page=c2hvYWw6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ", 400),  # past 2^63
    ("/ui/jobs/webjob?filter=" + quote("id eq '\x00'"), 200),  # a NUL is a value like any other
    ("/ui/jobs/webjob?filter=" + quote("\x00"), 400),
    ("/ui/jobs/webjob?filter=" + "(" * 3000, 400),
    ("/ui/jobs/webjob?filter=" + quote("id eq '" + "x" * 5000 + "'"), 400),
    ("/ui/jobs/webjob?filter=" + quote("nosuch eq 1"), 200),  # as the REST listing: matches nothing
    ("/ui/jobs/webjob?filter=" + quote("state eq 'active') or (1 eq 1"), 200),
    ("/ui/jobs/webjob?exitcode=abc", 400),
    ("/ui/jobs/webjob?exitcode=" + "9" * 30, 400),
    ("/ui/jobs/webjob?minretries=-1.5", 400),
    ("/ui/jobs/webjob?minduration=1e9", 400),
    ("/ui/jobs/webjob?minduration=-5", 200),
    ("/ui/jobs/webjob?state=sleeping", 400),
    ("/ui/jobs/webjob?result=maybe", 400),
    ("/ui/jobs/webjob?size=7", 400),
    ("/ui/jobs/webjob?size=" + "1" * 40, 400),
    ("/ui/jobs/nosuchjob", 404),
    ("/ui/jobs/webjob/tasks/nosuchtask", 404),
    ("/ui/pools/nosuchpool", 404),
    ("/ui/pools/nosuchpool/heatmap", 404),
    ("/ui/pools/web/nodes/nosuchnode", 404),
    ("/ui/jobs/webjob/tasks/done/tail?file=../../etc/passwd", 400),
    ("/ui/jobs/webjob/tasks/done/tail?file=stdout.txt&offset=x", 400),
    ("/ui/jobs/webjob/tasks/done/tail?file=stdout.txt&offset=-2", 400),
    ("/ui/jobs/webjob/tasks/done/tail?file=stdout.txt&offset=" + "9" * 17, 400),
    ("/ui/jobs/webjob/tasks/done/tail?file=stdout.txt&offset=999999", 200),
    ("/ui/pools/web/nodes/NODE/tail?file=../x", 400),
    ("/ui/pools/web/nodes/NODE/tail?file=startup%00/x", 400),
    ("/ui/pools/web/nodes/NODE/tail?file=/etc/passwd", 400),
    ("/ui/pools/web/nodes/NODE/tail?file=nosuchfile", 200),
    ("/ui/static/..%2F..%2Fweb.py", 404),
    ("/ui/nosuchpage", 404),
]


def test_bad_input_is_a_4xx_page_never_a_500(shoal, site):
    with signed_in(shoal) as browser:
        for path, status in BAD_QUERIES:
            response = browser.get(path.replace("NODE", quote(site["node"])))
            assert response.status_code == status, (path[:120], response.status_code, response.text[:300])
        # A query value past the dashboard's bound is refused whole.
        assert browser.get("/ui/pools?x=" + "y" * 10_000).status_code == 400
        # A huge form is refused before it is read whole.
        token = csrf_of(browser.get("/ui/pools").text)
        action = f"/ui/pools/web/nodes/{quote(site['node'])}/action"
        response = browser.post(action, data={"action": "reboot", "csrf": token, "pad": "x" * 100_000})
        assert 400 <= response.status_code < 500
        response = browser.post(action, content=b"\xff\xfe=\x00", headers={"content-type":
                                                                            "application/x-www-form-urlencoded"})
        assert 400 <= response.status_code < 500


def test_pages_carry_a_strict_content_security_policy(shoal, site):
    with signed_in(shoal) as browser:
        response = browser.get("/ui/pools/web")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "<script>" not in response.text  # no inline script: the CSP allows none
