"""Finding the agent processes of a running `shoal up`, for tests that kill or watch them."""

from __future__ import annotations

import psutil

from shoal.testing.server import RunningShoal


def agent_process(shoal: RunningShoal, node_id: str) -> psutil.Process | None:
    """The live agent of ``node_id`` (its argv names the node and a root under the nodes dir)."""
    marker = str(shoal.nodes_dir)
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "shoal.agent" in cmdline and node_id in cmdline and any(marker in part for part in cmdline):
            return process
    return None


def agent_pids(shoal: RunningShoal, node_ids: list[str]) -> dict[str, int | None]:
    return {node_id: getattr(agent_process(shoal, node_id), "pid", None) for node_id in node_ids}
