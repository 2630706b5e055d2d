"""The web dashboard (issue 12 item 1) in a real browser: Debian's Chromium driven by Playwright
against a real `shoal up`. Screenshots go to the test's tmp_path (the paths are printed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models

from tests.acceptance.dashboard import browser, sign_in_page
from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_task_state, wait_tasks_done


@pytest.fixture(scope="module")
def chromium() -> Any:
    with browser() as launched:
        yield launched


@pytest.fixture(scope="module")
def work_pool(client: Any) -> str:
    client.create_pool(pool_options("dash-work", target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, "dash-work", 2)
    return "dash-work"


def _text(page: Any, selector: str) -> str:
    """The element's text, or "" while the page is being drawn again (a reload)."""
    from playwright.sync_api import Error

    try:
        return str(page.inner_text(selector, timeout=2000))
    except Error:
        return ""


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_sign_in_refuses_a_wrong_key_and_lets_the_account_key_in(shoal, chromium, tmp_path):
    page = chromium.new_page()
    page.goto(shoal.endpoint + "/ui/jobs")
    assert "/ui/signin" in page.url  # every page sends a stranger to sign in
    page.fill("input[name=key]", shoal.primary_key[:-4] + "AAA=")
    page.click("#signin button[type=submit]")
    assert page.inner_text("#signin-error") == "That is neither this account's key nor an access token."
    assert page.context.cookies() == []
    _shot(page, tmp_path, "signin-refused")
    page.fill("input[name=key]", shoal.secondary_key)  # either key of the account
    page.click("#signin button[type=submit]")
    page.wait_for_url("**/ui/jobs")
    assert page.inner_text("h1") == "Jobs"
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert shoal.primary_key not in cookie["value"] and shoal.secondary_key not in cookie["value"]
    # Script cannot read the session cookie.
    assert "shoal_ui_session" not in page.evaluate("document.cookie")
    page.close()


def test_a_pools_heat_map_changes_as_a_resize_brings_nodes_up(shoal, client, chromium, tmp_path):
    # A start task the nodes wait for: long enough for the page's 2 s poll to see it running.
    client.create_pool(pool_options("dash-heat", target_dedicated_nodes=0, start_task=models.BatchStartTask(
        command_line="/bin/sleep 4", wait_for_success=True)))
    page = sign_in_page(chromium, shoal, "/ui/pools/dash-heat")
    assert page.get_attribute("#heatmap", "data-count") == "0"
    resize = client.begin_resize_pool("dash-heat", models.BatchPoolResizeOptions(target_dedicated_nodes=3),
                                      polling_interval=0.2)
    seen: set[str] = set()

    def states() -> str:
        value = page.get_attribute("#heatmap", "data-states") or ""
        seen.update(value)
        return value

    # The page polls: cells appear as the nodes are made, and turn idle once their agents start.
    wait_for(lambda: len(states()) == 3, 30, interval=0.1, message="three cells")
    _shot(page, tmp_path, "heatmap-resizing")
    wait_for(lambda: "w" in states(), 30, interval=0.1, message="cells waiting for the start task")
    _shot(page, tmp_path, "heatmap-start-task")
    assert page.locator("#heatmap i.s-w").count() >= 1
    wait_for(lambda: states() == "iii", 30, interval=0.2, message="three idle cells")
    assert page.locator("#heatmap i.s-i").count() == 3
    assert page.inner_text("#current-dedicated") == "3"
    assert page.inner_text("#heat-legend .count[data-state=i]") == "3"
    _shot(page, tmp_path, "heatmap-idle")
    resize.result()
    # A cell links to its node's page.
    page.click("#heatmap i >> nth=0")
    page.wait_for_selector("#node-state")
    assert page.inner_text("#node-state") == "idle"
    _shot(page, tmp_path, "node")
    page.close()


def test_a_tasks_stdout_appears_in_the_viewer_while_it_runs(shoal, client, chromium, work_pool, tmp_path):
    client.create_job(models.BatchJobCreateOptions(id="dash-tail", pool_info=models.BatchPoolInfo(pool_id=work_pool)))
    client.create_task("dash-tail", models.BatchTaskCreateOptions(
        id="talker", command_line="/bin/sh -c 'echo first-line; sleep 4; echo second-line >&1; "
                                  "echo to-stderr >&2; sleep 2'"))
    wait_task_state(client, "dash-tail", "talker", "running")
    page = sign_in_page(chromium, shoal, "/ui/jobs/dash-tail/tasks/talker")
    assert page.inner_text("#task-state") == "running"
    stdout = page.locator("#tail-stdout .tail-text")
    wait_for(lambda: "first-line" in stdout.inner_text(), 15, message="the first line in the viewer")
    assert client.get_task("dash-tail", "talker").state == "running"  # it is still running
    assert "second-line" not in stdout.inner_text()
    _shot(page, tmp_path, "task-tail-running")
    # The viewer keeps polling and appends what the task writes next, without a reload.
    wait_for(lambda: "second-line" in stdout.inner_text(), 15, message="the second line in the viewer")
    assert stdout.inner_text().splitlines() == ["first-line", "second-line"]
    wait_for(lambda: "to-stderr" in page.inner_text("#tail-stderr .tail-text"), 15, message="stderr")
    wait_tasks_done(client, "dash-tail", 20)
    # The page follows the task's state: once it has ended it shows the end (exit code) and its
    # viewers, with the whole output, no longer poll.
    wait_for(lambda: "exitCode" in _text(page, "#execution-info"), 10, message="the exit code on the page")
    assert page.inner_text("#task-state") == "completed"
    assert page.get_attribute("#tail-stdout", "data-live") is None
    wait_for(lambda: "second-line" in _text(page, "#tail-stdout .tail-text"), 5,
             message="the output after the page is redrawn")
    assert stdout.inner_text().splitlines() == ["first-line", "second-line"]
    _shot(page, tmp_path, "task-tail-done")
    page.close()


def test_task_filters_page_correctly(shoal, client, chromium, work_pool, tmp_path):
    client.create_job(models.BatchJobCreateOptions(id="dash-filter", pool_info=models.BatchPoolInfo(pool_id=work_pool)))
    # 23 tasks: every third fails with exit code 3, the rest succeed.
    client.create_tasks("dash-filter", [models.BatchTaskCreateOptions(
        id=f"t{i:02d}", command_line=f"/bin/sh -c 'exit {3 if i % 3 == 0 else 0}'") for i in range(23)])
    client.create_tasks("dash-filter", [models.BatchTaskCreateOptions(id=f"slow{i}", command_line="/bin/sleep 2")
                                        for i in range(2)])
    wait_tasks_done(client, "dash-filter", 60)
    failing = sorted(t.id for t in client.list_tasks("dash-filter") if t.execution_info.exit_code == 3)
    assert len(failing) == 8
    page = sign_in_page(chromium, shoal, "/ui/jobs/dash-filter")
    assert page.inner_text("#job-counts") == "active 0 · running 0 · succeeded 17 · failed 8"
    page.fill("input[name=exitcode]", "3")
    page.select_option("select[name=size]", "10")
    page.click("#task-filter button[type=submit]")
    page.wait_for_selector("#filter-text")
    assert page.inner_text("#filter-text") == "executionInfo/exitCode eq 3"

    def rows() -> list[str]:
        return page.eval_on_selector_all("#tasks tr[data-task]", "rows => rows.map(r => r.dataset.task)")

    first = rows()
    assert sorted(first) == failing and page.locator("#next-page").count() == 0
    # Smaller pages: follow the next links to the end, each page only matching tasks, none twice.
    page.goto(shoal.endpoint + "/ui/jobs/dash-filter?result=success&size=10")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen.extend(rows())
        assert page.locator("#tasks tr[data-task] td:nth-child(4)").all_inner_texts() == ["0"] * len(rows())
        if page.locator("#next-page").count() == 0:
            break
        if pages == 1:
            _shot(page, tmp_path, "tasks-filtered-page1")
        page.click("#next-page")
        page.wait_for_load_state()
    assert pages == 2 and len(seen) == len(set(seen)) == 17
    assert set(seen) == {f"t{i:02d}" for i in range(23)} - set(failing) | {"slow0", "slow1"}
    assert page.locator("#first-page").count() == 1
    # How long a task ran is judged row by row (no column holds it), paged all the same.
    page.goto(shoal.endpoint + "/ui/jobs/dash-filter?minduration=2&size=10")
    assert sorted(rows()) == ["slow0", "slow1"] and page.locator("#next-page").count() == 0
    # A free OData filter combines with the fields.
    page.goto(shoal.endpoint + "/ui/jobs/dash-filter?state=completed&filter=startswith(id%2C%27t1%27)")
    assert sorted(rows()) == [f"t{i}" for i in range(10, 20)]
    page.fill("input[name=filter]", "startswith(id,")
    page.click("#task-filter button[type=submit]")
    page.wait_for_selector("#error-message")
    assert page.inner_text("h1").startswith("400")
    page.close()


def test_node_actions_post_with_the_forms_token(shoal, client, chromium, work_pool, tmp_path):
    node = next(iter(client.list_nodes(work_pool)))
    page = sign_in_page(chromium, shoal, f"/ui/pools/{work_pool}/nodes/{node.id}")
    page.click("button[data-action=disablescheduling]")
    page.wait_for_selector("#notice")
    assert page.inner_text("#scheduling-state") == "disabled"
    assert client.get_node(work_pool, node.id).scheduling_state == "disabled"
    page.click("button[data-action=enablescheduling]")
    page.wait_for_selector("#notice")
    wait_for(lambda: client.get_node(work_pool, node.id).scheduling_state == "enabled", 5)
    wait_for(lambda: page.locator("#node-files li").count() > 0, 10, message="the node's files")
    time.sleep(0.5)
    _shot(page, tmp_path, "node-actions")
    page.close()
