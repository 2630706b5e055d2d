"""How fast the web dashboard (shoal/web, issue 12 item 1) renders at scale: a benchmark, not a test.

It starts a fresh `shoal up --provider sim` (simulated nodes: shoal/providers/sim.py), makes a
pool of --nodes nodes and a job of --tasks tasks on a pool without nodes (so they stay active;
--completed of them, spread over the job, are terminated first so a state filter has matches),
signs in to the dashboard like a browser and times each page server-side as a client sees it
(request to last byte, over loopback): p50 and p99 over --reps, and the page's size.

Pages: the pools list, the pool page (heat map data and chart inlined), the heat map's poll (with
and without the id list), a node, the jobs list, the job's first task page, a page in the middle
of the job (reached by its page token), state filters with 0 and --completed matches, an exit-code
filter (evaluated in windows of the index, a short page with a token), and a task.
Target (issue 12): < 200 ms p50 for 10,000 nodes and 1,000,000 tasks.

    python bench/dashboard.py                                # small: about a minute
    python bench/dashboard.py --nodes 10000 --tasks 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from azure.batch import models  # noqa: E402

from bench.scale import VM_SIZE, _add_tasks, _allocate, _image  # noqa: E402
from shoal.api.http import encode_token  # noqa: E402
from shoal.testing.server import start_shoal, stop_shoal  # noqa: E402

TARGET_MS = 200.0
METRICS_TARGET_MS = 50.0


def _timed(client: httpx.Client, path: str, reps: int) -> tuple[float, float, int]:
    client.get(path)  # warm: the first call compiles templates and fills caches
    samples, size = [], 0
    for _ in range(reps):
        started = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        size = len(response.content)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], size


def _sign_in(endpoint: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=endpoint, timeout=120)
    response = client.post("/ui/signin", data={"key": key, "next": "/ui/pools"}, follow_redirects=False)
    if response.status_code != 303:
        raise RuntimeError(f"sign-in refused: {response.status_code}")
    return client


def _terminate_spread(client: Any, job_id: str, total: int, count: int) -> None:
    step = max(1, total // max(count, 1))
    for index in range(0, total, step)[:count]:
        client.terminate_task(job_id, f"t{index:07d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--completed", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    env = {"SHOAL_QUOTA_DEDICATED_CORES": str(10 * args.nodes + 100), "SHOAL_QUOTA_ACTIVE_JOBS": "1000"}
    with tempfile.TemporaryDirectory(prefix="shoal-dashboard-") as tmp:
        shoal = start_shoal(Path(tmp), extra_args=["--provider", "sim"], env=env)
        try:
            client = shoal.client()
            started = time.perf_counter()
            _allocate(client, "big", args.nodes, 1)
            print(f"setup: {args.nodes} simulated nodes idle in {time.perf_counter() - started:.1f} s", flush=True)
            client.create_pool(models.BatchPoolCreateOptions(
                id="parked", vm_size=VM_SIZE, virtual_machine_configuration=_image(), target_dedicated_nodes=0))
            client.create_job(models.BatchJobCreateOptions(id="big-job", pool_info=models.BatchPoolInfo(pool_id="parked")))
            rate = _add_tasks(client, "big-job", args.tasks, "/bin/true", args.concurrency)
            print(f"setup: {args.tasks} tasks added at {rate:.0f} tasks/s", flush=True)
            _terminate_spread(client, "big-job", args.tasks, args.completed)
            node_id = next(iter(client.list_nodes("big", max_results=1))).id
            browser = _sign_in(shoal.endpoint, shoal.primary_key)
            digest = browser.get("/ui/pools/big/heatmap").json()["digest"]
            # The job's tasks were added in id order to a fresh store: seq ≈ index, so half the
            # count is a token from the middle of the job.
            middle_seq = args.tasks // 2
            pages = [
                ("pools list", "/ui/pools"),
                (f"pool page ({args.nodes} nodes, heat map + chart)", "/ui/pools/big"),
                ("heat map poll (states only)", f"/ui/pools/big/heatmap?known={quote(digest)}"),
                ("heat map poll (with ids)", "/ui/pools/big/heatmap"),
                ("node page", f"/ui/pools/big/nodes/{quote(node_id)}"),
                ("jobs list", "/ui/jobs"),
                (f"job page, first 50 of {args.tasks}", "/ui/jobs/big-job"),
                ("job page, a page in the middle", f"/ui/jobs/big-job?page={encode_token(middle_seq)}"),
                ("job page, state=running (0 matches)", "/ui/jobs/big-job?state=running"),
                (f"job page, state=completed ({args.completed} matches, first 50)", "/ui/jobs/big-job?state=completed"),
                ("job page, exitcode=3 (windowed walk, short page)", "/ui/jobs/big-job?exitcode=3"),
                ("task page (with why)", f"/ui/jobs/big-job/tasks/t{args.tasks // 2 + 1:07d}"),
                ("usage page (ledger)", "/ui/usage"),
            ]
            print(f"\n{'page':62} {'p50 ms':>8} {'p99 ms':>8} {'KiB':>8}")
            for name, path in pages:
                p50, p99, size = _timed(browser, path, args.reps)
                mark = "" if p50 < TARGET_MS else "  over target"
                print(f"{name:62} {p50:8.1f} {p99:8.1f} {size / 1024:8.1f}{mark}", flush=True)
            print(f"\ntarget: p50 < {TARGET_MS:.0f} ms per page (issue 12)")
            # /metrics at the same scale, beside /health (no store read) as this run's baseline.
            token = (shoal.data_dir / "metrics-token").read_text().strip()
            scraper = httpx.Client(base_url=shoal.endpoint, timeout=120, headers={"Authorization": f"Bearer {token}"})
            health_p50, health_p99, _ = _timed(scraper, "/health", args.reps)
            p50, p99, size = _timed(scraper, "/metrics", args.reps)
            mark = "" if p50 < METRICS_TARGET_MS else "  over target"
            print(f"\n{'/health (baseline)':62} {health_p50:8.1f} {health_p99:8.1f}")
            print(f"{'/metrics':62} {p50:8.1f} {p99:8.1f} {size / 1024:8.1f}{mark}"
                  f"   {p50 / max(health_p50, 0.001):.1f}× /health")
            print(f"target: /metrics < {METRICS_TARGET_MS:.0f} ms (issue 12)")
        finally:
            stop_shoal(shoal)


if __name__ == "__main__":
    main()
