"""The store runner (shoal.store.runner) and the API wrapper that places handlers on it."""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shoal.api.app import Api
from shoal.api.http import json_response, read_json
from shoal.service.context import Context
from shoal.sharedkey import sign_request
from shoal.store.runner import Busy, Lane, StoreRunner, on_loop
from shoal.timebase import TimeBase


def test_writes_run_one_at_a_time_in_the_order_they_were_submitted():
    runner = StoreRunner()
    done: list[int] = []
    threads: set[int] = set()
    running = [0]
    overlap = []

    def write(n: int) -> int:
        running[0] += 1
        overlap.append(running[0])
        threads.add(threading.get_ident())
        time.sleep(random.random() / 1000)
        done.append(n)
        running[0] -= 1
        return n * 2

    async def main() -> list[int]:
        return await asyncio.gather(*(runner.write(write, n) for n in range(200)))

    try:
        results = asyncio.run(main())
    finally:
        runner.shutdown()
    assert done == list(range(200))
    assert results == [n * 2 for n in range(200)]
    assert max(overlap) == 1 and len(threads) == 1
    assert threading.get_ident() not in threads


def test_reads_run_beside_each_other_off_the_loop():
    runner = StoreRunner(read_threads=4)
    barrier = threading.Barrier(4, timeout=5)

    def read() -> int:
        barrier.wait()  # only passes if four reads are in flight at once
        return threading.get_ident()

    async def main() -> list[int]:
        return await asyncio.gather(*(runner.read(read) for _ in range(4)))

    try:
        idents = asyncio.run(main())
    finally:
        runner.shutdown()
    assert len(set(idents)) == 4 and threading.get_ident() not in idents


def test_an_exception_reaches_the_caller_and_the_lane_goes_on():
    runner = StoreRunner()

    def fails() -> None:
        raise ValueError("boom")

    async def main() -> int:
        with pytest.raises(ValueError, match="boom"):
            await runner.write(fails)
        with pytest.raises(ZeroDivisionError):
            await runner.read(lambda: 1 / 0)
        return await runner.write(lambda: 7)

    try:
        assert asyncio.run(main()) == 7
        assert runner.writer.pending == 0 and runner.reader.pending == 0
    finally:
        runner.shutdown()


def test_a_full_backlog_refuses_client_work_but_never_the_control_planes():
    lane = Lane("writer", 1, backlog=3)
    gate = threading.Event()

    async def main() -> None:
        held = [asyncio.ensure_future(lane.call(gate.wait, shed=True)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert lane.pending == 3
        with pytest.raises(Busy) as refused:
            await lane.call(lambda: None, shed=True)
        assert refused.value.retry_after_s >= 1
        # An agent's or a duty's call queues instead.
        duty = asyncio.ensure_future(lane.call(lambda: "queued", shed=False))
        await asyncio.sleep(0.05)
        assert not duty.done() and lane.pending == 4
        gate.set()
        assert await duty == "queued"
        await asyncio.gather(*held)
        assert lane.pending == 0
        assert await lane.call(lambda: "again", shed=True) == "again"

    try:
        asyncio.run(main())
    finally:
        gate.set()
        lane.shutdown()


def test_the_writer_refuses_work_from_itself_instead_of_waiting_for_ever():
    runner = StoreRunner()

    async def nested() -> None:
        await runner.write(lambda: None)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="from that lane"):
            await runner.writer.run_coroutine(nested)
        # Another lane may hand work to the writer.
        await runner.reader.run_coroutine(nested)

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        runner.shutdown()


def test_a_cancelled_wait_does_not_leak_backlog():
    lane = Lane("reader", 1, backlog=2)
    gate = threading.Event()

    async def main() -> None:
        first = asyncio.ensure_future(lane.call(gate.wait, shed=True))
        second = asyncio.ensure_future(lane.call(lambda: None, shed=True))
        await asyncio.sleep(0.05)
        second.cancel()  # still queued: it never runs
        gate.set()
        await first
        await asyncio.sleep(0.05)
        assert lane.pending == 0

    try:
        asyncio.run(main())
    finally:
        gate.set()
        lane.shutdown()


def test_a_coroutine_runs_to_completion_in_the_lanes_own_loop():
    runner = StoreRunner()

    async def handler(x: int) -> tuple[int, int, int]:
        await asyncio.sleep(0)
        return x, threading.get_ident(), id(asyncio.get_running_loop())

    async def main() -> tuple[tuple[int, int, int], int]:
        return await runner.writer.run_coroutine(handler, 5), id(asyncio.get_running_loop())

    try:
        (x, ident, loop_id), main_loop = asyncio.run(main())
    finally:
        runner.shutdown()
    assert x == 5 and ident != threading.get_ident() and loop_id != main_loop


def test_on_loop_carries_a_call_from_a_thread_to_the_loop():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        woke_in: list[int] = []

        def wake() -> None:
            woke_in.append(threading.get_ident())
            event.set()

        caller = on_loop(loop, wake)
        thread = threading.Thread(target=caller)
        thread.start()
        thread.join()
        await asyncio.wait_for(event.wait(), 2)
        assert woke_in == [threading.get_ident()]

    asyncio.run(main())


# The wrapper: where handlers run, and what an overloaded server answers.

ACCOUNT = "acct"
KEY = base64.b64encode(b"k" * 64).decode()


def _app(api: Api, handler: Any, placement: str, method: str = "GET") -> Starlette:
    return Starlette(routes=[Route("/thing", api.batch(handler, placement), methods=[method])])


def _signed(method: str, body: bytes = b"", host: str = "testserver") -> tuple[str, dict[str, str]]:
    url = f"http://{host}/thing?api-version=2025-06-01"
    headers = {"Content-Type": "application/json; odata=minimalmetadata", "host": host}
    if method != "GET":
        headers["Content-Length"] = str(len(body))
    return url, sign_request(method, url, headers, ACCOUNT, KEY)


def _request(app: Starlette, method: str, body: bytes = b"", host: str = "testserver") -> httpx.Response:
    async def go() -> httpx.Response:
        url, headers = _signed(method, body, host)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            return await client.request(method, url, content=body or None, headers=headers)

    return asyncio.run(go())


def _api(**runner_args: Any) -> Api:
    ctx = Context(engine=None, account=ACCOUNT, base_url="http://testserver")  # type: ignore[arg-type]
    return Api(ctx, {ACCOUNT: (KEY, KEY)}, StoreRunner(**runner_args))


def test_a_write_handler_reads_its_body_in_the_writer_thread_without_io():
    api = _api()
    seen: dict[str, Any] = {}

    async def handler(request: Request, _ctx: Context) -> Response:
        body, size = await read_json(request)
        seen["thread"] = threading.current_thread().name
        return json_response(request, {"echo": body, "size": size})

    response = _request(_app(api, handler, "write", "POST"), "POST", b'{"a": [1, 2, 3]}')
    api.runner.shutdown()
    assert response.status_code == 200, response.text
    assert response.json()["echo"] == {"a": [1, 2, 3]}
    assert seen["thread"].startswith("shoal-writer")


def test_an_overloaded_lane_answers_503_server_busy_with_retry_after():
    api = _api(scan_backlog=1)
    gate = threading.Event()

    async def slow(request: Request, _ctx: Context) -> Response:
        gate.wait(10)
        return json_response(request, {"value": []})

    app = _app(api, slow, "scan")

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            url, headers = _signed("GET")
            first = asyncio.ensure_future(client.get(url, headers=headers))
            while api.runner.scanner.pending < 1:
                await asyncio.sleep(0.01)
            url, headers = _signed("GET")
            refused = await client.get(url, headers=headers)
            gate.set()
            return await first, refused

    try:
        served, refused = asyncio.run(go())
    finally:
        gate.set()
        api.runner.shutdown()
    assert served.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    body = refused.json()
    assert body["code"] == "ServerBusy" and body["message"]["lang"] == "en-US"
    assert refused.headers["request-id"]


def test_a_handler_error_in_a_thread_is_a_batch_error_not_a_hang():
    api = _api()

    async def broken(_request: Request, _ctx: Context) -> Response:
        raise RuntimeError("bug")

    response = _request(_app(api, broken, "read"), "GET")
    api.runner.shutdown()
    assert response.status_code == 500 and response.json()["code"] == "InternalError"


def test_another_host_gets_its_own_urls_and_keeps_every_server_setting():
    ctx = Context(engine=None, account=ACCOUNT, base_url="http://127.0.0.1:1",  # type: ignore[arg-type]
                  timebase=TimeBase(60.0), sample_lag=timedelta(seconds=75), spot_capacity=3)
    ctx.node_metrics["n1"] = {"cpu": 0.5}
    api = Api(ctx, {ACCOUNT: (KEY, KEY)}, StoreRunner())
    seen: dict[str, Context] = {}

    async def handler(request: Request, request_ctx: Context) -> Response:
        seen["ctx"] = request_ctx
        return json_response(request, {})

    response = _request(_app(api, handler, "loop"), "GET", host="batch.example:8443")
    api.runner.shutdown()
    assert response.status_code == 200, response.text
    got = seen["ctx"]
    assert got.base_url == "http://batch.example:8443"
    assert got.timebase is ctx.timebase and got.timebase.scale == 60.0
    assert got.sample_lag == timedelta(seconds=75) and got.spot_capacity == 3
    # The same cache, not a copy: what agents report later is seen by this request's code too.
    assert got.node_metrics is ctx.node_metrics and got.signals is ctx.signals
