"""Throughput and latency of Shoal on this machine, against this machine's own fork/exec rate.

A benchmark, not a test: it prints figures and ratios. It starts a fresh `shoal up`, creates a
pool of 2 local nodes × 8 slots, adds 5,000 `/bin/true` tasks with the SDK's `create_tasks`,
waits for them, then measures add→running latency over 100 single tasks on the idle pool.
Baseline, same run: how fast Python starts and reaps `/bin/true` (subprocess, 16 at a time).

The bulk phase runs once per task identity, alternating, ``--rounds`` times each: the default
(pool-scope nonadmin auto-user: a real user per pool, task folders it owns), ``admin`` (root:
no user switch, no ownership changes) and ``task`` (a fresh user per task). What user
isolation costs is the pool-user rate against the admin rate, both measured in the same run on
the same server, so that this machine's ±25% swings cancel out.

    python bench/throughput.py [--tasks 5000] [--rounds 2] [--latency-samples 100] [--identities pool,admin,task]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.batch import models  # noqa: E402

from shoal.testing.server import kill_agents, start_shoal, stop_shoal  # noqa: E402

TARGET_RATE = 350.0
TARGET_USER_COST = 0.15
"""Per-task user switching and folder ownership may cost at most this share of the admin rate."""
TARGET_FORK_RATIO = 0.15
TARGET_P50_MS = 50.0
SLURM_BASELINE_RATE = 35.0


def fork_exec_rate(count: int = 2000, parallel: int = 16) -> float:
    """Start and reap /bin/true from Python, `parallel` in flight, like the agents do."""
    start = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    launched = 0
    while launched < count or running:
        while launched < count and len(running) < parallel:
            running.append(subprocess.Popen(["/bin/true"]))
            launched += 1
        running.pop(0).wait()
    return count / (time.perf_counter() - start)


IDENTITIES: dict[str, models.UserIdentity | None] = {
    "pool": None,  # Batch's default: a pool-scope nonadmin auto-user
    "admin": models.UserIdentity(auto_user=models.AutoUserSpecification(elevation_level="admin")),
    "task": models.UserIdentity(auto_user=models.AutoUserSpecification(scope="task")),
}


def bulk_rate(client: Any, job_id: str, count: int, identity: models.UserIdentity | None) -> tuple[float, float]:
    """End-to-end and add rates of ``count`` /bin/true tasks run as ``identity``."""
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="bench")))
    tasks = [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true", user_identity=identity)
             for i in range(count)]
    started = time.perf_counter()
    client.create_tasks(job_id, tasks)
    added = time.perf_counter()
    while True:
        counts = client.get_job_task_counts(job_id).task_counts
        if counts.completed == count:
            break
        time.sleep(0.05)
    finished = time.perf_counter()
    assert counts.succeeded == count, counts
    return count / (finished - started), count / (added - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--identities", default="pool,admin,task",
                        help="comma-separated, from: " + ", ".join(IDENTITIES))
    args = parser.parse_args()
    identities = args.identities.split(",")

    baseline = fork_exec_rate()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        shoal = start_shoal(Path(tmp))
        try:
            client = shoal.client()
            image = models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"),
                node_agent_sku_id="batch.node.ubuntu 22.04")
            client.create_pool(models.BatchPoolCreateOptions(
                id="bench", vm_size="standard_d4s_v3", virtual_machine_configuration=image,
                target_dedicated_nodes=2, task_slots_per_node=8))
            while sum(1 for n in client.list_nodes("bench") if n.state == "idle") < 2:
                time.sleep(0.1)
            rates: dict[str, list[float]] = {name: [] for name in identities}
            add_rates = []
            for round_no in range(args.rounds):
                for name in identities:
                    # A user per task costs a useradd each: a tenth of the tasks measures it.
                    count = args.tasks if name != "task" else max(1, args.tasks // 10)
                    rate, add_rate = bulk_rate(client, f"bulk-{name}-{round_no}", count, IDENTITIES[name])
                    rates[name].append(rate)
                    add_rates.append(add_rate)
                    print(f"  round {round_no + 1} {name:6s} {rate:6.0f} tasks/s", flush=True)

            client.create_job(models.BatchJobCreateOptions(id="latency", pool_info=models.BatchPoolInfo(pool_id="bench")))
            latencies = []
            for i in range(args.latency_samples):
                t0 = time.perf_counter()
                client.create_task("latency", models.BatchTaskCreateOptions(id=f"l{i}", command_line="/bin/true"))
                while client.get_task("latency", f"l{i}", select=["state"]).state == "active":
                    pass
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            stop_shoal(shoal)
            kill_agents(shoal.data_dir)

    add_rate = statistics.median(add_rates)
    e2e = {name: statistics.median(values) for name, values in rates.items()}
    e2e_rate = e2e[identities[0]]
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"tasks                         {args.tasks}")
    print(f"add rate (create_tasks)       {add_rate:8.0f} tasks/s")
    for name in identities:
        print(f"end-to-end, {name + ' users':17s} {e2e[name]:8.0f} tasks/s   (median of {args.rounds};"
              f" {', '.join(f'{r:.0f}' for r in rates[name])})")
    print(f"end-to-end completion rate    {e2e_rate:8.0f} tasks/s   target ≥ {TARGET_RATE:.0f}"
          f"   ({e2e_rate / SLURM_BASELINE_RATE:.1f}× the ~{SLURM_BASELINE_RATE:.0f}/s of single-node Slurm)")
    if "admin" in e2e:
        for name in identities:
            if name != "admin":
                cost = 1 - e2e[name] / e2e["admin"]
                target = f"   target ≤ {TARGET_USER_COST:.0%}" if name == "pool" else ""
                print(f"cost of {name + ' users':21s} {cost:8.1%} of the admin rate{target}")
    print(f"fork/exec baseline (Python)   {baseline:8.0f} /bin/true per s (16 in flight)")
    print(f"ratio end-to-end / fork-exec  {e2e_rate / baseline:8.1%}   target ≥ {TARGET_FORK_RATIO:.0%}")
    print(f"add→running latency p50       {p50:8.1f} ms   target < {TARGET_P50_MS:.0f} ms")
    print(f"add→running latency p99       {p99:8.1f} ms")


if __name__ == "__main__":
    main()
