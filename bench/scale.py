"""How Shoal's control plane holds up as jobs and pools grow (issue 7): a benchmark, not a test.

It starts a fresh `shoal up --provider sim` (simulated nodes: shoal/providers/sim.py) and prints
each figure next to its ratio to the same operation at a small size measured in the same run (a
1,000-task job; for pools, a pool of --baseline-nodes nodes; for draining, 1,000 tasks on the
same pool), so a figure that grows with size shows at once:

- tasks: add rate through the SDK (`create_tasks`) and the server's RSS after adding --tasks;
  over them, p50/p99 of the first page, a deep page (the middle of the listing, reached by
  following nextLinks), `$filter` with 0 matches (`state eq 'running'`) and with 1,000 matches
  (`state eq 'completed'`: 1,000 tasks spread over the job are terminated first; the time
  includes following nextLinks to the end), and `taskcounts`;
- nodes: time to allocate a pool of --nodes simulated nodes (create to all idle), the server's
  CPU at idle with them (the heartbeat cost; per node too), p50/p99 of a cheap GET (a job) at
  idle and while draining, and placements per second draining --drain-tasks zero-length tasks
  (the job is disabled while they are added, then enabled, so adding does not pace the drain).

The whole run repeats on PostgreSQL (shoal/testing/postgres.py) with `--databases sqlite,postgres`.
Targets (issue 7): RSS < 1.5 GiB at 1,000,000 tasks, counts < 10 ms, filtered listings < 100 ms
plus sending the matches, a page < 50 ms at any depth, a 10,000-node pool in < 60 s, ≥ 5,000
placements/s on SQLite, < 10 % server CPU at idle for 10,000 nodes, cheap GET p99 < 100 ms.

    python bench/scale.py                                   # small: a few minutes
    python bench/scale.py --tasks 1000000 --nodes 10000 --drain-tasks 1000000
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from azure.batch import models  # noqa: E402

from shoal.cli.client import BatchClient as RestClient  # noqa: E402
from shoal.cli.config import AccountInfo  # noqa: E402
from shoal.errors import BatchError  # noqa: E402
from shoal.testing.server import RunningShoal, start_shoal, stop_shoal  # noqa: E402

BASELINE_TASKS = 1000
MATCHES = 1000
VM_SIZE = "standard_a1_v2"  # 1 vCPU: the core quota is set far above any node count here
ADD_CHUNK = 10_000
IDLE_WINDOW_S = 10.0
GET_INTERVAL_S = 0.02


def _image() -> Any:
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                     sku="22_04-lts", version="latest"),
        node_agent_sku_id="batch.node.ubuntu 22.04")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _timed_ms(call: Callable[[], Any], reps: int) -> tuple[float, float]:
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return _percentiles(samples)


class Report:
    def __init__(self, database: str) -> None:
        self.database = database

    def line(self, name: str, value: float, unit: str, baseline: float | None = None, target: str = "") -> None:
        ratio = f"{value / baseline:8.2f}×" if baseline else " " * 9
        print(f"[{self.database:8}] {name:44} {value:12.1f} {unit:8} {ratio}  {target}", flush=True)

    def pair(self, name: str, big: tuple[float, float], small: tuple[float, float], target: str = "") -> None:
        self.line(f"{name} p50", big[0], "ms", small[0], target)
        self.line(f"{name} p99", big[1], "ms", small[1])


def _server(shoal: RunningShoal) -> psutil.Process:
    return psutil.Process(shoal.process.pid)


def _add_tasks(client: Any, job_id: str, count: int, command_line: str, concurrency: int) -> float:
    """Tasks per second through the SDK's create_tasks (it sends 100 a call, `concurrency` at once)."""
    started = time.perf_counter()
    for first in range(0, count, ADD_CHUNK):
        chunk = [models.BatchTaskCreateOptions(id=f"t{i:07d}", command_line=command_line)
                 for i in range(first, min(count, first + ADD_CHUNK))]
        client.create_tasks(job_id, chunk, max_concurrency=concurrency)
    return count / (time.perf_counter() - started)


def _walk(rest: RestClient, path: str, params: dict[str, str], pages: int | None = None) -> tuple[int, str | None]:
    """Follow nextLinks: (items seen, the nextLink after `pages` pages, or None at the end)."""
    response = rest.request("GET", path, params)
    seen, page = 0, 0
    while True:
        payload = response.json()
        seen += len(payload.get("value", []))
        page += 1
        link = payload.get("odata.nextLink")
        if not link or (pages is not None and page >= pages):
            return seen, link
        response = rest._send("GET", link)


def _task_figures(client: Any, rest: RestClient, job_id: str, count: int, reps: int,
                  concurrency: int) -> dict[str, tuple[float, float]]:
    path = f"/jobs/{job_id}/tasks"
    # 1,000 tasks spread evenly over the job become `completed`: the filter's matches.
    step = max(1, count // MATCHES)
    with ThreadPoolExecutor(concurrency * 2) as pool:
        list(pool.map(lambda i: client.terminate_task(job_id, f"t{i:07d}"), range(0, count, step)))
    figures: dict[str, tuple[float, float]] = {}
    figures["first page"] = _timed_ms(lambda: rest.request("GET", path, {"maxresults": "1000"}), reps)
    middle = max(1, count // 1000 // 2)
    _, deep = _walk(rest, path, {"maxresults": "1000"}, pages=middle)
    if deep:
        figures["deep page"] = _timed_ms(lambda: rest._send("GET", deep), reps)
    figures["$filter, 0 matches"] = _timed_ms(lambda: _walk(rest, path, {"$filter": "state eq 'running'"}), reps)
    matched = _walk(rest, path, {"$filter": "state eq 'completed'"})[0]
    assert matched == len(range(0, count, step)), matched
    figures["$filter, ~1,000 matches"] = _timed_ms(
        lambda: _walk(rest, path, {"$filter": "state eq 'completed'"}), reps)
    figures["taskcounts"] = _timed_ms(lambda: rest.get(f"/jobs/{job_id}/taskcounts"), reps)
    return figures


def _wait(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def _idle_count(client: Any, pool_id: str) -> int:
    for counts in client.list_pool_node_counts():
        if counts.pool_id == pool_id and counts.dedicated is not None:
            return int(counts.dedicated.idle)
    return 0


def _allocate(client: Any, pool_id: str, nodes: int, slots: int) -> float:
    started = time.perf_counter()
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size=VM_SIZE, virtual_machine_configuration=_image(), target_dedicated_nodes=nodes,
        task_slots_per_node=slots))
    _wait(lambda: _idle_count(client, pool_id) == nodes, max(120.0, nodes * 0.1), f"{nodes} idle nodes")
    return time.perf_counter() - started


def _get_loop(account: tuple[str, str, str, str], path: str, stop: Any, out: Any) -> None:
    """The sampler's process: cheap GETs every GET_INTERVAL_S until ``stop`` is set; sends back
    the latencies and how many were refused 503 ServerBusy."""
    rest = RestClient(AccountInfo(*account))
    samples: list[float] = []
    refused = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            rest.get(path)
        except BatchError as error:
            # A 503 ServerBusy is an answer too (the client retries after Retry-After): it
            # counts with its own latency, and the refusals are counted apart.
            if error.status != 503:
                raise
            refused += 1
        samples.append((time.perf_counter() - started) * 1000)
        stop.wait(GET_INTERVAL_S)
    out.send((samples, refused))


@contextmanager
def _sampling_gets(shoal: RunningShoal, path: str) -> Iterator[list[float]]:
    """Cheap GETs every GET_INTERVAL_S, for as long as the block runs, from a process of their
    own: in a thread of this one they would wait for the GIL behind the SDK's work (adding
    100,000 tasks) and count that wait as the server's latency."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    account = (shoal.account, shoal.endpoint, shoal.primary_key, shoal.secondary_key)
    sampler = context.Process(target=_get_loop, args=(account, path, stop, send), daemon=True)
    sampler.start()
    samples: list[float] = []
    try:
        yield samples
    finally:
        stop.set()
        got, refused = receive.recv()
        sampler.join()
        samples.extend(got)
        if refused:
            print(f"           ({refused} of {len(samples)} cheap GETs were refused 503 ServerBusy)", flush=True)


def _drain(client: Any, pool_id: str, job_id: str, count: int, concurrency: int) -> float:
    """Placements per second: `count` zero-length tasks added to a disabled job, then enabled."""
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=0.2).result()
    _add_tasks(client, job_id, count, "/bin/true", concurrency)
    started = time.perf_counter()
    client.begin_enable_job(job_id, polling_interval=0.2).result()
    _wait(lambda: client.get_job_task_counts(job_id).task_counts.completed == count, max(300.0, count / 20),
          f"{count} tasks to complete", interval=0.5)
    return count / (time.perf_counter() - started)


def run_suite(database: str, url: str | None, args: argparse.Namespace) -> None:
    report = Report(database)
    env = {"SHOAL_QUOTA_DEDICATED_CORES": str(10 * (args.nodes + args.baseline_nodes) + 100),
           "SHOAL_QUOTA_ACTIVE_JOBS": "1000", "SHOAL_SIM_BATCH_SYNCS": "0" if args.unbatched else "1"}
    extra = ["--provider", "sim"] + (["--database", url] if url else [])
    with tempfile.TemporaryDirectory(prefix="shoal-scale-") as tmp:
        shoal = start_shoal(Path(tmp), extra_args=extra, env=env)
        try:
            client = shoal.client()
            rest = RestClient(AccountInfo(shoal.account, shoal.endpoint, shoal.primary_key, shoal.secondary_key))
            server = _server(shoal)
            if not args.skip_tasks:
                # Tasks on a pool without nodes stay active: the store alone is measured.
                client.create_pool(models.BatchPoolCreateOptions(
                    id="store", vm_size=VM_SIZE, virtual_machine_configuration=_image(), target_dedicated_nodes=0))
                for job_id in ("small", "big"):
                    client.create_job(models.BatchJobCreateOptions(id=job_id,
                                                                   pool_info=models.BatchPoolInfo(pool_id="store")))
                small_rate = _add_tasks(client, "small", BASELINE_TASKS, "/bin/true", args.concurrency)
                big_rate = _add_tasks(client, "big", args.tasks, "/bin/true", args.concurrency)
                report.line(f"add rate, {args.tasks} tasks (SDK)", big_rate, "tasks/s", small_rate)
                report.line(f"server RSS after {args.tasks} tasks", server.memory_info().rss / 2**20, "MiB",
                            target="target < 1536 MiB at 1,000,000 tasks")
                small = _task_figures(client, rest, "small", BASELINE_TASKS, args.reps, args.concurrency)
                big = _task_figures(client, rest, "big", args.tasks, args.reps, args.concurrency)
                targets = {"first page": "target < 50 ms", "deep page": "target < 50 ms",
                           "taskcounts": "target < 10 ms"}
                # The small job has a single page: its deep page is its first.
                small.setdefault("deep page", small["first page"])
                for name, figure in big.items():
                    report.pair(name, figure, small.get(name, figure),
                                targets.get(name, "target < 100 ms + sending" if "filter" in name else ""))
            if not args.skip_nodes:
                small_alloc = _allocate(client, "nodes-small", args.baseline_nodes, args.slots)
                big_alloc = _allocate(client, "nodes", args.nodes, args.slots)
                report.line(f"allocate {args.nodes} nodes (create → idle)", big_alloc, "s", small_alloc,
                            "target < 60 s for 10,000")
                client.begin_delete_pool("nodes-small", polling_interval=0.5)
                _wait(lambda: "nodes-small" not in {p.id for p in client.list_pools()}, 120, "small pool gone")
                client.create_job(models.BatchJobCreateOptions(id="probe",
                                                               pool_info=models.BatchPoolInfo(pool_id="nodes")))
                time.sleep(2)
                # Nothing but heartbeats: no client call during the window.
                server.cpu_percent(None)
                time.sleep(IDLE_WINDOW_S)
                idle_cpu = server.cpu_percent(None)
                with _sampling_gets(shoal, "/jobs/probe") as idle_gets:
                    time.sleep(IDLE_WINDOW_S / 2)
                report.line(f"server CPU at idle, {args.nodes} nodes", idle_cpu, "%",
                            target="target < 10 % for 10,000 nodes")
                report.line("  per node", idle_cpu / args.nodes * 1000, "m%")
                idle_p = _percentiles(idle_gets)
                small_drain = _drain(client, "nodes", "drain-small", BASELINE_TASKS, args.concurrency)
                with _sampling_gets(shoal, "/jobs/probe") as busy_gets:
                    big_drain = _drain(client, "nodes", "drain", args.drain_tasks, args.concurrency)
                report.line(f"placements/s draining {args.drain_tasks} tasks", big_drain, "/s", small_drain,
                            "target ≥ 5,000/s on SQLite")
                report.pair("cheap GET while draining", _percentiles(busy_gets), idle_p, "target p99 < 100 ms")
                report.line("cheap GET p99 at idle", idle_p[1], "ms")
                report.line("server RSS at the end", server.memory_info().rss / 2**20, "MiB")
        finally:
            stop_shoal(shoal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the big job (issue: 1,000,000)")
    parser.add_argument("--nodes", type=int, default=500, help="simulated nodes (issue: 10,000)")
    parser.add_argument("--baseline-nodes", type=int, default=50)
    parser.add_argument("--slots", type=int, default=4, help="task slots per node")
    parser.add_argument("--drain-tasks", type=int, default=5_000, help="tasks drained (issue: 1,000,000)")
    parser.add_argument("--reps", type=int, default=20, help="samples per latency figure")
    parser.add_argument("--concurrency", type=int, default=4, help="create_tasks calls in flight")
    parser.add_argument("--databases", default="sqlite", help="comma-separated: sqlite, postgres")
    parser.add_argument("--skip-tasks", action="store_true")
    parser.add_argument("--skip-nodes", action="store_true")
    parser.add_argument("--unbatched", action="store_true",
                        help="simulated nodes make every sync its own call (no batch-sync), as real agents do")
    args = parser.parse_args()
    print(f"{'':10} {'figure':44} {'value':>12} {'unit':8} {'vs small':>9}  target", flush=True)
    for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
        if database == "postgres":
            from shoal.testing.postgres import TempPostgres

            with TempPostgres() as postgres:
                run_suite("postgres", postgres.url, args)
        else:
            run_suite("sqlite", None, args)


if __name__ == "__main__":
    main()
