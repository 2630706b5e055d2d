"""Helpers for acceptance tests: SDK option builders and polling waits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text


def image() -> Any:
    from azure.batch import models

    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                     sku="22_04-lts", version="latest"),
        node_agent_sku_id="batch.node.ubuntu 22.04")


def pool_options(pool_id: str, **kwargs: Any) -> Any:
    from azure.batch import models

    kwargs.setdefault("vm_size", "standard_d2s_v3")
    return models.BatchPoolCreateOptions(id=pool_id, virtual_machine_configuration=image(), **kwargs)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_pool_idle(client: Any, pool_id: str, count: int, timeout: float = 30.0) -> list[Any]:
    def ready() -> list[Any] | None:
        nodes = list(client.list_nodes(pool_id))
        idle = [n for n in nodes if n.state in ("idle", "running")]
        return nodes if len(idle) == count and len(nodes) == count else None

    return wait_for(ready, timeout, message=f"{count} idle nodes in {pool_id}")


def wait_tasks_done(client: Any, job_id: str, timeout: float = 60.0) -> Any:
    def done() -> Any:
        counts = client.get_job_task_counts(job_id).task_counts
        return counts if counts.active == 0 and counts.running == 0 else None

    return wait_for(done, timeout, interval=0.2, message=f"tasks of {job_id} to complete")


def error_of(call: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, Batch error code) of a call that must fail; no code for HEAD (no body)."""
    import pytest
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError) as caught:
        call()
    response = caught.value.response
    body = response.read()  # downloads are streamed
    return caught.value.status_code, response.json()["code"] if body else ""


def wait_task_state(client: Any, job_id: str, task_id: str, state: str, timeout: float = 20.0) -> Any:
    def reached() -> Any:
        task = client.get_task(job_id, task_id)
        return task if task.state == state else None

    return wait_for(reached, timeout, interval=0.1, message=f"{job_id}/{task_id} {state}")


# The Azure Batch docs' task-based formula ("create an automatic formula for scaling compute nodes").
DOCS_PENDING_FORMULA = """
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
$tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
$targetVMs = $tasks > 0 ? $tasks : max(0, $TargetDedicatedNodes / 2);
$TargetDedicatedNodes = max(0, min($targetVMs, 20));
$NodeDeallocationOption = taskcompletion;
"""


def agent_processes(node_id: str) -> list[Any]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "shoal.agent" in cmdline and node_id in cmdline:
            found.append(process)
    return found


@contextmanager
def frozen_agent(node_id: str) -> Iterator[None]:
    """SIGSTOP a node's agent: it can neither leave nor report, so the pool's transition stays open."""
    processes = agent_processes(node_id)
    assert processes, f"no agent process for {node_id}"
    for process in processes:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            try:
                os.kill(process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def sqlite_plan(engine: Any, statement: Any) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of a SQLAlchemy statement, one line a step."""
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        return [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]


def store_context(url: str) -> Iterator[Any]:
    """A service Context on a freshly migrated store at `url`, disposed afterwards (for fixtures)."""
    from shoal.server import DEFAULT_ACCOUNT, ensure_account
    from shoal.service.context import Context
    from shoal.store.db import open_store

    engine = open_store(url)
    ensure_account(engine)
    try:
        yield Context(engine=engine, account=DEFAULT_ACCOUNT, base_url="http://test")
    finally:
        engine.dispose()
