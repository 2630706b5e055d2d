"""Throughput and latency of Shoal on this machine, against this machine's own fork/exec rate.

A benchmark, not a test: it prints figures and ratios. It starts a fresh `shoal up`, creates a
pool of 2 local nodes × 8 slots, adds 5,000 `/bin/true` tasks with the SDK's `create_tasks`,
waits for them, then measures add→running latency over 100 single tasks on the idle pool.
Baseline, same run: how fast Python starts and reaps `/bin/true` (subprocess, 16 at a time).

    python bench/throughput.py [--tasks 5000] [--latency-samples 100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.batch import models  # noqa: E402

from shoal.testing.server import kill_agents, start_shoal, stop_shoal  # noqa: E402

TARGET_RATE = 350.0
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args()

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
            client.create_job(models.BatchJobCreateOptions(id="bulk", pool_info=models.BatchPoolInfo(pool_id="bench")))
            tasks = [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(args.tasks)]
            started = time.perf_counter()
            client.create_tasks("bulk", tasks)
            added = time.perf_counter()
            while True:
                counts = client.get_job_task_counts("bulk").task_counts
                if counts.completed == args.tasks:
                    break
                time.sleep(0.05)
            finished = time.perf_counter()
            assert counts.succeeded == args.tasks, counts

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

    add_rate = args.tasks / (added - started)
    e2e_rate = args.tasks / (finished - started)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"tasks                         {args.tasks}")
    print(f"add rate (create_tasks)       {add_rate:8.0f} tasks/s")
    print(f"end-to-end completion rate    {e2e_rate:8.0f} tasks/s   target ≥ {TARGET_RATE:.0f}"
          f"   ({e2e_rate / SLURM_BASELINE_RATE:.1f}× the ~{SLURM_BASELINE_RATE:.0f}/s of single-node Slurm)")
    print(f"fork/exec baseline (Python)   {baseline:8.0f} /bin/true per s (16 in flight)")
    print(f"ratio end-to-end / fork-exec  {e2e_rate / baseline:8.1%}   target ≥ {TARGET_FORK_RATIO:.0%}")
    print(f"add→running latency p50       {p50:8.1f} ms   target < {TARGET_P50_MS:.0f} ms")
    print(f"add→running latency p99       {p99:8.1f} ms")


if __name__ == "__main__":
    main()
