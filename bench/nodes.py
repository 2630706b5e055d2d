"""How fast a pool of local nodes comes up, and what a node agent costs in memory (issue 10).

A benchmark, not a test: it prints figures and ratios. It starts a fresh `shoal up`, creates a
pool of ``--nodes`` local nodes (default 50) with a trivial start task, and times it from the add
to every node `idle`; then it reads the resident memory of each node's agent and of the helper
processes a node keeps (its watchdog, its user spawners). Baselines, same run: starting as many
bare Python interpreters at once and waiting for them, and one bare interpreter's memory.

    python bench/nodes.py [--nodes 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.batch import models  # noqa: E402

from shoal.testing.server import kill_agents, start_shoal, stop_shoal  # noqa: E402

TARGET_READY_S = 10.0
TARGET_AGENT_MIB = 25.0


def bare_interpreters(count: int) -> tuple[float, float]:
    """Seconds to start and reap ``count`` `python -c pass` at once, and one's RSS in MiB."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"]) for _ in range(count)]
    for proc in procs:
        proc.wait()
    elapsed = time.perf_counter() - start
    # One interpreter's memory once it is up (read at once after the fork, it is still tiny or 0).
    probe = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    time.sleep(0.5)
    rss = psutil.Process(probe.pid).memory_info().rss / 2**20
    probe.communicate(b"")
    return elapsed, rss


def node_processes(node_ids: set[str]) -> dict[str, dict[str, list[float]]]:
    """Per node, the RSS (MiB) of its agent and of the other processes of its node's cgroup or
    session (watchdog, spawners), found by the node id on their command lines, and the CPU
    seconds its agent has used so far."""
    found: dict[str, dict[str, list[float]]] = {n: {"agent": [], "helpers": [], "agent_cpu": []} for n in node_ids}
    agents: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "shoal.agent" in cmd and "--node-id" in cmd:
            node = cmd.split("--node-id", 1)[1].split()[0]
            if node in found:
                agents[proc.info["pid"]] = node
                found[node]["agent"].append(proc.memory_info().rss / 2**20)
                times = proc.cpu_times()
                found[node]["agent_cpu"].append(times.user + times.system)
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        node = agents.get(proc.info["ppid"])
        cmd = " ".join(proc.info["cmdline"] or [])
        if node is not None and ("shoal.agent.tree" in cmd or "shoal.agent.spawner" in cmd):
            found[node]["helpers"].append(proc.memory_info().rss / 2**20)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=50)
    args = parser.parse_args()

    baseline_s, bare_mib = bare_interpreters(args.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        shoal = start_shoal(Path(tmp))
        try:
            client = shoal.client()
            image = models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"),
                node_agent_sku_id="batch.node.ubuntu 22.04")
            before = psutil.Process(shoal.process.pid).cpu_times()
            server_cpu_before = before.user + before.system
            started = time.perf_counter()
            client.create_pool(models.BatchPoolCreateOptions(
                id="bench-nodes", vm_size="standard_d2s_v3", virtual_machine_configuration=image,
                target_dedicated_nodes=args.nodes,
                start_task=models.BatchStartTask(command_line="/bin/true", wait_for_success=True)))
            while True:
                states = [n.state for n in client.list_nodes("bench-nodes")]
                if len(states) == args.nodes and all(s == "idle" for s in states):
                    break
                if time.perf_counter() - started > 300:
                    print(f"gave up after 300 s: {sorted(states)}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            ready_s = time.perf_counter() - started
            server_times = psutil.Process(shoal.process.pid).cpu_times()
            server_cpu = server_times.user + server_times.system - server_cpu_before
            time.sleep(1.0)  # let the agents settle after their first syncs
            per_node = node_processes({n.id for n in client.list_nodes("bench-nodes")})
        finally:
            stop_shoal(shoal)
            kill_agents(Path(tmp))
    agents = [sum(p["agent"]) for p in per_node.values() if p["agent"]]
    helpers = [sum(p["helpers"]) for p in per_node.values()]
    print(f"{args.nodes} nodes, trivial start task: {ready_s:.2f} s from pool add to all idle "
          f"(target < {TARGET_READY_S:.0f} s); {args.nodes} bare interpreters started and reaped "
          f"in {baseline_s:.2f} s (ratio {ready_s / baseline_s:.1f}x)")
    print(f"agent RSS per node: median {statistics.median(agents):.1f} MiB, max {max(agents):.1f} MiB "
          f"(target < {TARGET_AGENT_MIB:.0f} MiB); a bare interpreter {bare_mib:.1f} MiB "
          f"(ratio {statistics.median(agents) / bare_mib:.1f}x)")
    print(f"helpers per node (watchdog, spawners): median {statistics.median(helpers):.1f} MiB")
    agent_cpu = [sum(p["agent_cpu"]) for p in per_node.values() if p["agent_cpu"]]
    print(f"CPU while coming up: agent median {statistics.median(agent_cpu):.2f} s each "
          f"({sum(agent_cpu):.1f} s in all), the server {server_cpu:.1f} s; {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
