"""The local provider: every node is a `shoal agent` subprocess on this machine.

Each node gets its own node root, `<nodes dir>/<node id>/batch/tasks` (the nodes dir is outside
the private data dir when Shoal runs as root; see `shoal.config.default_nodes_dir`). Agents run in their
own session so that a crash of the server (kill -9) leaves them running; a restarted server
adopts them by pid, and the agents resend whatever was not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from shoal.agent.tree import kill_node_processes
from shoal.providers.eviction import EvictionPolicy
from shoal.service import nodes as node_service
from shoal.service import preemption
from shoal.service.context import Context

log = logging.getLogger("shoal.providers.local")

LEAVE_GRACE_S = 10.0


@dataclass
class _Agent:
    node_id: str
    process: psutil.Process
    popen: subprocess.Popen[bytes] | None = None
    gone_since: float | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            self.process.send_signal(sig)


def _make_traversable(directory: Path) -> None:
    """Create ``directory`` and any missing parents 0755 (the server's umask is 077): task users
    must be able to walk down to their node's folders."""
    missing = []
    current = directory.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


class LocalProvider:
    def __init__(self, ctx: Context, nodes_dir: Path, join_url: str, *, spot_eviction_rate: float = 0.0,
                 eviction_seed: int | None = None) -> None:
        self.ctx = ctx
        self.eviction = EvictionPolicy(spot_eviction_rate, eviction_seed)
        self._last_eviction_check: float | None = None
        self.nodes_dir = nodes_dir
        _make_traversable(nodes_dir)
        self.join_url = join_url
        self.agents: dict[str, _Agent] = {}

    def node_dir(self, node_id: str) -> Path:
        return self.nodes_dir / node_id

    def node_root(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "batch" / "tasks"

    async def reconcile(self) -> None:
        self._evict_spot_nodes()
        records = {r.node_id: r for r in node_service.provisioning_view(self.ctx)}
        for record in records.values():
            agent = self.agents.get(record.node_id)
            if agent is None and record.agent_pid:
                agent = self._adopt(record.node_id, record.agent_pid)
            if record.state == "preempted":
                # The VM went with its capacity: no agent, no local data, until it comes back.
                if agent is not None or self.node_dir(record.node_id).exists():
                    await asyncio.to_thread(kill_node_processes, self.node_root(record.node_id), remove=True)
                    self._drop(record.node_id)
                continue
            if record.state == "leavingpool":
                if agent is None or not agent.alive():
                    await asyncio.to_thread(kill_node_processes, self.node_root(record.node_id), remove=True)
                    self._drop(record.node_id)
                    node_service.forget(self.ctx, record.node_id)
                continue
            if agent is not None and agent.alive():
                continue
            if record.state != "creating":
                # The agent died under a live node: requeue its tasks and start it afresh.
                log.warning("agent of node %s is gone; restarting it", record.node_id)
                # Its task trees die first: requeued, they must not run twice at once.
                await asyncio.to_thread(kill_node_processes, self.node_root(record.node_id))
                node_service.agent_lost(self.ctx, record.node_id)
            self._spawn(record.node_id, record.pool_id, record.token)
        now = time.monotonic()
        for node_id in list(self.agents):
            if node_id in records:
                continue
            agent = self.agents[node_id]
            if agent.alive():
                # The record is gone (the node left); the agent was told to leave and should exit.
                agent.gone_since = agent.gone_since or now
                if now - agent.gone_since > LEAVE_GRACE_S:
                    agent.terminate(signal.SIGKILL)
                continue
            await asyncio.to_thread(kill_node_processes, self.node_root(node_id), remove=True)
            self._drop(node_id)

    def _evict_spot_nodes(self) -> None:
        now = time.monotonic()
        elapsed_real = now - (self._last_eviction_check or now)
        self._last_eviction_check = now
        if elapsed_real <= 0:
            return
        elapsed_hours = elapsed_real * self.ctx.timebase.scale / 3600
        live = preemption.live_spot_nodes(self.ctx)
        chosen = self.eviction.choose(((node_id, spec) for node_id, spec in live), elapsed_hours)
        if chosen:
            log.info("evicting spot nodes %s", chosen)
            preemption.preempt_many(self.ctx, chosen)

    def _adopt(self, node_id: str, pid: int) -> _Agent | None:
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
            if node_id not in cmdline:
                return None
            if self.join_url not in cmdline:
                # An agent of an earlier server on another endpoint could never reach us.
                os.killpg(process.pid, signal.SIGKILL)
                return None
        except (psutil.Error, ProcessLookupError, PermissionError):
            return None
        agent = _Agent(node_id, process)
        self.agents[node_id] = agent
        return agent

    def _spawn(self, node_id: str, pool_id: str, token: str) -> None:
        root = self.node_root(node_id)
        root.mkdir(parents=True, exist_ok=True)
        log_file = open(self.node_dir(node_id) / "agent.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ)
        # The token travels in the environment, not argv, so `ps` does not show it.
        env["SHOAL_NODE_TOKEN"] = token
        popen = subprocess.Popen(
            [sys.executable, "-m", "shoal.agent", "--join", self.join_url, "--pool", pool_id,
             "--node-id", node_id, "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True)
        log_file.close()
        self.agents[node_id] = _Agent(node_id, psutil.Process(popen.pid), popen)
        node_service.agent_spawned(self.ctx, node_id, popen.pid)

    def _drop(self, node_id: str) -> None:
        agent = self.agents.pop(node_id, None)
        if agent is not None and agent.alive():
            agent.terminate(signal.SIGKILL)
        shutil.rmtree(self.node_dir(node_id), ignore_errors=True)

    async def shutdown(self, *, stop_agents: bool) -> None:
        if not stop_agents:
            return
        for agent in self.agents.values():
            agent.terminate()
        deadline = time.monotonic() + 5
        for agent in self.agents.values():
            while agent.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if agent.alive():
                agent.terminate(signal.SIGKILL)
